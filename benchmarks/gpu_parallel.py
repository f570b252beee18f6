"""Seconds per denoising step vs GPU count: the 14B transformer under K-way context parallelism
(Ulysses; with --ring-degree R, rings of R times K/R-way Ulysses).

One step is one transformer forward over the batched guidance passes ([cond, uncond], as the
pipeline runs it) of one 81-frame window (21 latent frames) with 2 identities, at 480p (480x832:
1,560 tokens per latent frame, 32,760 tokens) and 720p (720x1280: 3,600 per frame, 75,600). The
weights are random: the model is built on the meta device, cast to bf16 there (fp32 where the model
keeps modules in fp32), then materialised on each GPU and filled with N(0, 0.02). Every GPU holds
the whole model (context parallelism splits the tokens, not the weights: ~42 GB in bf16).

For each GPU count the script relaunches itself under torchrun (`--nproc_per_node K`); rank 0
reports. Prints a table (seconds per step, speed-up, parallel efficiency, peak memory) and JSON.

    python benchmarks/gpu_parallel.py                       # 1, 2, 4, 8 GPUs (those present), 480p and 720p
    python benchmarks/gpu_parallel.py --gpus 1 2 --sizes 480p --steps 3 --json runs/gpu_parallel.json
    python benchmarks/gpu_parallel.py --attention-backend _flash_3
    python benchmarks/gpu_parallel.py --gpus 2 4 8 --ring-degree 2 --attention-backend flash   # ring needs LSE
    python benchmarks/gpu_parallel.py --smoke               # tiny model on 2 CPU processes: checks the script

Without a CUDA GPU (and without --smoke) it exits with status 2 and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SIZES = {"480p": (480, 832), "720p": (720, 1280)}
FRAMES, IDENTITIES, PASSES = 81, 2, 2
TEXT_TOKENS, CLIP_TOKENS = 512, 257
# --smoke: a tiny model at a tiny size on CPU processes, to check the script without GPUs.
SMOKE_MODEL = {"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64, "num_layers": 2, "text_dim": 32,
               "text_len": 32, "image_dim": 32, "face_dim": 32, "audio_layers": 2, "audio_channels": 32,
               "audio_hidden_dim": 32, "audio_tokens_per_frame": 4, "audio_attention": "separate"}
SMOKE_SIZES = {"smoke": (32, 48)}


def ring_for(count: int, ring_degree: int) -> int:
    """The ring degree a launch of `count` GPUs runs: `ring_degree` where it divides the count,
    else 1 (Ulysses alone)."""
    return ring_degree if count % ring_degree == 0 else 1


def model_config(smoke: bool) -> dict:
    from anytalker.models.official_checkpoint import RELEASE_DIT_CONFIGS, config_from_official

    return dict(SMOKE_MODEL) if smoke else config_from_official(RELEASE_DIT_CONFIGS["14B"])


def build_model(config: dict, device, dtype):
    """Random weights without a full-size CPU copy: meta build, cast, materialise on `device`, fill."""
    import torch
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from anytalker.models import AnyTalkerTransformer

    with torch.device("meta"):
        model = AnyTalkerTransformer(**config)
    keep = set(model._keep_in_fp32_modules)  # in float32, as from_pretrained keeps them
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.data = param.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    model = model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    # Buffers are computed, not loaded: rebuild the rotary tables that to_empty left uninitialised.
    model.rope = WanRotaryPosEmbed(model.config.attention_head_dim, model.config.patch_size,
                                   model.config.rope_max_seq_len).to(device)
    return model.eval()


def step_inputs(config: dict, height: int, width: int, device, dtype) -> dict:
    import torch

    cfg = config
    latent_frames, latent_h, latent_w = (FRAMES - 1) // 4 + 1, height // 8, width // 8
    generator = torch.Generator(device).manual_seed(1)

    def rand(*shape, kind=dtype):
        return torch.randn(*shape, generator=generator, device=device, dtype=kind)

    audio_shape = (PASSES, IDENTITIES, FRAMES, 5, cfg.get("audio_layers", 12), cfg.get("audio_channels", 768))
    return dict(
        hidden_states=rand(PASSES, 36, latent_frames, latent_h, latent_w),
        timestep=torch.full((PASSES,), 500.0, device=device),
        encoder_hidden_states=rand(PASSES, min(TEXT_TOKENS, cfg.get("text_len", 512)), cfg.get("text_dim", 4096)),
        encoder_hidden_states_image=rand(PASSES, CLIP_TOKENS, cfg.get("image_dim", 1280)),
        face_embeds=rand(PASSES, IDENTITIES, CLIP_TOKENS, cfg.get("face_dim", 1280)),
        audio_embeds=rand(*audio_shape),
        face_token_masks=torch.rand(PASSES, IDENTITIES, latent_frames, latent_h // 2, latent_w // 2,
                                    generator=generator, device=device).to(dtype),
    )


def worker(args) -> None:
    """One GPU count: every rank of the torchrun launch runs this; rank 0 writes the results."""
    import torch

    from anytalker.acceleration.parallel import ParallelSettings, enable_context_parallel, start_parallel

    device_kind = "cpu" if args.smoke else "cuda"
    if args.smoke:
        torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", 1))
    ring = ring_for(world, args.ring_degree)
    context = start_parallel(ParallelSettings(context_parallel=world, ring_degree=ring), device=device_kind)
    device = torch.device("cpu") if args.smoke else torch.device("cuda", torch.cuda.current_device())
    dtype = torch.float32 if args.smoke else torch.bfloat16
    config = model_config(args.smoke)
    model = build_model(config, device, dtype)
    if args.attention_backend:
        model.set_attention_backend(args.attention_backend)
    enable_context_parallel(model, context)
    results = []
    for size in args.sizes:
        height, width = (SMOKE_SIZES if args.smoke else SIZES)[size]
        inputs = step_inputs(config, height, width, device, dtype)
        tokens = inputs["hidden_states"].shape[2] * (height // 16) * (width // 16)
        row = {"size": size, "height": height, "width": width, "gpus": world, "ring": ring, "tokens": tokens,
               "tokens_per_gpu": tokens // world}
        try:
            times = []
            if not args.smoke:
                torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                for index in range(args.warmup + args.steps):
                    if not args.smoke:
                        torch.cuda.synchronize()
                    if world > 1:
                        torch.distributed.barrier()
                    start = time.perf_counter()
                    model(**inputs)
                    if not args.smoke:
                        torch.cuda.synchronize()
                    if index >= args.warmup:
                        times.append(time.perf_counter() - start)
            row.update(seconds_per_step=sum(times) / len(times), best=min(times), steps=len(times))
            if not args.smoke:
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        except torch.cuda.OutOfMemoryError as problem:
            row["error"] = f"out of memory: {str(problem).splitlines()[0]}"
        del inputs
        if not args.smoke:
            torch.cuda.empty_cache()
        results.append(row)
    if context.rank == 0:
        with open(args.result, "w") as handle:
            json.dump(results, handle)
    if world > 1:
        torch.distributed.destroy_process_group()


def launch(count: int, args, result: str) -> list[dict]:
    """This script as a torchrun launch of `count` processes; rank 0's rows."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(count),
               os.path.abspath(__file__), "--worker", "--result", result, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--ring-degree", str(args.ring_degree), "--sizes", *args.sizes]
    if args.smoke:
        command.append("--smoke")
    if args.attention_backend:
        command += ["--attention-backend", args.attention_backend]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.smoke else dict(os.environ)
    done = subprocess.run(command, env=env)
    if done.returncode != 0 or not os.path.exists(result):
        return [{"size": size, "gpus": count, "error": f"launch failed (exit {done.returncode})"} for size in args.sizes]
    with open(result) as handle:
        return json.load(handle)


