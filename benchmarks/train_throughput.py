"""Training throughput with cached encodings vs running the frozen encoders on the fly.

Makes a small synthetic single-person dataset twice (`anytalker prepare`, with and without
`--cache-model`), trains the random-tiny model for the same steps on each (stage 1: half the
batches side-by-side pairs), and prints samples/s of both and their ratio. CPU, one process.

    python benchmarks/train_throughput.py [--steps 20] [--size 64x128] [--frames 25]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_training import make_clip  # noqa: E402  (the tests' synthetic talking clips)

from anytalker.pipeline.tiny import random_tiny_components  # noqa: E402
from anytalker.training.examples import ConditionEncoder  # noqa: E402
from anytalker.training.prepare import PrepareSettings, prepare_dataset  # noqa: E402
from anytalker.training.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", default="64x128")
    parser.add_argument("--frames", type=int, default=25)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(6):
            make_clip(root / "clips", f"c{i}", seconds=args.frames / 24 * 2 + 0.1, seed=i, side=height)
        settings = PrepareSettings(frames=args.frames, height=height, width=width)
        parts = random_tiny_components()
        encoder = ConditionEncoder(parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["image_encoder"],
                                   parts["audio_encoder"], text_len=parts["transformer"].config.text_len)
        start = time.perf_counter()
        prepare_dataset(root / "clips", root / "cached", settings, encode=encoder.cache_entries, progress=False)
        cache_seconds = time.perf_counter() - start
        prepare_dataset(root / "clips", root / "plain", settings, progress=False)
        rates = {}
        for name in ("plain", "cached"):
            config = {"model": {"source": "random-tiny"}, "data": {"shards": str(root / name)},
                      "train": {"batch_size": 2, "max_steps": args.steps},
                      "output": {"dir": str(root / f"run-{name}"), "checkpoint_every": 10**9}}
            trainer = Trainer(config, progress=False)
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            rows = list(csv.DictReader(open(root / f"run-{name}" / "log.csv")))
            rates[name] = (args.steps * 2 / seconds, np.median([float(r["samples_per_s"]) for r in rows]))
    print(f"random-tiny, {args.frames} frames at {height}x{width}, batch 2, {args.steps} steps, CPU")
    print(f"{'encodings':<10} {'samples/s (run)':>16} {'samples/s (median step)':>24}")
    for name, (run_rate, step_rate) in rates.items():
        print(f"{name:<10} {run_rate:>16.2f} {step_rate:>24.2f}")
    print(f"cached / on-the-fly: {rates['cached'][0] / rates['plain'][0]:.2f}x "
          f"(one-off cost of caching 6 clips: {cache_seconds:.1f} s)")


if __name__ == "__main__":
    main()
