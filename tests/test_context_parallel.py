"""Context parallelism of AnyTalkerTransformer on 2 CPU processes (gloo), against one process:
Ulysses on diffusers' default backend, and ring attention.

Ring attention needs a kernel that returns the log-sum-exp; diffusers' ones that do
(`RING_BACKENDS`) are CUDA kernels. On the CPU the `_native_flash` backend's kernel is stood in
for by PyTorch's CPU flash kernel (same outputs, same LSE layout), so diffusers' ring algorithm,
our mesh, config and `_cp_plan` run exactly as they would on GPUs.

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


def unsplit_frame_index(model, world) -> dict:
    """Leaves `model`'s latent-frame index unsplit, grouping each rank's queries by position as
    if they were the first L/K tokens; returns the `_cp_plan` without the index's split."""
    def positional(num_frames, tokens_per_frame):
        return latent_frame_index(num_frames, tokens_per_frame)[: num_frames * tokens_per_frame // world]

    model.token_frames.forward = positional
    return {k: v for k, v in model._cp_plan.items() if k != "token_frames"}


def worker(rank, world, out_dir):
    """One launch for every check of this module (each spawn costs ~20 s of imports on 2 cores)."""
    os.environ["RANK"] = str(rank)
    torch.set_num_threads(1)
    from anytalker.acceleration.parallel import ParallelSettings, start_parallel

    context = start_parallel(ParallelSettings(context_parallel=world), device="cpu")
    transformer_worker(rank, context, out_dir)
    pipeline_worker(rank, context, out_dir)
    ring = start_parallel(ParallelSettings(context_parallel=world, ring_degree=world), device="cpu")
    ring_worker(rank, ring, out_dir)
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cp")
    spawn(worker, str(out_dir))
    return out_dir


def transformer_worker(rank, context, out_dir):
    from anytalker.acceleration.parallel import enable_context_parallel

    world = context.world_size
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
        enable_context_parallel(broken, context, plan=unsplit_frame_index(broken, world))
        results[f"{variant}/unsplit"] = run(broken, **tiny_inputs(**INPUTS))
    # With the speed stack's regional compile on top (graphs counted, run as traced).
    from anytalker.acceleration.compile import CountingBackend, compile_blocks

    model, backend = tiny_transformer("fused"), CountingBackend()
    enable_context_parallel(model, context)
    compile_blocks(model, backend=backend)
    # int8 weight-only quantized (torchao), as `--quantize int8` loads it.
    results["fused/int8"] = run(int8_transformer(context), **tiny_inputs(**INPUTS))
    results["fused/compiled"], results["fused/compiled/graphs"] = [], []
    for _ in range(3):
        results["fused/compiled"].append(run(model, **tiny_inputs(**INPUTS)))
        results["fused/compiled/graphs"].append(backend.graphs)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def int8_transformer(context=None):
    """The fused tiny transformer with int8 weight-only weights; context-parallel over `context`."""
    from anytalker.acceleration.parallel import enable_context_parallel
    from anytalker.acceleration.quantization import quantize_weights

    model = tiny_transformer("fused")
    quantize_weights(model, "int8", torch.float32)
    if context is not None:
        enable_context_parallel(model, context)
    return model


LSE_CALLS = []


def cpu_flash_forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                         enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
    """diffusers' `_native_flash_attention_forward_op` on PyTorch's CPU flash kernel: model layout
    (B, S, H, D) in, (out (B, S, H, D), lse (B, S, H)) out. Forward only; calls are counted."""
    LSE_CALLS.append(return_lse)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dropout_p, is_causal, scale=scale)
    out, lse = out.transpose(1, 2).contiguous(), lse.transpose(1, 2).contiguous()
    return (out, lse) if return_lse else out


def ring_worker(rank, context, out_dir):
    from diffusers.models import attention_dispatch

    from anytalker.acceleration.backends import apply_attention_backend
    from anytalker.acceleration.parallel import enable_context_parallel

    attention_dispatch._native_flash_attention_forward_op = cpu_flash_forward_op
    results = {"mesh": dict(zip(context.mesh.mesh_dim_names, context.mesh.shape))}
    for variant in VARIANTS:
        for name, split in (("ring", True), ("ring/unsplit", False)):
            model = tiny_transformer(variant)
            apply_attention_backend(model, "_native_flash")
            plan = None if split else unsplit_frame_index(model, context.world_size)
            enable_context_parallel(model, context, plan=plan)
            results[f"{variant}/{name}"] = run(model, **tiny_inputs(**INPUTS))
    results["lse_calls"] = LSE_CALLS
    torch.save(results, os.path.join(out_dir, f"ring{rank}.pt"))


@pytest.fixture(scope="module")
def cp_results(spawned):
    single = {variant: run(tiny_transformer(variant), **tiny_inputs(**INPUTS)) for variant in VARIANTS}
    return single, [torch.load(spawned / f"rank{r}.pt") for r in range(WORLD)]


