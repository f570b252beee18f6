"""LoRA files on AnyTalkerTransformer, through peft / diffusers' adapter machinery (PeftAdapterMixin).

Three key layouts are read (see diffusers' `loaders/lora_conversion_utils.py` for the first two):
- Wan-original: the release's module names (`blocks.N.self_attn.q`, `blocks.N.cross_attn.k_img`,
  `blocks.N.ffn.0`, `head.head`, ...), often prefixed `diffusion_model.`, with
  `lora_down`/`lora_up` or `lora_A`/`lora_B` pairs, optional `.alpha` scalars and `.diff_b` biases;
- musubi-tuner: `lora_unet_blocks_N_self_attn_q.lora_down.weight` (+ `.alpha`);
- diffusers: our own module names (`blocks.N.attn1.to_q.lora_A.weight`, optionally `transformer.`).
AnyTalker's own modules are targets too, under the release's names or ours: `cross_attn.k_face` /
`v_face` / `k_audio` / `v_audio` (1.3B AFCA), `audio_cross_attn.*` (14B), the audio projector
(`audio_emb.proj1` ...) and the face embedder (`audio_ref_emb.proj.*`).

Alphas are folded into the down matrices (scale alpha / rank), so every adapter runs at scale 1 times
the user's scale. `.diff` full-weight deltas and norm keys are not applied and are reported.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "unet.")
_SUFFIXES = ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_A.default.weight", "down"),
             (".lora_B.default.weight", "up"), (".lora_A.weight", "down"), (".lora_B.weight", "up"),
             (".lora_B.bias", "bias"), (".diff_b", "bias"), (".alpha", "alpha"))
LAYOUTS = ("wan", "musubi", "diffusers")


class LoraError(ValueError):
    """A LoRA file that cannot be applied (nothing matched, shapes that disagree, unreadable)."""


@dataclass
class LoraReport:
    """What one LoRA file did: its layout, the modules it adapts and the keys it left unused."""

    path: str
    adapter: str
    scale: float
    layout: str
    modules: int
    keys_matched: int
    keys_total: int
    unmatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"LoRA {os.path.basename(self.path)} ({self.layout} layout, scale {self.scale:g}): "
                f"{self.keys_matched} of {self.keys_total} keys matched, {self.modules} modules adapted")
        if self.unmatched:
            shown = ", ".join(self.unmatched[:3]) + (" ..." if len(self.unmatched) > 3 else "")
            text += f"; unused: {shown}"
        return text


def linear_module_names(transformer) -> dict[str, nn.Linear]:
    """{our module name: nn.Linear} of every linear layer (peft's `.base_layer` wrapper looked through)."""
    names = {}
    for name, module in transformer.named_modules():
        if isinstance(module, nn.Linear):
            names[name.removesuffix(".base_layer")] = module
    return names


def module_aliases(transformer) -> dict[str, str]:
    """{alias: our module name}: our names, the release's names, and both with musubi's underscores."""
    from ..models.official_checkpoint import diffusers_key_to_official

    variant = transformer.config.audio_attention
    aliases = {}
    for name in linear_module_names(transformer):
        aliases[name] = name
        aliases[name.replace(".", "_")] = name
        try:
            release = diffusers_key_to_official(f"{name}.weight", variant).removesuffix(".weight")
        except KeyError:
            continue
        aliases.setdefault(release, name)
        aliases.setdefault(release.replace(".", "_"), name)
    return aliases


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, kind in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    return None


def _strip(module: str) -> tuple[str, bool]:
    """(module path without file prefixes, whether it was musubi-style `lora_unet_...`)."""
    if module.startswith("lora_unet_"):
        return module[len("lora_unet_"):], True
    for prefix in _PREFIXES:
        if module.startswith(prefix):
            return module[len(prefix):], False
    return module, False


def convert_lora_state_dict(state_dict: Mapping[str, torch.Tensor], transformer) -> tuple[dict, dict]:
    """A LoRA file's tensors -> (peft state dict under our module names with alphas folded in,
    {"layout", "modules", "keys_matched", "keys_total", "unmatched"})."""
    aliases = module_aliases(transformer)
    linears = linear_module_names(transformer)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    used_keys: dict[str, list[str]] = {}
    unmatched, votes = [], {layout: 0 for layout in LAYOUTS}
    for key in state_dict:
        split = _split_key(key)
        if split is None:
            unmatched.append(key)
            continue
        module, musubi = _strip(split[0])
        ours = aliases.get(module)
        if ours is None:
            unmatched.append(key)
            continue
        votes["musubi" if musubi else ("diffusers" if module == ours else "wan")] += 1
        parts.setdefault(ours, {})[split[1]] = state_dict[key]
        used_keys.setdefault(ours, []).append(key)

    converted, any_bias = {}, any("bias" in p for p in parts.values())
    for ours, tensors in sorted(parts.items()):
        if "down" not in tensors or "up" not in tensors:
            unmatched.extend(used_keys[ours])  # half a pair (or a bias / alpha alone) cannot be applied
            continue
        down, up = tensors["down"].float(), tensors["up"].float()
        linear = linears[ours]
        rank = down.shape[0]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != rank or down.shape[1] != linear.in_features \
                or up.shape[0] != linear.out_features:
            raise LoraError(f"LoRA for {ours}: down {list(down.shape)} / up {list(up.shape)} do not fit the layer "
                            f"({linear.in_features} -> {linear.out_features}); is it for another model size?")
        if "alpha" in tensors:
            down = down * (float(tensors["alpha"]) / rank)
        converted[f"transformer.{ours}.lora_A.weight"] = down
        converted[f"transformer.{ours}.lora_B.weight"] = up
        if any_bias:
            bias = tensors.get("bias")
            converted[f"transformer.{ours}.lora_B.bias"] = (torch.zeros(up.shape[0]) if bias is None
                                                            else bias.float())
    modules = len(converted) // (3 if any_bias else 2)
    matched = sum(len(keys) for ours, keys in used_keys.items() if f"transformer.{ours}.lora_A.weight" in converted)
    layout = max(votes, key=votes.get) if any(votes.values()) else "unknown"
    return converted, {"layout": layout, "modules": modules, "keys_matched": matched, "keys_total": len(state_dict),
                       "unmatched": unmatched}


def read_lora_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` (or torch `.pt` / `.pth` / `.bin`) LoRA file."""
    path = str(path)
    if not os.path.isfile(path):
        raise LoraError(f"LoRA file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as problem:  # noqa: BLE001 - any reader error becomes one clear message
        raise LoraError(f"cannot read LoRA file {path}: {problem}") from None
    if not isinstance(loaded, Mapping):
        raise LoraError(f"LoRA file {path} holds no state dict")
    return dict(loaded)


def _adapter_name(transformer, index: int) -> str:
    existing = set(getattr(transformer, "peft_config", {}) or {})
    name = f"lora{index}"
    while name in existing:
        index += 1
        name = f"lora{index}"
    return name


def load_loras(transformer, loras: Sequence[tuple[str | os.PathLike | Mapping, float]], fuse: bool = True,
               log=None) -> list[LoraReport]:
    """Adds every (file or state dict, scale) as a peft adapter of `transformer`, activates them at their
    scales and (fuse) merges them into the weights. Raises LoraError for a file none of whose keys
    match a module. `log` (e.g. print) receives one summary line per file."""
    from diffusers.utils import logging

    reports, names, scales = [], [], []
    for index, (source, scale) in enumerate(loras):
        state_dict = dict(source) if isinstance(source, Mapping) else read_lora_file(source)
        path = "(state dict)" if isinstance(source, Mapping) else str(source)
        converted, info = convert_lora_state_dict(state_dict, transformer)
        if not converted:
            first = ", ".join(list(state_dict)[:3])
            raise LoraError(f"no key of LoRA {path} matches a module of this transformer (layouts read: "
                            f"{', '.join(LAYOUTS)}; its first keys: {first or 'none'})")
        name = _adapter_name(transformer, index)
        level = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            with warnings.catch_warnings():  # peft: "Already found a `peft_config`" for a second adapter
                warnings.simplefilter("ignore", UserWarning)
                transformer.load_lora_adapter(converted, prefix="transformer", adapter_name=name)
        finally:
            logging.set_verbosity(level)
        reports.append(LoraReport(path, name, float(scale), **info))
        names.append(name)
        scales.append(float(scale))
        if log:
            log(reports[-1].summary())
    if names:
        transformer.set_adapters(names, weights=scales)
        if fuse:
            fuse_loras(transformer, names)
    return reports


def fuse_loras(transformer, adapter_names: Sequence[str] | None = None) -> None:
    """Merges the active adapters into the base weights at their scales (no extra work per call)."""
    transformer.fuse_lora(lora_scale=1.0, adapter_names=list(adapter_names) if adapter_names else None)


def unfuse_loras(transformer) -> None:
    """Takes merged adapters out of the base weights again (they keep running unmerged)."""
    transformer.unfuse_lora()


def bake_loras(transformer) -> None:
    """Fused adapters made permanent: peft's wrappers replaced by the plain layers holding the merged
    weights (before quantization, which needs plain layers; unfusing is no longer possible)."""
    if not getattr(transformer, "peft_config", None):
        return
    transformer.unload_lora()


def lora_modules(transformer) -> list[str]:
    """Names of the modules that carry a LoRA adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, module in transformer.named_modules() if isinstance(module, BaseTunerLayer)]

