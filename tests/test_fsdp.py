"""AnyTalkerTransformer under torch's FSDP2 (`fully_shard`) on 2 CPU processes (gloo).

accelerate (the trainer's launcher) switches to FSDP only on accelerators: on CPU processes it
keeps `MULTI_CPU` and runs DDP whatever the FSDP config says. So here FSDP2 is applied the way
accelerate's FSDP2 plugin applies it (each transformer block one unit, then the root), and the
trainer's own pieces that sharding touches are checked: training steps (each rank half the batch),
the gathered full state dict written by `save_pretrained_state` (FSDP2 renames the class), and a
forward of the sharded model on every rank as validation runs it.
"""

import os

import pytest
import torch
from test_context_parallel import spawn
from test_transformer import tiny_inputs, tiny_transformer

WORLD = 2
STEPS = 3


def batch(step):
    """A batch of 2 samples (rank r trains on sample r) and the target the loss pulls towards."""
    inputs = tiny_inputs(batch=2, seed=10 + step)
    target = torch.randn(2, 16, 3, 8, 12, generator=torch.Generator().manual_seed(100 + step))
    return inputs, target


def train(model, rank=None):
    """STEPS AdamW steps of an MSE loss; rank None: the whole batch, else sample `rank` only.
    Returns the losses (each the whole batch's: ranks average theirs)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    model.train()
    for step in range(STEPS):
        inputs, target = batch(step)
        if rank is not None:
            inputs = {k: v[rank:rank + 1] for k, v in inputs.items()}
            target = target[rank:rank + 1]
        loss = torch.nn.functional.mse_loss(model(**inputs).sample, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank is not None:
            loss = loss.detach().clone()
            torch.distributed.all_reduce(loss)
            loss /= WORLD
        losses.append(loss.item())
    return losses


def worker(rank, world, out_dir):
    os.environ["RANK"] = str(rank)
    torch.set_num_threads(1)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from anytalker.training.trainer import save_pretrained_state

    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    model = tiny_transformer()
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    local = {name: p.to_local().numel() for name, p in model.named_parameters()}
    losses = train(model, rank)
    model.eval()
    with torch.no_grad():  # validation: every rank runs the same forward (each needs all shards)
        output = model(**tiny_inputs()).sample
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_pretrained_state(model, os.path.join(out_dir, "transformer"), state)
    torch.save({"losses": losses, "output": output, "local": local, "class": type(model).__name__},
               os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fsdp")
    spawn(worker, str(out_dir), world=WORLD)
    return out_dir, [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    model = tiny_transformer()
    losses = train(model)
    model.eval()
    with torch.no_grad():
        output = model(**tiny_inputs()).sample
    return model, losses, output


def test_parameters_are_split_over_the_processes(sharded, single):
    _, ranks = sharded
    model, _, _ = single
    assert ranks[0]["class"] == "FSDPAnyTalkerTransformer"
    full = {name: p.numel() for name, p in model.named_parameters()}
    for name, count in full.items():  # dim 0 split in two (the first rank holds the larger half)
        assert ranks[0]["local"][name] + ranks[1]["local"][name] == count
        assert ranks[1]["local"][name] <= count // 2 + 1
    assert sum(ranks[0]["local"].values()) < 0.55 * sum(full.values())


def test_training_steps_match_one_process(sharded, single):
    _, ranks = sharded
    _, losses, output = single
    for result in ranks:
        assert result["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-7)
        assert losses[-1] < losses[0]
        assert (result["output"] - output).abs().max().item() < 1e-5


def test_gathered_weights_save_and_load_as_the_plain_model(sharded, single):
    from anytalker.models import AnyTalkerTransformer

    out_dir, _ = sharded
    model, _, output = single
    loaded = AnyTalkerTransformer.from_pretrained(out_dir / "transformer").eval()
    start = tiny_transformer().state_dict()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        # AdamW moves each weight by up to 3 x lr = 3e-3; where a gradient is near zero its sign, so
        # the step, follows float rounding of the gradient reduction: 2e-5 measured.
        assert (a - b).abs().max().item() < 1e-4, name
        assert (a - start[name]).abs().max().item() > 1e-3, name
    with torch.no_grad():
        assert (loaded(**tiny_inputs()).sample - output).abs().max().item() < 1e-5
