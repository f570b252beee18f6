"""Training data on disk: tar shards of samples plus an index, readable with random access.

A shard is a plain tar file (WebDataset naming: `<key>.<field>`), so standard tools and
WebDataset readers can stream it across many nodes; `ShardIndex` additionally records each
member's byte offset, so every rank can read exactly the samples of its sampler (map-style,
exactly resumable). Fields of a sample:

    <key>.json              metadata (fps, size, persons with boxes and speaking intervals, caption)
    <key>.frames.npy        uint8 [F, H, W, 3] full view
    <key>.half_frames.npy   uint8 [F, H, W/2, 3] face-centred half view (single-person clips only)
    <key>.audio.<i>.npy     float32 [samples] 16 kHz, person i (left to right)
    <key>.cache.safetensors optional cached encodings (latents, wav2vec2 features, ...)
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..utils.atomic import atomic_write


@dataclass
class Sample:
    key: str
    meta: dict
    frames: np.ndarray
    audio: list[np.ndarray]
    half_frames: np.ndarray | None = None
    cache: dict[str, torch.Tensor] = field(default_factory=dict)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def sample_members(sample: Sample) -> list[tuple[str, bytes]]:
    members = [(f"{sample.key}.json", json.dumps(sample.meta).encode()),
               (f"{sample.key}.frames.npy", _npy_bytes(sample.frames))]
    if sample.half_frames is not None:
        members.append((f"{sample.key}.half_frames.npy", _npy_bytes(sample.half_frames)))
    members += [(f"{sample.key}.audio.{i}.npy", _npy_bytes(a.astype(np.float32))) for i, a in enumerate(sample.audio)]
    if sample.cache:
        members.append((f"{sample.key}.cache.safetensors",
                        save_safetensors({k: v.contiguous() for k, v in sample.cache.items()})))
    return members


def write_shard(path: str | os.PathLike, samples: list[Sample]) -> Path:
    """Writes one shard atomically (a crash never leaves a truncated tar under the final name)."""
    path = Path(path)
    with atomic_write(path) as tmp, tarfile.open(tmp, "w") as tar:
        for sample in samples:
            for name, data in sample_members(sample):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _decode(field_name: str, data: bytes):
    if field_name == "json":
        return json.loads(data)
    if field_name.endswith("npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if field_name.endswith("safetensors"):
        return load_safetensors(data)
    raise ValueError(f"unknown field {field_name}")


class ShardIndex:
    """Random access to the samples of a set of shards (the tar headers are scanned once)."""

    def __init__(self, shards: list[str | os.PathLike]):
        self.shards = [Path(s) for s in shards]
        if not self.shards:
            raise ValueError("no shards given")
        self.entries: list[tuple[int, str, dict[str, tuple[int, int]]]] = []  # (shard, key, field -> (offset, size))
        for shard_id, shard in enumerate(self.shards):
            if not shard.is_file():
                raise FileNotFoundError(f"shard not found: {shard}")
            members: dict[str, dict[str, tuple[int, int]]] = {}
            with tarfile.open(shard, "r") as tar:
                for info in tar:
                    key, _, field_name = info.name.partition(".")
                    members.setdefault(key, {})[field_name] = (info.offset_data, info.size)
            self.entries += [(shard_id, key, fields) for key, fields in members.items()]

    @staticmethod
    def shard_files(directory: str | os.PathLike) -> list[Path]:
        """The shards of a folder made by `anytalker prepare`, in order."""
        shards = sorted(Path(directory).glob("shard-*.tar"))
        if not shards:
            raise FileNotFoundError(f"no shard-*.tar files in {directory} (made by `anytalker prepare`)")
        return shards

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> "ShardIndex":
        return cls(cls.shard_files(directory))

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int, fields: tuple[str, ...] | None = None) -> Sample:
        shard_id, key, members = self.entries[index]
        values = {}
        with open(self.shards[shard_id], "rb") as handle:
            for name, (offset, size) in members.items():
                if fields is None or name in fields or name.split(".")[0] in fields:
                    handle.seek(offset)
                    values[name] = _decode(name, handle.read(size))
        audio = [values[f"audio.{i}.npy"] for i in range(sum(1 for n in values if n.startswith("audio.")))]
        return Sample(key, values["json"], values.get("frames.npy"), audio, values.get("half_frames.npy"),
                      values.get("cache.safetensors", {}))