def test_shard_boundary_lies_inside_a_latent_frame():
    per_frame = (INPUTS["height"] // 2) * (INPUTS["width"] // 2)
    tokens = INPUTS["frames"] * per_frame
    assert tokens % WORLD == 0 and (tokens // WORLD) % per_frame != 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_ulysses_equals_one_process(cp_results, variant):
    single, ranks = cp_results
    for result in ranks:  # every rank ends with the whole output
        assert result[variant].shape == single[variant].shape
        assert (result[variant] - single[variant]).abs().max().item() < 1e-5
    assert torch.equal(ranks[0][variant], ranks[1][variant])


def test_ulysses_combines_with_int8_weights(cp_results):
    _, ranks = cp_results
    single = run(int8_transformer(), **tiny_inputs(**INPUTS))
    for result in ranks:
        assert (result["fused/int8"] - single).abs().max().item() < 1e-5


def test_ulysses_combines_with_regional_compile(cp_results):
    """Compiled blocks under the context-parallel hooks: the same output; traced on the first call
    and once more on the second (diffusers' split hook caches its argument positions on its first
    call, a guard the first trace took), then never again."""
    single, ranks = cp_results
    for result in ranks:
        first, second, third = result["fused/compiled"]
        assert (first - single["fused"]).abs().max().item() < 1e-5
        assert torch.equal(first, second) and torch.equal(first, third)
        graphs = result["fused/compiled/graphs"]
        assert graphs[0] >= 1 and graphs[2] == graphs[1] <= 2 * graphs[0], graphs


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_self_attention_communicates(cp_results, variant):
    """The audio-face attention is local per token given its frame index: its processors (and the
    text / image cross-attention's) get no parallel config; each block's self-attention does."""
    _, ranks = cp_results
    assert ranks[0][f"{variant}/configured"] == ["blocks.0.attn1", "blocks.1.attn1"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_unsplit_frame_index_breaks_it(cp_results, variant):
    """The check above has teeth: grouping a shard's queries by position moves the output a lot."""
    single, ranks = cp_results
    assert (ranks[0][f"{variant}/unsplit"] - single[variant]).abs().max().item() > 1e-2


@pytest.mark.parametrize("variant", VARIANTS)
def test_ring_attention_equals_one_process(cp_results, spawned, variant):
    """2-way ring (keys / values passed around, partial results merged by their log-sum-exp),
    the same shard boundary inside a latent frame; and broken without the split frame index."""
    single, _ = cp_results
    ranks = [torch.load(spawned / f"ring{r}.pt") for r in range(WORLD)]
    assert ranks[0]["mesh"] == {"batch": 1, "ring": 2, "ulysses": 1}
    # 2 variants x 2 models x 2 blocks' self-attention x 2 ring steps, each asking for the LSE
    assert ranks[0]["lse_calls"] == [True] * 16
    for result in ranks:
        assert (result[f"{variant}/ring"] - single[variant]).abs().max().item() < 1e-5
        assert (result[f"{variant}/ring/unsplit"] - single[variant]).abs().max().item() > 1e-2
    assert torch.equal(ranks[0][f"{variant}/ring"], ranks[1][f"{variant}/ring"])


def test_ring_needs_a_backend_that_returns_lse():
    from anytalker.acceleration.parallel import RING_BACKENDS, ParallelSettings
    from anytalker.pipeline.settings import ModelSettings, SettingsError, SpeedSettings, flag_label

    ring = ParallelSettings(context_parallel=4, ring_degree=2)
    with pytest.raises(SettingsError, match="--ring-degree 2 needs an attention backend.*native"):
        ring.validate(flag_label, world_size=4, model=ModelSettings("random-tiny"))
    for backend in RING_BACKENDS:
        assert ring.validate(world_size=4, model=ModelSettings("random-tiny", speed=SpeedSettings(
            attention_backend=backend))).ulysses_degree == 2
    with pytest.raises(SettingsError, match="--ring-degree must be a positive integer that divides "
                                            "--context-parallel 4, got 3"):
        ParallelSettings(context_parallel=4, ring_degree=3).validate(flag_label, world_size=4)


@pytest.mark.parametrize("model", [dict(cpu_offload=True), dict(speed=dict(offload="block")),
                                   dict(speed=dict(cache="first-block"))], ids=["cpu_offload", "offload", "cache"])
def test_offload_and_step_caches_do_not_combine_with_context_parallel(model):
    """Offload hooks move weights under the split; a step cache decides on each rank's shard, so
    ranks could disagree about skipping a step and stall in the next all-to-all."""
    from anytalker.acceleration.parallel import ParallelSettings
    from anytalker.pipeline.settings import ModelSettings, SettingsError, SpeedSettings, flag_label

    speed = SpeedSettings(**model.pop("speed", {}))
    settings = ModelSettings("random-tiny", speed=speed, **model)
    name = next(iter(model)) if model else ("offload" if speed.offload else "cache")
    with pytest.raises(SettingsError, match=f"--{name.replace('_', '-')} does not combine with --context-parallel 2"):
        ParallelSettings(context_parallel=2).validate(flag_label, world_size=2, model=settings)
    ParallelSettings(context_parallel=1).validate(flag_label, world_size=2, model=settings)  # data parallel: fine


# ------------------------------------------------------------------------------------------------
# the pipeline: random-tiny through the runner, 2 windows, 3 identities
# ------------------------------------------------------------------------------------------------

# 32x48 pixels -> 6 tokens per latent frame; 9-frame windows -> 3 latent frames, 18 tokens, cut at 9.
SAMPLING = dict(size=(32, 48), steps=1, max_frames_per_window=9, motion_frames=5, seed=3)
ENCODERS = ("text_encoder", "image_encoder", "audio_encoder", "vae")


def pipeline_inputs():
    import numpy as np

    from anytalker.faces import FaceBox
    from anytalker.pipeline import runner

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    tracks = [rng.standard_normal(8000).astype(np.float32) * 0.1 for _ in range(3)]  # 0.5 s: 2 windows
    boxes = [FaceBox(0, 8, 30, 38), FaceBox(33, 8, 63, 38), FaceBox(66, 8, 96, 38)]
    return runner.GenerationInputs(image, tracks, boxes, "three people talk")


def generate_both(loaded):
    """(uint8 frames through runner.generate, float frames in [-1, 1] before uint8 rounding, the
    denoised latents of each window that the VAE decodes)."""
    from anytalker.pipeline import runner
    from anytalker.pipeline.settings import SamplingSettings

    latents, decode = [], loaded.pipe.decode

    def recording_decode(window_latents, *args, **kwargs):
        latents.append(window_latents.clone())
        return decode(window_latents, *args, **kwargs)

    loaded.pipe.decode = recording_decode
    inputs, sampling = pipeline_inputs(), SamplingSettings(**SAMPLING)
    frames = runner.generate(loaded, inputs, sampling).frames
    resolved = runner.resolved_sampling(loaded, sampling)
    floats = loaded.pipe(inputs.image, inputs.tracks, list(inputs.boxes), prompt=inputs.prompt,
                         height=32, width=48, num_inference_steps=resolved.steps,
                         guidance_scale=resolved.guidance_scale, max_frames_per_window=9, motion_frames=5,
                         generator=torch.Generator("cpu").manual_seed(3), output_type="pt").frames
    return frames, floats, torch.cat([x.flatten() for x in latents])


def pipeline_worker(rank, context, out_dir):
    from anytalker.acceleration.parallel import parallelize
    from anytalker.pipeline import runner
    from anytalker.pipeline.settings import ModelSettings

    loaded = parallelize(runner.load_pipeline(ModelSettings("random-tiny"), progress=False), context)
    calls = {name: 0 for name in ENCODERS}
    for name in ENCODERS:
        def count(*_, name=name):
            calls[name] += 1
        for module in getattr(loaded.pipe, name).modules():  # encoders are also entered below the top
            module.register_forward_pre_hook(count)
    frames, floats, latents = generate_both(loaded)
    torch.save({"frames": torch.from_numpy(frames), "floats": floats, "latents": latents, "calls": calls},
               os.path.join(out_dir, f"pipe{rank}.pt"))


@pytest.fixture(scope="module")
def pipeline_results(spawned):
    from anytalker.pipeline import runner
    from anytalker.pipeline.settings import ModelSettings

    out_dir = spawned
    frames, floats, latents = generate_both(runner.load_pipeline(ModelSettings("random-tiny"), progress=False))
    return (torch.from_numpy(frames), floats, latents), [torch.load(out_dir / f"pipe{r}.pt") for r in range(WORLD)]


def test_context_parallel_video_equals_one_process(pipeline_results):
    """Not bit for bit: a shard's matmuls and attention round differently in float32 (7e-7 at the
    transformer's output), the denoised latents stay within 1e-5, the random VAE's decode amplifies
    that about 4x, and the few values on a half level round to the neighbouring uint8."""
    (frames, floats, latents), ranks = pipeline_results
    assert frames.shape == (12, 32, 48, 3) and latents.numel() == 2 * 2 * 16 * 3 * 4 * 6  # 2 runs x 2 windows
    for result in ranks:
        latent_drift = (result["latents"] - latents).abs().max().item()
        drift = (result["floats"] - floats).abs().max().item()
        levels = (result["frames"].int() - frames.int()).abs()
        print(f"max |diff|: latents {latent_drift:.2e}, frames {drift:.2e}; uint8 values one level off: "
              f"{int((levels > 0).sum())} of {levels.numel()}")
        assert latent_drift < 1e-5
        assert drift < 5e-5  # decoded, before uint8 rounding
        assert levels.max().item() <= 1 and (levels > 0).float().mean().item() < 1e-3


def test_encoders_and_vae_run_on_the_writer_only(pipeline_results):
    _, (writer, other) = pipeline_results
    assert all(writer["calls"][name] > 0 for name in ENCODERS), writer["calls"]
    assert other["calls"] == {name: 0 for name in ENCODERS}
