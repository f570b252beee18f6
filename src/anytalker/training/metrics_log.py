"""The training curve: a CSV log (`OUTPUT/log.csv`), and TensorBoard when asked for and installed.

Named metrics_log rather than logging so it is never mistaken for the standard library's module.
"""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["MetricsLogger"]


class MetricsLogger:
    """Rows of (step, loss, lr, kind, samples_per_s); only the main process writes (`active`).
    `append` continues an existing log (a resumed run), else a fresh one is started."""

    FIELDS = ("step", "loss", "lr", "kind", "samples_per_s")
    SCALARS = ("loss", "lr", "samples_per_s")

    def __init__(self, output: Path, log_with: str, active: bool, append: bool):
        self.active, self.tb = active, None
        if not active:
            return
        path = Path(output) / "log.csv"
        fresh = not (append and path.is_file())
        self.handle = open(path, "w" if fresh else "a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.FIELDS)
        if fresh:
            self.writer.writeheader()
        if log_with == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(output) / "tensorboard"))

    def write(self, **row):
        if not self.active:
            return
        self.writer.writerow(row)
        self.handle.flush()
        if self.tb is not None:
            for key in self.SCALARS:
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self):
        if self.active:
            self.handle.close()
            if self.tb is not None:
                self.tb.close()
