"""One denoising step: the guidance passes batched into one transformer forward vs one forward each.

AnyTalkerPipeline runs the classifier-free-guidance passes of a step as ONE forward with batch
size 2 ([cond, uncond], the release) or 3 ([cond, text only, uncond] with a separate audio scale).
This times that against running the same passes sequentially (batch 1 each), on the CPU, with
randomly initialised transformers: the `random-tiny` one and a "small" one. A step here is the
transformer work plus `combine_guidance` (the scheduler update is the same either way and tiny).
Both ways give the same guided prediction; the largest difference is printed as a check.

    python benchmarks/pipeline_step.py [--repeats 5] [--threads N]

Timings are the best of `--repeats` steps after one warm-up step, the two ways alternating. On a
machine shared with other jobs, keep one thread (the default): OpenMP threads that wait for each
other under contention make the timings erratic (a second thread can make a step slower).
"""

from __future__ import annotations

import argparse
import time

import torch

from anytalker.models import AnyTalkerTransformer
from anytalker.pipeline.pipeline_anytalker import combine_guidance
from anytalker.pipeline.tiny import random_tiny_components

# name -> (transformer kwargs, identities, latent frames, latent height, latent width).
# tiny: random-tiny at 32x48 px (latent 4x6), one 81-frame window (21 latent frames), 1 identity.
# small: 4 heads x 32, 4 layers, 2 identities, 81 frames at 128x224 px (latent 16x28: 2352 tokens).
SMALL = {"num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 512, "num_layers": 4, "text_dim": 32,
         "text_len": 32, "image_dim": 32, "face_dim": 32, "audio_layers": 2, "audio_channels": 32,
         "audio_hidden_dim": 32, "audio_tokens_per_frame": 4}
CONFIGS = {"tiny": (None, 1, 21, 4, 6), "small": (SMALL, 2, 21, 16, 28)}
TEXT_TOKENS, CLIP_TOKENS = 12, 257


def build(name: str) -> tuple[AnyTalkerTransformer, dict]:
    """The transformer and the step's inputs for `name`, for the 3-pass layout (2-pass drops the middle)."""
    kwargs, ids, frames, height, width = CONFIGS[name]
    torch.manual_seed(0)
    model = random_tiny_components(0)["transformer"] if kwargs is None else AnyTalkerTransformer(**kwargs).eval()
    cfg = model.config
    video_frames = 4 * (frames - 1) + 1
    latents = torch.randn(1, cfg.in_channels, frames, height, width)
    prompt, negative = torch.randn(2, 1, TEXT_TOKENS, cfg.text_dim).unbind(0)
    audio = torch.randn(1, ids, video_frames, cfg.audio_window, cfg.audio_layers, cfg.audio_channels)
    masks = torch.rand(1, ids, frames, height // 2, width // 2)
    inputs = {
        # Pass order as in the pipeline: [cond, text only, uncond]; uncond = negative prompt + zero audio.
        "text": [prompt, prompt, negative],
        "audio": [audio, torch.zeros_like(audio), torch.zeros_like(audio)],
        "latents": latents,
        "image": torch.randn(1, CLIP_TOKENS, cfg.image_dim),
        "faces": torch.randn(1, ids, CLIP_TOKENS, cfg.face_dim),
        "masks": masks,
    }
    return model, inputs


def pass_indices(passes: int) -> list[int]:
    return [0, 2] if passes == 2 else [0, 1, 2]


def forward(model, inputs, which: list[int], timestep: float) -> torch.Tensor:
    """One transformer forward over the passes in `which`, batched along dim 0."""
    batch = len(which)
    return model(
        hidden_states=inputs["latents"].expand(batch, -1, -1, -1, -1),
        timestep=torch.full((batch,), timestep),
        encoder_hidden_states=torch.cat([inputs["text"][i] for i in which]),
        encoder_hidden_states_image=inputs["image"].expand(batch, -1, -1),
        face_embeds=inputs["faces"].expand(batch, -1, -1, -1),
        audio_embeds=torch.cat([inputs["audio"][i] for i in which]),
        face_token_masks=inputs["masks"].expand(batch, -1, -1, -1, -1),
    ).sample.float()


def step(model, inputs, passes: int, batched: bool) -> torch.Tensor:
    which = pass_indices(passes)
    audio_scale = None if passes == 2 else 2.0
    if batched:
        predictions = forward(model, inputs, which, 500.0)
    else:
        predictions = torch.cat([forward(model, inputs, [i], 500.0) for i in which])
    return combine_guidance(predictions, 4.5, audio_scale)


def time_steps(model, inputs, passes: int, repeats: int) -> tuple[float, float, float]:
    """(batched s, sequential s, max |difference| of the guided predictions).

    The two ways alternate step by step so that both see the same background load, and the best
    of `repeats` is kept (other jobs on the machine only ever add time).
    """
    with torch.no_grad():
        out_batched = step(model, inputs, passes, batched=True)  # warm-up (allocator, kernels)
        out_sequential = step(model, inputs, passes, batched=False)
        times = {True: [], False: []}
        for _ in range(repeats):
            for batched in (True, False):
                start = time.perf_counter()
                step(model, inputs, passes, batched)
                times[batched].append(time.perf_counter() - start)
    return min(times[True]), min(times[False]), (out_batched - out_sequential).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats} steps")
    header = f"{'config':<6} {'tokens':>6} {'passes':>6} {'batched ms':>11} {'sequential ms':>14} {'seq/batched':>12} {'max|diff|':>10}"
    print(header)
    print("-" * len(header))
    for name in args.configs:
        model, inputs = build(name)
        _, _, frames, height, width = CONFIGS[name]
        tokens = frames * (height // 2) * (width // 2)
        for passes in (2, 3):
            batched, sequential, diff = time_steps(model, inputs, passes, args.repeats)
            print(f"{name:<6} {tokens:>6} {passes:>6} {batched * 1e3:>11.1f} {sequential * 1e3:>14.1f} "
                  f"{sequential / batched:>12.2f} {diff:>10.1e}")


if __name__ == "__main__":
    main()
