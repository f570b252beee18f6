"""Context parallelism of AnyTalkerTransformer on 2 CPU processes (gloo), against one process.

The token grid (8x12 latent -> 24 tokens per latent frame, 3 frames, 72 tokens) puts the 2-way
shard boundary (token 36) inside latent frame 1: the audio-face attention must group a shard's
queries by their latent-frame index, which is split with the tokens, not by position.
"""

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from test_transformer import run, tiny_inputs, tiny_transformer

from anytalker.models.attention import latent_frame_index

WORLD = 2
INPUTS = dict(num_ids=3, frames=3, height=8, width=12)  # 24 tokens per frame, boundary at token 36
VARIANTS = ("fused", "separate")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(worker, *args, world=WORLD, timeout=240):
    """Runs worker(rank, world, *args) in `world` spawned processes with a rendezvous on a free
    local port; fails (and kills them) after `timeout` seconds."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        context = mp.start_processes(worker, args=(world, *args), nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"{world} processes did not finish within {timeout} s")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def positional_frames(world):
    """What grouping by position would do: every rank reads its tokens as the first L/K tokens."""
    def forward(num_frames, tokens_per_frame):
        return latent_frame_index(num_frames, tokens_per_frame)[: num_frames * tokens_per_frame // world]
    return forward


def cp_worker(rank, world, out_dir):
    os.environ["RANK"] = str(rank)
    torch.set_num_threads(1)
    from anytalker.acceleration.parallel import ParallelSettings, enable_context_parallel, start_parallel

    context = start_parallel(ParallelSettings(context_parallel=world), device="cpu")
    results = {}
    for variant in VARIANTS:
        model = tiny_transformer(variant)
        enable_context_parallel(model, context)
        processors = {name: module.processor for name, module in model.named_modules() if hasattr(module, "processor")}
        results[f"{variant}/configured"] = sorted(
            name for name, p in processors.items() if getattr(p, "_parallel_config", None) is not None)
        results[variant] = run(model, **tiny_inputs(**INPUTS))
        # The frame index left unsplit: each rank groups its queries by their position instead.
        broken = tiny_transformer(variant)
        broken.token_frames.forward = positional_frames(world)
        enable_context_parallel(broken, context, plan={k: v for k, v in broken._cp_plan.items() if k != "token_frames"})
        results[f"{variant}/unsplit"] = run(broken, **tiny_inputs(**INPUTS))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def cp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cp")
    started = time.perf_counter()
    spawn(cp_worker, str(out_dir))
    elapsed = time.perf_counter() - started
    single = {variant: run(tiny_transformer(variant), **tiny_inputs(**INPUTS)) for variant in VARIANTS}
    ranks = [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]
    return single, ranks, elapsed


def test_shard_boundary_lies_inside_a_latent_frame():
    per_frame = (INPUTS["height"] // 2) * (INPUTS["width"] // 2)
    tokens = INPUTS["frames"] * per_frame
    assert tokens % WORLD == 0 and (tokens // WORLD) % per_frame != 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_ulysses_equals_one_process(cp_results, variant):
    single, ranks, _ = cp_results
    for result in ranks:  # every rank ends with the whole output
        assert result[variant].shape == single[variant].shape
        assert (result[variant] - single[variant]).abs().max().item() < 1e-5
    assert torch.equal(ranks[0][variant], ranks[1][variant])


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_self_attention_communicates(cp_results, variant):
    """The audio-face attention is local per token given its frame index: its processors (and the
    text / image cross-attention's) get no parallel config; each block's self-attention does."""
    _, ranks, _ = cp_results
    assert ranks[0][f"{variant}/configured"] == ["blocks.0.attn1", "blocks.1.attn1"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_unsplit_frame_index_breaks_it(cp_results, variant):
    """The check above has teeth: grouping a shard's queries by position moves the output a lot."""
    single, ranks, _ = cp_results
    assert (ranks[0][f"{variant}/unsplit"] - single[variant]).abs().max().item() > 1e-2
