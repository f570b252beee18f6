"""Audio-face attention: grouped per latent frame (ours) vs the release's dense temporal mask.

For 81, 161, 321 and 481 video frames, one identity's AFCA attention (queries of all latent
frames against [257 face tokens ; 32 audio tokens per frame]) is run both ways on the CPU at a
small width. Each measurement runs in a fresh process; peak memory is the process's peak RSS
above what it held just before the call (Linux /proc). Prints latency, peak memory and ratios.

    python benchmarks/audio_attention_scaling.py [--grid 8x12] [--heads 2] [--head-dim 32]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

FRAME_COUNTS = (81, 161, 321, 481)
FACE_TOKENS, AUDIO_TOKENS = 257, 32


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(method: str, frames: int, grid: tuple[int, int], heads: int, head_dim: int, queue) -> None:
    import torch

    from anytalker.models.attention import build_dense_temporal_mask, temporal_audio_face_attention

    torch.manual_seed(0)
    torch.set_num_threads(1)
    latent_frames = (frames - 1) // 4 + 1
    per_frame = grid[0] * grid[1]
    query = torch.randn(1, latent_frames * per_frame, heads, head_dim)
    face_k, face_v = torch.randn(2, 1, 1, FACE_TOKENS, heads, head_dim).unbind(0)
    audio_k, audio_v = torch.randn(2, 1, 1, frames, AUDIO_TOKENS, heads, head_dim).unbind(0)

    def grouped():
        return temporal_audio_face_attention(query, face_k, face_v, audio_k, audio_v, latent_frames)[:, 0]

    def dense():
        # The release's formulation: one boolean mask over [face ; all audio tokens] for every query.
        mask = build_dense_temporal_mask(latent_frames, per_frame, frames, AUDIO_TOKENS)
        mask = torch.cat([torch.ones(mask.shape[0], FACE_TOKENS, dtype=torch.bool), mask], dim=1)
        keys = torch.cat([face_k[:, 0], audio_k[:, 0].flatten(1, 2)], dim=1)
        values = torch.cat([face_v[:, 0], audio_v[:, 0].flatten(1, 2)], dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2)

    run = grouped if method == "grouped" else dense
    with torch.no_grad():
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset the peak-RSS counter to the current RSS
        before = _rss_kib("VmRSS:")
        start = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - start
        peak = _rss_kib("VmHWM:") - before
    queue.put((seconds, peak / 1024, out[0, :per_frame * 2].numpy().copy() if frames == FRAME_COUNTS[0] else None))


def measure(method, frames, grid, heads, head_dim):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(method, frames, grid, heads, head_dim, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="8x12", help="token grid per latent frame, HxW (default 8x12)")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    args = parser.parse_args()
    grid = tuple(int(v) for v in args.grid.split("x"))

    print(f"AFCA attention, 1 identity, grid {grid[0]}x{grid[1]}, {args.heads} heads x {args.head_dim}, CPU, 1 thread")
    print(f"{'frames':>6} {'grouped s':>10} {'dense s':>9} {'speed x':>8} {'grouped MiB':>12} {'dense MiB':>10} "
          f"{'memory x':>9}")
    grouped_memory = []
    for frames in FRAME_COUNTS:
        g_time, g_mem, g_out = measure("grouped", frames, grid, args.heads, args.head_dim)
        d_time, d_mem, d_out = measure("dense", frames, grid, args.heads, args.head_dim)
        if g_out is not None:
            diff = float(abs(g_out - d_out).max())
            assert diff < 1e-5, f"grouped and dense attention disagree by {diff}"
        grouped_memory.append(g_mem)
        print(f"{frames:>6} {g_time:>10.3f} {d_time:>9.3f} {d_time / g_time:>8.1f} {g_mem:>12.1f} {d_mem:>10.1f} "
              f"{d_mem / max(g_mem, 1e-3):>9.1f}")
    growth = [m / grouped_memory[0] for m in grouped_memory]
    print("grouped peak memory relative to 81 frames: " + ", ".join(
        f"{f}: {g:.2f}x (frames {f / FRAME_COUNTS[0]:.2f}x)" for f, g in zip(FRAME_COUNTS, growth)))


if __name__ == "__main__":
    main()
