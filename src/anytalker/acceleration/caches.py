"""Step caches: reuse work of the previous denoising step when the transformer's input barely moved.

Four, all hooks on `transformer.blocks` (diffusers' hook registry; `AnyTalkerTransformerBlock` is
registered in diffusers' TransformerBlockRegistry by `anytalker.models.transformer_anytalker`):
- `first-block`: diffusers' First Block Cache. Block 0 always runs; when its residual changed by
  less than `threshold` (relative mean |diff|) the other blocks reuse their previous residual.
- `magcache`: diffusers' MagCache. Skips all blocks while the accumulated error of the calibrated
  magnitude ratios stays under `threshold` (at most 3 steps in a row; the first `warmup` steps run).
- `taylorseer`: diffusers' TaylorSeer with explicit module patterns. Default: every block is
  skipped on predicted steps and `proj_out`'s output is extrapolated (Taylor order 1) from the
  computed steps, one full step every `interval`; `patterns` chooses other modules to predict.
- `teacache`: ours (TeaCache-style). The relative L1 change of block 0's timestep-modulated input
  (norm1(x) * (1 + scale) + shift), rescaled by a polynomial fitted per model (calibration), is
  accumulated; while the sum stays under `threshold` all blocks reuse the previous residual.
  The first `warmup` steps and the last step always run.

The pipeline runs each transformer call inside `transformer.cache_context(...)` with the step index,
sigma and step count, and resets the caches at the start of every window. Guidance passes are
batched into one forward, so there is one decision per step for all of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_THRESHOLDS = {"first-block": 0.05, "magcache": 0.06, "teacache": 0.1}
DEFAULT_WARMUP = {"magcache": 4, "taylorseer": 3, "teacache": 2}
TAYLORSEER_BLOCKS = (r"blocks\.\d+",)
TAYLORSEER_OUTPUT = (r"proj_out",)
NEEDS_CALIBRATION = ("magcache", "teacache")
CALIBRATION_FOLDER = "cache_calibration"
_TEACACHE_HEAD, _TEACACHE_BLOCK = "anytalker_teacache_head", "anytalker_teacache_block"


@dataclass(frozen=True)
class CacheSetup:
    """One cache as it is applied: the kind, its knobs and the calibration it uses (if any)."""

    kind: str
    threshold: float | None = None
    interval: int = 3
    warmup: int = 0
    patterns: tuple[str, ...] | None = None
    calibration: dict | None = None
    calibration_file: str | None = None

    def describe(self) -> dict:
        keep = {"kind": self.kind, "threshold": self.threshold, "warmup": self.warmup}
        if self.kind == "taylorseer":
            keep.update(interval=self.interval, patterns=list(self.patterns or TAYLORSEER_OUTPUT))
        if self.calibration_file:
            keep["calibration"] = self.calibration_file
        return keep


def calibration_path(model_folder: str | os.PathLike | None, name_or_file: str | None) -> Path:
    """Where a calibration lives: a `.json` file as given, else `<model folder>/cache_calibration/<name>.json`
    (name `default` when none is given)."""
    if name_or_file and (name_or_file.endswith(".json") or os.sep in name_or_file):
        return Path(name_or_file)
    if model_folder is None:
        raise FileNotFoundError("this model has no folder to keep cache calibrations in: pass a calibration file "
                                "(--cache-calibration FILE.json from `anytalker calibrate-cache --out FILE.json`)")
    return Path(model_folder) / CALIBRATION_FOLDER / f"{name_or_file or 'default'}.json"


def read_calibration(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no cache calibration at {path}: run `anytalker calibrate-cache MODEL` first "
                                f"(magcache and teacache need the model's own ratios)")
    data = json.loads(path.read_text())
    if "mag_ratios" not in data or "teacache" not in data:
        raise ValueError(f"{path} is not a cache calibration (written by `anytalker calibrate-cache`)")
    return data


def cache_setup(speed, model_folder: str | os.PathLike | None) -> CacheSetup | None:
    """The CacheSetup of SpeedSettings `speed` (None without a cache); reads the calibration file."""
    if speed is None or speed.cache is None:
        return None
    kind = speed.cache
    calibration = file = None
    if kind in NEEDS_CALIBRATION:
        path = calibration_path(model_folder, speed.cache_calibration)
        calibration, file = read_calibration(path), str(path)
    threshold = speed.cache_threshold if speed.cache_threshold is not None else DEFAULT_THRESHOLDS.get(kind)
    warmup = speed.cache_warmup if speed.cache_warmup is not None else DEFAULT_WARMUP.get(kind, 0)
    return CacheSetup(kind, threshold, speed.cache_interval or 3, warmup,
                      tuple(speed.cache_patterns) if speed.cache_patterns else None, calibration, file)


def apply_cache(transformer, setup: CacheSetup | None, steps: int) -> None:
    """Enables `setup` on `transformer` for `steps` denoising steps (replacing any cache it had)."""
    remove_cache(transformer)
    if setup is None:
        return
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if setup.kind == "first-block":
        transformer.enable_cache(FirstBlockCacheConfig(threshold=setup.threshold))
    elif setup.kind == "magcache":
        ratios = setup.calibration["mag_ratios"]
        transformer.enable_cache(MagCacheConfig(
            threshold=setup.threshold, max_skip_steps=3, retention_ratio=min(setup.warmup / steps, 1.0),
            num_inference_steps=steps, mag_ratios=torch.tensor(ratios, dtype=torch.float32)))
    elif setup.kind == "taylorseer":
        patterns = setup.patterns
        transformer.enable_cache(TaylorSeerCacheConfig(
            cache_interval=setup.interval, disable_cache_before_step=setup.warmup, max_order=1,
            taylor_factors_dtype=torch.float32,
            skip_predict_identifiers=None if patterns else list(TAYLORSEER_BLOCKS),
            cache_identifiers=list(patterns or TAYLORSEER_OUTPUT)))
    elif setup.kind == "teacache":
        apply_teacache(transformer, setup.threshold, setup.calibration["teacache"]["coefficients"], setup.warmup)
    else:
        raise ValueError(f"unknown cache {setup.kind!r}")
    transformer._anytalker_cache = (setup, steps)


def ensure_cache(transformer, setup: CacheSetup | None, steps: int) -> None:
    """`apply_cache` unless `setup` is already applied for `steps` (MagCache depends on the step count)."""
    if getattr(transformer, "_anytalker_cache", None) != (setup, steps) and setup is not None:
        apply_cache(transformer, setup, steps)


def remove_cache(transformer) -> None:
    from diffusers.hooks import HookRegistry

    if getattr(transformer, "_cache_config", None) is not None:
        transformer.disable_cache()
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in (_TEACACHE_HEAD, _TEACACHE_BLOCK):
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()
    transformer._anytalker_cache = None


# ---------------------------------------------------------------------------------------------
# TeaCache-style: skip decided from block 0's timestep-modulated input
# ---------------------------------------------------------------------------------------------

def modulated_input(block, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """Block 0's input to self-attention: norm1(x) * (1 + scale) + shift (AdaLN of the timestep)."""
    shift, scale = (block.scale_shift_table + temb.float()).chunk(6, dim=1)[:2]
    return block.norm1(hidden_states.float()) * (1 + scale) + shift


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    return float((current - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12))