def table(rows: list[dict]) -> str:
    header = f"{'size':<6} {'GPUs':>4} {'ring':>4} {'tokens/GPU':>10} {'s/step':>8} {'speed-up':>9} {'efficiency':>10} {'peak GiB':>9}"
    lines = [header, "-" * len(header)]
    single = {row["size"]: row.get("seconds_per_step") for row in rows if row["gpus"] == 1}
    for row in sorted(rows, key=lambda r: (r["size"], r["gpus"])):
        if "error" in row:
            lines.append(f"{row['size']:<6} {row['gpus']:>4} {row['error']}")
            continue
        base = single.get(row["size"])
        speedup = base / row["seconds_per_step"] if base else float("nan")
        peak = f"{row['peak_gib']:>9.1f}" if "peak_gib" in row else f"{'-':>9}"
        lines.append(f"{row['size']:<6} {row['gpus']:>4} {row.get('ring', 1):>4} {row['tokens_per_gpu']:>10} {row['seconds_per_step']:>8.3f} "
                     f"{speedup:>9.2f} {speedup / row['gpus']:>10.2f} {peak}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=None,
                        help="GPU counts (default 1, 2, 4, 8 up to the GPUs present; each must divide 40 heads)")
    parser.add_argument("--sizes", nargs="+", default=None, help="480p and/or 720p (default both)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up (mean reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--attention-backend", default=None, help="diffusers backend: native, flash, _flash_3, ...")
    parser.add_argument("--ring-degree", type=int, default=1,
                        help="ring attention over R of each count's GPUs (counts R does not divide run Ulysses "
                             "alone); needs --attention-backend _native_cudnn, _native_flash, flash or sage")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--smoke", action="store_true", help="tiny model on 2 CPU processes (no GPU needed)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.sizes = args.sizes or list(SMOKE_SIZES if args.smoke else SIZES)
    unknown = [s for s in args.sizes if s not in (SMOKE_SIZES if args.smoke else SIZES)]
    if unknown:
        parser.error(f"unknown size(s) {unknown}: choose from {', '.join(SIZES)}")
    if args.worker:
        worker(args)
        return 0

    import torch

    available = 2 if args.smoke else torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        print("error: no CUDA GPU here. This benchmark times the 14B transformer on 1..8 GPUs of one machine; "
              "run it on a multi-GPU host (or --smoke to check the script on 2 CPU processes).", file=sys.stderr)
        return 2
    counts = args.gpus or [k for k in (1, 2, 4, 8) if k <= available]
    from anytalker.acceleration.parallel import RING_BACKENDS

    if args.ring_degree < 1 or (args.ring_degree > 1 and args.attention_backend not in RING_BACKENDS):
        parser.error(f"--ring-degree {args.ring_degree}: must be >= 1, and above 1 needs --attention-backend "
                     f"{', '.join(RING_BACKENDS)}")
    bad = [k for k in counts if k < 1 or k > available
           or (not args.smoke and 40 % (k // ring_for(k, args.ring_degree)))]
    if bad:
        parser.error(f"--gpus {bad}: each count must be between 1 and the {available} GPUs present, and its "
                     f"Ulysses degree (count / ring degree) divide the 40 attention heads")
    print(f"{'tiny smoke model' if args.smoke else '14B AnyTalker transformer'}, {FRAMES} frames, {IDENTITIES} "
          f"identities, {PASSES} guidance passes per step; GPU counts {counts}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in counts:
            rows += launch(count, args, os.path.join(scratch, f"{count}.json"))
    print(table(rows))
    print(json.dumps(rows, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
