"""The speed stack on one GPU at full size: the 1.3B and 14B AnyTalker DiTs with random weights.

One video: 2 people, 480x832, 81 frames (latent 21 x 60 x 104: 32,760 tokens), 40 steps with
guidance (2 passes batched per step). For each setting: seconds per step (the transformer forward
of all passes; after a warm-up step, mean of `--repeats`), seconds per video (steps x s/step, plus
the Wan VAE's encode of the 81-frame condition and decode, measured once with random weights),
and peak GPU memory of the step. Settings: the plain bf16 model (SDPA), each attention backend
that is installed (flash, _flash_3, sage, cudnn), fp8 storage, torchao int8 and fp8 weight-only,
block group offload, regional compile, the few-step preset (4 steps, guidance 1: 1 pass), and all
at once (the fastest installed backend + fp8 weight-only + compile + few-step). Step caches are
left out: with random weights their skip decisions mean nothing (benchmarks/cache_quality.py
measures them on a trained model); a cached step costs what the uncached one skips.

    python benchmarks/gpu_speed.py [--models 1.3B,14B] [--repeats 1.3B:2,14B:1] [--out gpu_speed.json]
    python benchmarks/gpu_speed.py --smoke    # the same code on the CPU with a tiny config

A time budget (`--budget`, default 450 s) skips what would not fit; the run ends in under 8
minutes on one H200. Without a CUDA GPU (and without --smoke) it says so and exits with code 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import torch

from anytalker.acceleration.backends import apply_attention_backend, backend_problem
from anytalker.acceleration.compile import compile_blocks
from anytalker.acceleration.quantization import quantize_weights, torchao_problem
from anytalker.models import AnyTalkerTransformer
from anytalker.models.official_checkpoint import RELEASE_DIT_CONFIGS, config_from_official

VIDEO = {"frames": 81, "height": 480, "width": 832, "people": 2, "steps": 40, "passes": 2}
SMOKE_VIDEO = {"frames": 5, "height": 32, "width": 48, "people": 2, "steps": 4, "passes": 2}
SMOKE_CONFIG = {"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64, "num_layers": 2, "text_dim": 32,
                "text_len": 32, "image_dim": 32, "face_dim": 32, "audio_layers": 2, "audio_channels": 32,
                "audio_hidden_dim": 32, "audio_tokens_per_frame": 4}
BACKENDS = ("_flash_3", "flash", "sage", "_native_cudnn")
FEW_STEP = {"steps": 4, "passes": 1}


def build(config: dict, device: str, dtype: torch.dtype) -> AnyTalkerTransformer:
    """Random weights made on the device in `dtype` (float32 where the model keeps it)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AnyTalkerTransformer(**config).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(default)
    keep = tuple(model._keep_in_fp32_modules)
    for name, param in model.named_parameters():
        if any(part in name.split(".") for part in keep):
            param.data = param.data.float()
    return model


