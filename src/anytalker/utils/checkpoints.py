"""Reading release checkpoints without extra copies, and filling meta-device models in place.

Release files are large (the 14B DiT is ~80 GB in fp32): they are memory-mapped, renamed key by
key and assigned into a model whose parameters live on the meta device, so the host never holds
a second full copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model it is loaded into."""


class LazySafetensors(Mapping):
    """Read-only mapping over one or more .safetensors shards; a tensor is read only when asked for."""

    def __init__(self, *paths: str | os.PathLike):
        self.paths = [str(path) for path in paths]
        self._handles = {}
        for path in self.paths:
            handle = safe_open(path, framework="pt")
            self._handles.update({key: handle for key in handle.keys()})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._handles[key].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._handles)

    def __len__(self) -> int:
        return len(self._handles)


class Overlay(Mapping):
    """Union of state dicts; earlier ones win where the same key appears in several."""

    def __init__(self, *state_dicts: Mapping):
        self._owner = {}
        for state_dict in reversed(state_dicts):
            self._owner.update({key: state_dict for key in state_dict.keys()})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._owner[key][key]

    def source_key(self, key: str) -> str:
        return source_key(self._owner[key], key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def __len__(self) -> int:
        return len(self._owner)


def _safetensors_shards(path: Path) -> list[Path]:
    """Shards named by a `*.safetensors.index.json`, or every `*.safetensors` of a folder."""
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if not indexes:
            return sorted(path.glob("*.safetensors"))
        path = indexes[0]
    weight_map = json.loads(path.read_text())["weight_map"]
    return [path.parent / name for name in sorted(set(weight_map.values()))]


def open_state_dict(path: str | os.PathLike, what: str = "checkpoint", nested_keys=("model", "state_dict")) -> Mapping:
    """Opens a state dict without copying it: `.safetensors`, a sharded safetensors folder or
    `*.safetensors.index.json`, or a torch pickle (`.pth`/`.pt`/`.bin`).

    Pickles are loaded with `mmap=True, weights_only=True`; a pickle whose top level holds the
    weights under one of `nested_keys` (the DiT releases keep them under "model") is unwrapped.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} not found: expected a file at {path}")
    try:
        if path.is_dir() or path.name.endswith(".safetensors.index.json"):
            shards = _safetensors_shards(path)
            if not shards:
                raise CheckpointError(f"{what} not found: no *.safetensors files in {path}")
            missing = [str(shard) for shard in shards if not shard.is_file()]
            if missing:
                raise CheckpointError(f"{what} is incomplete: missing shards {', '.join(missing)}")
            return LazySafetensors(*shards)
        if path.suffix == ".safetensors":
            return LazySafetensors(path)
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure means a corrupt or foreign file
        raise CheckpointError(f"{what} at {path} could not be read ({type(error).__name__}: {error})") from error
    for key in nested_keys:
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} at {path} does not hold a state dict of tensors")
    return state


def source_key(state_dict: Mapping, key: str) -> str:
    """The name a key has in its file, for error messages (mappings that rename keys say so)."""
    return state_dict.source_key(key) if hasattr(state_dict, "source_key") else key


def preview_keys(keys: list[str], limit: int = 12) -> str:
    """The first `limit` keys, and how many more, for an error message."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def fit_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """The ways a state dict does not fit a model, one phrase each (empty when it fits)."""
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {preview_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {preview_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {preview_keys(mismatched)}")
    return problems


def load_state_dict_into_meta_model(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    rename: Callable[[str], str] = lambda key: key,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    keep_fp32: Callable[[str], bool] = lambda name: False,
    source: str = "checkpoint",
) -> torch.nn.Module:
    """Strictly fills `model` (built under `accelerate.init_empty_weights`) from `state_dict`.

    Every source key must map (through `rename`) to a parameter or persistent buffer of the same
    shape, and every parameter must be covered; otherwise a CheckpointError lists the offenders.
    Tensors are assigned, not copied, unless a dtype change is asked for.
    """
    expected = dict(model.state_dict(keep_vars=True))
    shapes = {name: tuple(t.shape) for name, t in expected.items()}
    unexpected, mismatched, converted = [], [], {}
    for key in state_dict.keys():
        name = rename(key)
        if name not in shapes:
            unexpected.append(source_key(state_dict, key))
            continue
        tensor = state_dict[key]
        if transform is not None:
            tensor = transform(name, tensor)
        if tuple(tensor.shape) != shapes[name]:
            mismatched.append(f"{source_key(state_dict, key)}: file {tuple(tensor.shape)} vs model {shapes[name]}")
            continue
        target = torch.float32 if keep_fp32(name) else dtype
        if target is not None and tensor.is_floating_point() and tensor.dtype != target:
            tensor = tensor.to(target)
        converted[name] = tensor
    missing = [name for name in shapes if name not in converted]
    problems = fit_problems(missing, unexpected, mismatched)
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(converted, strict=True, assign=True)
    return model
