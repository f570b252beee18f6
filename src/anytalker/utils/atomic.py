"""Atomic writes: a crash or an exception never leaves a partial file or folder at the destination.

Used for videos, checkpoints, JSON sidecars and model folders: write to a temporary name in the destination's
folder (same file system, so the final `os.replace` is atomic), then rename.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed.

        with atomic_write("out/clip.mp4") as tmp:
            write_something(tmp)           # any writer that takes a file name

    The temporary name is hidden (leading dot) and keeps the suffix, so writers that guess the
    format from the extension still work. The parent folder is created if needed. An existing
    file at `path` stays untouched until the rename. A hard kill (SIGKILL, power loss before the
    rename) can leave the hidden temporary file behind, never a partial destination.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not created here (mkstemp would make it 0600): the writer creates it with normal permissions.
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_write: nothing was written to {tmp}")
        with open(tmp, "rb") as handle:  # flush to disk first, or a power loss could leave an empty file
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj, indent: int | None = 1, **dumps_options) -> Path:
    """`obj` as JSON at `path`, written atomically (`atomic_write`); returns the path."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, **dumps_options))
    return Path(path)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` (an existing folder
    there is removed first), on error it is removed. For model folders (`save_pretrained`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finished_files(root: str | os.PathLike, pattern: str) -> list[Path]:
    """The files under `root` matching `pattern` (recursively), sorted, without the hidden ones:
    `atomic_write` and `atomic_directory` write under hidden names, and a killed process
    (SIGTERM or SIGKILL runs no cleanup) leaves them behind half-written."""
    root = Path(root)
    return sorted(p for p in root.rglob(pattern) if not any(part.startswith(".") for part in p.relative_to(root).parts))
