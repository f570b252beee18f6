"""Step caches vs quality on puppets-tiny: skip fraction against lip sync (own track) and binding.

Each cache (first-block, MagCache, TaylorSeer, TeaCache) at three settings, plus the uncached
baseline and, for reference, the weight quantizations, on the held-out evaluation scenes
(`puppets.model.evaluation_scenes`, seeds 900000+, 2 puppets, 49 frames) at 20 steps without
guidance, as the bundled model's evaluation runs. MagCache and TeaCache use the calibration
shipped in the model folder (`anytalker calibrate-cache puppets-tiny --scenes 4`, scenes 800000+).
"Skipped" is the share of block evaluations (block x step) that a cache reused instead of running;
PSNR vs uncached compares each video with the uncached one of the same scene and seed.

    python benchmarks/cache_quality.py [--scenes 12] [--out results.json]

Prints a markdown table and writes JSON. One torch thread (timings on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from anytalker.acceleration.caches import BlockCounter
from anytalker.pipeline import runner
from anytalker.pipeline.settings import ModelSettings, SpeedSettings
from anytalker.puppets.model import evaluation_scenes, generate_scene, scene_metrics, summarize_metrics

SETTINGS = [
    ("none", None),
    ("first-block 0.05", SpeedSettings(cache="first-block", cache_threshold=0.05)),
    ("first-block 0.1", SpeedSettings(cache="first-block", cache_threshold=0.1)),
    ("first-block 0.2", SpeedSettings(cache="first-block", cache_threshold=0.2)),
    ("magcache 0.03", SpeedSettings(cache="magcache", cache_threshold=0.03)),
    ("magcache 0.06", SpeedSettings(cache="magcache", cache_threshold=0.06)),
    ("magcache 0.12", SpeedSettings(cache="magcache", cache_threshold=0.12)),
    ("taylorseer every 2", SpeedSettings(cache="taylorseer", cache_interval=2)),
    ("taylorseer every 3", SpeedSettings(cache="taylorseer", cache_interval=3)),
    ("taylorseer every 4", SpeedSettings(cache="taylorseer", cache_interval=4)),
    ("teacache 0.1", SpeedSettings(cache="teacache", cache_threshold=0.1)),
    ("teacache 0.2", SpeedSettings(cache="teacache", cache_threshold=0.2)),
    ("teacache 0.4", SpeedSettings(cache="teacache", cache_threshold=0.4)),
    ("int8 weights", SpeedSettings(quantize="int8")),
    ("fp8 storage", SpeedSettings(quantize="fp8-storage")),
]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


def evaluate(name, speed, scenes, steps, uncached=None):
    loaded = runner.load_pipeline(ModelSettings("puppets-tiny", dtype="fp32", speed=speed), progress=False)
    per_scene, videos, start = [], [], time.perf_counter()
    with BlockCounter(loaded.pipe.transformer) as counter:
        for scene in scenes:
            videos.append(generate_scene(loaded, scene, steps=steps))
            per_scene.append(scene_metrics(videos[-1], scene))
    summary = summarize_metrics(per_scene)
    uncached = uncached or videos
    row = {"setting": name, "skipped": counter.skipped_fraction,
           "psnr_vs_uncached": float(np.mean([psnr(a, b) for a, b in zip(videos, uncached)])),
           "lip_own": summary["lip_own"], "lip_other": summary["lip_other"], "binding": summary["binding"],
           "binding_moments": summary["binding_moments"], "interactivity": summary["interactivity"],
           "seconds": round(time.perf_counter() - start, 1), **counter.summary()}
    return videos, row


def table(rows) -> str:
    base = rows[0]
    lines = ["| setting | blocks skipped | PSNR vs uncached | lip sync own | vs uncached | lip sync other | binding "
             "| s / scene |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['skipped']:.0%} | {r['psnr_vs_uncached']:.1f} | {r['lip_own']:.3f} | "
                     f"{r['lip_own'] / base['lip_own']:.3f}x | {r['lip_other']:.3f} | {r['binding']:.3f} | "
                     f"{r['seconds'] / r['scenes']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", help="comma-separated setting names")
    parser.add_argument("--out", default="cache_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenes = evaluation_scenes(args.scenes)
    chosen = SETTINGS if not args.only else [s for s in SETTINGS if s[0] in args.only.split(",") or s[0] == "none"]
    rows, uncached = [], None
    for name, speed in chosen:
        videos, row = evaluate(name, speed, scenes, args.steps, uncached)
        uncached = uncached or videos  # the first setting is "none"
        rows.append({**row, "scenes": len(scenes)})
        print(f"{name}: skipped {rows[-1]['skipped']:.0%}, lip own {rows[-1]['lip_own']:.3f}, "
              f"binding {rows[-1]['binding']:.3f}", flush=True)
        with open(args.out, "w") as handle:
            json.dump({"scenes": len(scenes), "steps": args.steps, "rows": rows}, handle, indent=1)
    print(table(rows))


if __name__ == "__main__":
    main()
