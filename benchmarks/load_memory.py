"""Host memory and time of loading a full-size 1.3B AnyTalker DiT.

Writes a random full-size release-format checkpoint (bf16, the `.pth` layout with weights under
"model") to a temporary folder, then, each in a fresh process:
  - `from_official` on the `.pth` (meta-device build + memory-mapped assign), then every
    parameter read once so all pages are resident;
  - `from_pretrained` on the diffusers folder that `save_pretrained` made from it.
Peak RSS is measured above the process's RSS before loading (Linux /proc) and reported as a
multiple of the checkpoint's size (goal <= 1.2x). Needs ~8 GB of free disk.

    python benchmarks/load_memory.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def _load(kind: str, path: str, queue) -> None:
    import torch

    from anytalker.models import AnyTalkerTransformer
    from anytalker.models.official_checkpoint import RELEASE_DIT_CONFIGS

    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak-RSS counter
    before = _rss_mib("VmRSS:")
    start = time.perf_counter()
    if kind == "pth":
        model = AnyTalkerTransformer.from_official(path, RELEASE_DIT_CONFIGS["1.3B"])
    else:
        model = AnyTalkerTransformer.from_pretrained(path, torch_dtype=torch.bfloat16)
    seconds = time.perf_counter() - start
    with torch.no_grad():  # touch every weight: memory-mapped pages count once they are read
        checksum = sum(float(p.float().sum()) for p in model.parameters())
    queue.put((seconds, _rss_mib("VmHWM:") - before, checksum))


def measure(kind: str, path: Path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load, args=(kind, str(path), queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def write_random_release_checkpoint(path: Path) -> int:
    """Random bf16 weights under the release's key names; returns the payload size in bytes."""
    import torch
    from accelerate import init_empty_weights

    from anytalker.models import AnyTalkerTransformer
    from anytalker.models.official_checkpoint import (
        RELEASE_DIT_CONFIGS,
        config_from_official,
        diffusers_key_to_official,
    )

    with init_empty_weights():
        model = AnyTalkerTransformer.from_config(config_from_official(RELEASE_DIT_CONFIGS["1.3B"]))
    generator = torch.Generator().manual_seed(0)
    state = {diffusers_key_to_official(name, "fused"): torch.randn(p.shape, generator=generator).to(torch.bfloat16)
             for name, p in model.state_dict().items()}
    torch.save({"model": state}, path)
    return sum(t.numel() * t.element_size() for t in state.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="write the checkpoints into this folder and keep them")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="anytalker-load-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        pth = root / "1_3B-single-v1.pth"
        size = write_random_release_checkpoint(pth) / 2**20
        diffusers_dir = root / "transformer"
        import torch

        from anytalker.models import AnyTalkerTransformer
        from anytalker.models.official_checkpoint import RELEASE_DIT_CONFIGS

        AnyTalkerTransformer.from_official(pth, RELEASE_DIT_CONFIGS["1.3B"]).save_pretrained(diffusers_dir)
        del torch

        pth_time, pth_peak, pth_sum = measure("pth", pth)
        dif_time, dif_peak, dif_sum = measure("diffusers", diffusers_dir)
        assert abs(pth_sum - dif_sum) <= 1e-6 * max(1.0, abs(pth_sum)), "the two loads hold different weights"
        print(f"full-size 1.3B DiT, bf16 checkpoint: {size:.0f} MiB")
        print(f"{'source':<28} {'load s':>7} {'peak RSS MiB':>13} {'x checkpoint':>13}")
        print(f"{'release .pth (from_official)':<28} {pth_time:>7.2f} {pth_peak:>13.0f} {pth_peak / size:>13.2f}")
        print(f"{'diffusers folder':<28} {dif_time:>7.2f} {dif_peak:>13.0f} {dif_peak / size:>13.2f}")
        print(f"load time, .pth / diffusers folder: {pth_time / dif_time:.2f}x")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