def rescale(coefficients, value: float) -> float:
    """The fitted polynomial (highest power first, numpy's order) at `value`, never negative."""
    result = 0.0
    for c in coefficients:
        result = result * value + c
    return max(result, 0.0)


def apply_teacache(transformer, threshold: float, coefficients, warmup: int) -> None:
    from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

    class State(BaseState):
        def __init__(self):
            self.reset()

        def reset(self):
            self.previous_modulated = None
            self.residual = None
            self.head_input = None
            self.accumulated = 0.0
            self.should_compute = True

    class Head(ModelHook):
        _is_stateful = True

        def __init__(self, state_manager):
            super().__init__()
            self.state_manager = state_manager

        @torch.compiler.disable
        def new_forward(self, module, hidden_states, encoder_hidden_states, image_hidden_states, temb, *args,
                        **kwargs):
            state = self.state_manager.get_state()
            context = self.state_manager.context
            modulated = modulated_input(module, hidden_states, temb)
            step, steps = context.step_index, context.num_inference_steps
            compute = (state.previous_modulated is None or state.residual is None or step is None
                       or step < warmup or (steps is not None and step >= steps - 1))
            if not compute:
                state.accumulated += rescale(coefficients, relative_l1(modulated, state.previous_modulated))
                compute = state.accumulated >= threshold
            if compute:
                state.accumulated = 0.0
            state.previous_modulated = modulated
            state.should_compute = compute
            if not compute:
                return hidden_states + state.residual.to(hidden_states.dtype)
            state.head_input = hidden_states
            return self.fn_ref.original_forward(hidden_states, encoder_hidden_states, image_hidden_states, temb,
                                                *args, **kwargs)

        def reset_state(self, module):
            self.state_manager.reset()
            return module

    class Block(ModelHook):
        def __init__(self, state_manager, is_tail):
            super().__init__()
            self.state_manager, self.is_tail = state_manager, is_tail

        @torch.compiler.disable
        def new_forward(self, module, hidden_states, *args, **kwargs):
            state = self.state_manager.get_state()
            if not state.should_compute:
                return hidden_states
            output = self.fn_ref.original_forward(hidden_states, *args, **kwargs)
            if self.is_tail:
                state.residual = (output - state.head_input).detach()
            return output

    manager = StateManager(State)
    blocks = list(transformer.blocks)
    HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(Head(manager), _TEACACHE_HEAD)
    if len(blocks) == 1:  # the head is also the tail: keep its residual
        HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(Block(manager, True), _TEACACHE_BLOCK)
    for index, block in enumerate(blocks[1:], start=1):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(Block(manager, index == len(blocks) - 1),
                                                                        _TEACACHE_BLOCK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


# ---------------------------------------------------------------------------------------------
# Counting block evaluations
# ---------------------------------------------------------------------------------------------

class BlockCounter:
    """Counts transformer calls and block evaluations while active (`with BlockCounter(t) as c:`).

    A block counts as evaluated when its feed-forward's output layer ran: a cache that skips the
    block (or predicts its feed-forward) never reaches it."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.calls = self.evaluated = 0
        self._handles = []

    def __enter__(self):
        def count_block(*_):
            self.evaluated += 1

        def count_call(*_):
            self.calls += 1

        self._handles = [block.ffn.net[-1].register_forward_pre_hook(count_block) for block in self.transformer.blocks]
        self._handles.append(self.transformer.register_forward_pre_hook(count_call))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def possible(self) -> int:
        return self.calls * len(self.transformer.blocks)

    @property
    def skipped_fraction(self) -> float:
        return 1.0 - self.evaluated / self.possible if self.possible else 0.0

    def summary(self) -> dict:
        return {"transformer_calls": self.calls, "block_evaluations": self.evaluated,
                "block_evaluations_possible": self.possible, "skipped_fraction": round(self.skipped_fraction, 4)}
