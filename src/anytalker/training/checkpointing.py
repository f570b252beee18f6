"""Training checkpoints: every process's state saved atomically, the newest complete one resumed.

A checkpoint is `OUTPUT/checkpoint-<step>`: accelerate's state (model, optimizer, LR scheduler,
registered objects such as the EMA, one RNG state file per process) and `trainer_state.json`.
It is written into `.checkpoint-<step>.partial` and renamed into place once every process has
written its part, so a crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

__all__ = ["CHECKPOINT_PREFIX", "Checkpointer", "list_checkpoints"]

CHECKPOINT_PREFIX = "checkpoint-"


def list_checkpoints(output: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of an output folder, oldest first."""
    return sorted(Path(output).glob(f"{CHECKPOINT_PREFIX}*"), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


class Checkpointer:
    """Saves and resumes the state an `accelerate.Accelerator` holds, in `output`; keeps the
    newest `keep` checkpoints. Every process must call `save` (it synchronises them)."""

    def __init__(self, accelerator, output: str | os.PathLike, keep: int):
        self.accelerator, self.output, self.keep = accelerator, Path(output), keep

    def save(self, step: int) -> Path:
        acc = self.accelerator
        final = self.output / f"{CHECKPOINT_PREFIX}{step}"
        partial = self.output / f".{final.name}.partial"
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)  # before any rank writes its RNG state into it
        acc.wait_for_everyone()
        acc.save_state(str(partial))
        acc.wait_for_everyone()  # every rank has written its RNG state before the rename
        if acc.is_main_process:
            (partial / "trainer_state.json").write_text(json.dumps({"step": step}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            for old in list_checkpoints(self.output)[:-self.keep]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def resume(self) -> int:
        """Loads the newest complete checkpoint; returns its step (0 when there is none)."""
        checkpoints = list_checkpoints(self.output)
        if not checkpoints:
            return 0
        self.accelerator.load_state(str(checkpoints[-1]))
        return json.loads((checkpoints[-1] / "trainer_state.json").read_text())["step"]