def step_inputs(config: dict, video: dict, passes: int, device: str, dtype: torch.dtype) -> dict:
    frames = (video["frames"] - 1) // 4 + 1
    height, width, people = video["height"] // 8, video["width"] // 8, video["people"]
    g = torch.Generator(device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    return dict(
        hidden_states=randn(passes, config.get("in_channels", 36), frames, height, width),
        timestep=torch.full((passes,), 500.0, device=device),
        encoder_hidden_states=randn(passes, config.get("text_len", 512), config.get("text_dim", 4096)),
        encoder_hidden_states_image=randn(passes, 257, config.get("image_dim", 1280)),
        face_embeds=randn(passes, people, 257, config.get("face_dim", 1280)),
        audio_embeds=randn(passes, people, video["frames"], config.get("audio_window", 5),
                           config.get("audio_layers", 12), config.get("audio_channels", 768)),
        face_token_masks=torch.rand(passes, people, frames, height // 2, width // 2, generator=g, device=device,
                                    dtype=dtype))


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(model, inputs: dict, device: str, repeats: int) -> tuple[float, float]:
    """(seconds per step after one warm-up, peak memory in GiB during the timed steps)."""
    with torch.no_grad():
        model(**inputs)  # warm-up: compiles, autotunes, onloads
        synchronize(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            model(**inputs)
        synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return seconds, peak


def vae_seconds(video: dict, device: str, dtype: torch.dtype, smoke: bool) -> float:
    """Encode of the 81-frame condition video + decode of the latents, Wan2.1 VAE, random weights."""
    from diffusers import AutoencoderKLWan

    from anytalker.encoders.vae import diffusers_vae_config

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            vae = AutoencoderKLWan(**diffusers_vae_config({"dim": 4} if smoke else None)).eval()
    finally:
        torch.set_default_dtype(default)
    pixels = torch.randn(1, 3, video["frames"], video["height"], video["width"], device=device, dtype=dtype)
    with torch.no_grad():
        synchronize(device)
        start = time.perf_counter()
        latents = vae.encode(pixels).latent_dist.mode()
        vae.decode(latents)
        synchronize(device)
    seconds = time.perf_counter() - start
    del vae, pixels, latents
    return seconds


def settings(device: str, smoke: bool) -> list[tuple[str, dict]]:
    """(name, what to apply) in order; kernels that are not installed are left out."""
    usable = [b for b in BACKENDS if backend_problem(b) is None]
    rows = [("plain bf16 (SDPA)", {})]
    rows += [(f"attention {b}", {"backend": b}) for b in usable]
    rows += [("fp8 storage", {"quantize": "fp8-storage"})]
    if torchao_problem() is None:
        rows += [("int8 weight-only (torchao)", {"quantize": "int8"}), ("fp8 weight-only (torchao)",
                                                                       {"quantize": "fp8"})]
    rows += [("regional compile", {"compile": True}), ("few-step preset (4 steps, 1 pass)", {"few_step": True})]
    fastest = {"backend": usable[0]} if usable else {}
    quantize = {"quantize": "fp8"} if torchao_problem() is None and not smoke else {}
    rows += [("all: " + " + ".join([*([usable[0]] if usable else []), *(["fp8"] if quantize else []), "compile",
                                    "few-step"]), {**fastest, **quantize, "compile": True, "few_step": True})]
    return rows + [("group offload (block, streams)", {"offload": True})]  # slowest to set up: last


def run_setting(name, spec, config, video, device, dtype, repeats, smoke) -> dict:
    model = build(config, device, dtype)  # random init is fast on the GPU; offloading moves it to the CPU
    if spec.get("offload"):
        model.to("cpu")
    if spec.get("quantize"):
        quantize_weights(model, spec["quantize"], dtype)
    if spec.get("offload"):
        model.enable_group_offload(torch.device(device), offload_type="block_level", num_blocks_per_group=1,
                                   use_stream=device == "cuda")
    if spec.get("backend"):
        apply_attention_backend(model, spec["backend"])
    if spec.get("compile"):
        compile_blocks(model, backend="eager" if smoke else "inductor")
    few = spec.get("few_step")
    passes, steps = (FEW_STEP["passes"], FEW_STEP["steps"]) if few else (video["passes"], video["steps"])
    seconds, peak = time_step(model, step_inputs(config, video, passes, device, dtype), device, repeats)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return {"setting": name, "seconds_per_step": seconds, "steps": steps, "passes": passes, "peak_gib": peak}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="1.3B,14B")
    parser.add_argument("--repeats", default="1.3B:2,14B:1", help="timed steps per setting, per model")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; settings that would not fit are "
                                                                    "skipped")
    parser.add_argument("--smoke", action="store_true", help="run on the CPU with a tiny config (checks the code)")
    parser.add_argument("--out", default="gpu_speed.json")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_speed.py needs a CUDA GPU (none found); `--smoke` runs the same code on the CPU with a tiny "
              "config", file=sys.stderr)
        return 2
    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    video = SMOKE_VIDEO if args.smoke else VIDEO
    start = time.perf_counter()
    report = {"video": video, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
              "models": {}}
    vae = vae_seconds(video, device, dtype, args.smoke)
    report["vae_seconds"] = vae
    for model_name in args.models.split(","):
        config = SMOKE_CONFIG if args.smoke else config_from_official(RELEASE_DIT_CONFIGS[model_name])
        repeats = dict(item.split(":") for item in args.repeats.split(",")).get(model_name, 1)
        rows, base, last = [], None, 0.0
        for name, spec in settings(device, args.smoke):
            spent = time.perf_counter() - start
            if spent + 1.5 * last > args.budget:
                rows.append({"setting": name, "skipped": f"time budget ({args.budget:.0f} s) reached"})
                continue
            began = time.perf_counter()
            row = run_setting(name, spec, config, video, device, dtype, int(repeats), args.smoke)
            last = time.perf_counter() - began
            row["seconds_per_video"] = row["steps"] * row["seconds_per_step"] + vae
            base = base or row
            row["step_speedup"] = base["seconds_per_step"] / row["seconds_per_step"]
            row["video_speedup"] = base["seconds_per_video"] / row["seconds_per_video"]
            rows.append(row)
            print(f"{model_name} {name}: {row['seconds_per_step']:.3f} s/step, {row['seconds_per_video']:.1f} s/video, "
                  f"peak {row['peak_gib']:.1f} GiB", flush=True)
        report["models"][model_name] = rows
    report["seconds"] = round(time.perf_counter() - start, 1)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)
    print(f"\n{report['device']}: {video['height']}x{video['width']}, {video['frames']} frames, "
          f"{video['people']} people; VAE encode + decode {vae:.1f} s per video")
    print("| model | setting | s / step | speed-up | s / video | speed-up | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for model_name, rows in report["models"].items():
        for r in rows:
            if "skipped" in r:
                print(f"| {model_name} | {r['setting']} | skipped: {r['skipped']} | | | | |")
                continue
            print(f"| {model_name} | {r['setting']} | {r['seconds_per_step']:.3f} | {r['step_speedup']:.2f}x | "
                  f"{r['seconds_per_video']:.1f} | {r['video_speedup']:.2f}x | {r['peak_gib']:.1f} |")
    print(f"total {report['seconds']:.0f} s; JSON in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
