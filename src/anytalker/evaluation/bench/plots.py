"""Bench plots (matplotlib, optional): per-clip bars of each metric and, per case, each person's
eye/brow motion over time. No pyplot: no global backend state, no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...utils.atomic import atomic_write
from ...utils.records import format_number
from .report import failure_text, record_values

__all__ = ["metric_bars", "motion_plot", "save_figure", "write_plots"]


def save_figure(figure, path: Path) -> None:
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def write_plots(out: Path, records: Sequence[dict], columns: Sequence[str]) -> tuple[list[Path], str | None]:
    """OUT/plots/<metric>.png per metric column group and OUT/plots/motion_<case>.png per case with a
    measured listening step. Returns (written files, notice); the notice says why plots are missing
    (matplotlib not installed) or which cases have no motion plot."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return [], "matplotlib is not installed: no plots written (pip install matplotlib)"
    folder = out / "plots"
    groups: dict[str, list[str]] = {}
    for column in columns:
        head = "interactivity" if column.startswith("interactivity") else \
            "sync" if column.startswith("sync") else "identity"
        groups.setdefault(head, []).append(column)
    written = [metric_bars(folder / f"{head}.png", head, records, group) for head, group in groups.items()]
    skipped = []
    for record in records:
        if not record.get("motion"):
            continue
        path = motion_plot(folder / f"motion_{record['case']}.png", record)
        if path is None:
            skipped.append(f"{record['case']} ({failure_text(record) or 'no measurable listening step'})")
        else:
            written.append(path)
    notice = ("no motion plot for: " + ", ".join(skipped)) if skipped else None
    return written, notice


def metric_bars(path: Path, head: str, records: Sequence[dict], group: Sequence[str]) -> Path:
    """Bars per clip of each column in `group` (the columns of metric `head`); failed cases are marked."""
    from matplotlib.figure import Figure

    x = np.arange(len(records))
    figure = Figure(figsize=(max(6.0, 0.6 * len(records) * len(group) ** 0.5 + 2), 4))
    axes = figure.add_subplot()
    width = 0.8 / len(group)
    low = high = 0.0
    for k, column in enumerate(group):
        values = [record_values(r).get(column) for r in records]
        heights = [v if v is not None else 0.0 for v in values]  # failed: no bar, marked below
        axes.bar(x + (k - (len(group) - 1) / 2) * width, heights, width, label=column)
        low, high = min(low, *heights), max(high, *heights)
    axes.set_ylim(low * 1.1, high * 1.1 if high > 0 else 1.0)
    failed = [all(record_values(record).get(c) is None for c in group) for record in records]
    for i in np.flatnonzero(failed):
        axes.text(i, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=8, color="red")
    axes.set_xticks(x, [r["case"] for r in records], rotation=60, ha="right", fontsize=8)
    axes.set_title(f"{head} per clip" + (" (failed cases marked)" if any(failed) else ""))
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    return path


def motion_plot(path: Path, record: dict) -> Path | None:
    """Each person's eye/brow motion over time (listening steps solid, speaking intervals shaded);
    None (nothing written) when no listening step was measured."""
    from matplotlib.figure import Figure

    motion = record["motion"]
    series = [(p["name"], np.array([np.nan if v is None else v for v in p["displacement"]], float),
               np.asarray(p["listening"], bool)) for p in motion["people"]]
    if not any(np.isfinite(d[listening]).any() for _, d, listening in series):
        return None
    figure = Figure(figsize=(8, 1.8 * len(series) + 0.6))
    score = record_values(record).get("interactivity")
    for k, (name, displacement, listening) in enumerate(series):
        axes = figure.add_subplot(len(series), 1, k + 1)
        t = np.arange(len(displacement)) / motion["fps"]
        axes.plot(t, displacement, color="0.75", linewidth=0.8, label="all frames")
        axes.plot(t, np.where(listening, displacement, np.nan), color=f"C{k}", linewidth=1.5, label="listening")
        speaking = ~listening
        edges = np.flatnonzero(np.diff(np.concatenate([[0], speaking.astype(int), [0]])))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            axes.axvspan(t[start], t[stop - 1], color="0.9", zorder=0)
        axes.set_ylabel(f"{name}\npx / frame", fontsize=8)
        if k == 0:
            axes.set_title(f"{record['case']}: eye/brow motion (shaded: speaking; interactivity "
                           f"{format_number(score)})", fontsize=9)
            axes.legend(fontsize=7, loc="upper right")
    axes.set_xlabel("time (s)")
    figure.tight_layout()
    save_figure(figure, path)
    return path
