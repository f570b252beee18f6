"""The official Wan VAE (`WanVAE_`, e.g. `Wan2.1_VAE.pth`) loaded into diffusers' `AutoencoderKLWan`.

diffusers' model computes what the release's `WanVAE_` computes, layer for layer, including the
chunked causal encode (frame 0 alone, then chunks of 4 frames) and the frame-by-frame decode with
the `'Rep'` cache rule of the temporal upsamplers (checked against the golden vectors in
tests/test_vae.py, max abs diff ~1e-6). So no subclass is needed; this module only
- renames the release's keys, without touching tensor data. The key map is derived from the
  `WanVAE_` constructor config (levels, residual blocks per level, shortcuts where a block changes
  width, temporal or spatial resamplers), so any layout `AutoencoderKLWan` can hold loads, not
  only Wan2.1's. Target names are diffusers' own module names, with the per-parameter renames of
  diffusers' `convert_wan_vae_to_diffusers` (`residual.0.gamma` -> `norm1.gamma`, `head.2` ->
  `conv_out`, ...). For the Wan2.1 layout the map is exactly that converter's (tested); the
  converter itself is not called because it hard-codes Wan2.1's decoder indices (`upsamples.0-2,
  4-6, 8-10, 12-14`, the shortcut at `upsamples.4`) and would misplace every other layout;
- exports a diffusers model back to official keys (`diffusers_to_official_state_dict`, the exact
  inverse of the load map, in the release's state-dict order);
- loads the file into a meta-device model in place (no fp32 materialisation, no second copy);
- applies the latent normalisation exactly where the release's `WanVAE` wrapper applies it.

Configs diffusers cannot hold (attention blocks outside the middle block, more than 4 levels, a
residual layout diffusers' Wan VAE lacks) raise a ValueError naming the field.

Do not enable diffusers' tiling (`vae.enable_tiling()`) when release parity matters: tiles are
blended, which the release never does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan

from anytalker.utils.checkpoints import (
    CheckpointError,
    fit_problems,
    load_state_dict_into_meta_model,
    open_state_dict,
    preview_keys,
)

__all__ = [
    "WAN21_VAE_CONFIG",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "official_vae_config",
    "official_config_of",
    "diffusers_vae_config",
    "official_key_map",
    "official_to_diffusers_keys",
    "diffusers_to_official_state_dict",
    "build_empty_vae",
    "load_wan_vae",
    "normalize_latents",
    "denormalize_latents",
    "encode_video",
    "decode_latents",
    "decode_unclamped",
]

# Constructor arguments of the release's `WanVAE_` for Wan2.1_VAE.pth.
WAN21_VAE_CONFIG = {
    "dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}

# The 16 per-channel latent statistics hard-coded in the release's `WanVAE` wrapper.
WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip

# The wrapper's latent statistics; a config may carry them next to the constructor arguments
# (needed for a z_dim other than 16, for which the release defines none).
_STATS_KEYS = ("latents_mean", "latents_std")
# diffusers' WanDecoder3d halves the input width of every level after the first (the previous
# level's upsampler halves the channels); the release's decoder does so for levels 1-3, as far as
# its layout is known here (Wan2.1's 4 levels, checked by the manifest and golden tests). Beyond 4
# levels the two are not known to agree, so such configs are refused rather than guessed.
_MAX_LEVELS = 4


def _split_config(config: Mapping | None) -> tuple[dict, dict]:
    """(official constructor args with Wan2.1 defaults filled in, latent stats) of a config."""
    official = dict(WAN21_VAE_CONFIG)
    stats = {}
    if config is not None:
        config = {key: value for key, value in config.items() if key != "class_name"}
        stats = {key: list(config.pop(key)) for key in _STATS_KEYS if key in config}
        unknown = sorted(set(config) - set(official))
        if unknown:
            raise ValueError(
                f"unknown WanVAE_ config keys {unknown}; expected a subset of {sorted(official)} "
                f"(plus the wrapper's {list(_STATS_KEYS)})"
            )
        official.update(config)
    official["dim_mult"] = list(official["dim_mult"])
    official["attn_scales"] = list(official["attn_scales"])
    official["temperal_downsample"] = [bool(flag) for flag in official["temperal_downsample"]]
    return official, stats


def _positive_int(official: dict, key: str, minimum: int = 1) -> int:
    value = official[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _attention_levels(official: dict) -> tuple[list[int], list[int]]:
    """Levels of the encoder and of the decoder where `WanVAE_` puts attention blocks.

    Encoder level i runs at scale 1/2^i, decoder level i at 2^i / 2^(levels-2); a block follows
    every residual block of a level whose scale is in `attn_scales` (compared exactly, as the
    release does; these scales are powers of two, so exact in floating point).
    """
    levels = len(official["dim_mult"])
    scales = official["attn_scales"]
    encoder = [i for i in range(levels) if 1.0 / 2.0**i in scales]
    decoder = [i for i in range(levels) if 2.0**i / 2.0 ** (levels - 2) in scales]
    return encoder, decoder


def official_vae_config(config: Mapping | None = None) -> dict:
    """The complete, validated `WanVAE_` constructor config (Wan2.1 values for missing entries).

    Takes the official argument names (plus an ignored `class_name` and the optional
    `latents_mean` / `latents_std`, which are dropped here). Raises ValueError, naming the field,
    for a layout `AutoencoderKLWan` cannot hold.
    """
    official, _ = _split_config(config)
    _positive_int(official, "dim")
    _positive_int(official, "z_dim")
    _positive_int(official, "num_res_blocks")
    dim_mult = official["dim_mult"]
    if not dim_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in dim_mult):
        raise ValueError(f"dim_mult must be a non-empty list of positive integers, got {dim_mult!r}")
    if len(dim_mult) > _MAX_LEVELS:
        raise ValueError(
            f"dim_mult has {len(dim_mult)} levels; at most {_MAX_LEVELS} are supported: beyond that diffusers' "
            "WanDecoder3d is not known to give every level the release decoder's input width"
        )
    if len(official["temperal_downsample"]) < len(dim_mult) - 1:
        raise ValueError(
            f"temperal_downsample needs a flag for each of the {len(dim_mult) - 1} downsampling levels of "
            f"dim_mult {dim_mult}, got {official['temperal_downsample']}"
        )
    encoder, decoder = _attention_levels(official)
    if encoder or decoder:
        where = ", ".join([f"encoder level {i}" for i in encoder] + [f"decoder level {i}" for i in decoder])
        raise ValueError(
            f"attn_scales {official['attn_scales']} put attention blocks outside the middle block ({where}): "
            "diffusers' AutoencoderKLWan decoder has none there, and its chunked encoder cannot run them"
        )
    return official


def official_config_of(vae: AutoencoderKLWan | Mapping) -> dict:
    """The `WanVAE_` constructor config of an `AutoencoderKLWan` (or of its config): the inverse of
    `diffusers_vae_config`, less the latent statistics. ValueError for settings the release lacks."""
    config = vae.config if isinstance(vae, torch.nn.Module) else vae
    fixed = {"decoder_base_dim": (None, config["base_dim"]), "is_residual": (False,), "in_channels": (3,),
             "out_channels": (3,), "patch_size": (None,)}
    for key, allowed in fixed.items():
        if key in config and config[key] not in allowed:
            raise ValueError(f"AutoencoderKLWan {key}={config[key]!r} has no WanVAE_ (Wan2.1 family) equivalent")
    return official_vae_config({
        "dim": config["base_dim"],
        "z_dim": config.get("z_dim", WAN21_VAE_CONFIG["z_dim"]),
        "dim_mult": list(config.get("dim_mult", WAN21_VAE_CONFIG["dim_mult"])),
        "num_res_blocks": config.get("num_res_blocks", WAN21_VAE_CONFIG["num_res_blocks"]),
        "attn_scales": list(config.get("attn_scales", WAN21_VAE_CONFIG["attn_scales"])),
        "temperal_downsample": list(config.get("temperal_downsample", WAN21_VAE_CONFIG["temperal_downsample"])),
        "dropout": config.get("dropout", WAN21_VAE_CONFIG["dropout"]),
    })


def diffusers_vae_config(config: Mapping | None = None) -> dict:
    """`AutoencoderKLWan` constructor kwargs for an official `WanVAE_` constructor config.

    `config` holds the official argument names (a `class_name` entry, as in exported JSON configs,
    is ignored); missing entries take the Wan2.1 values. It may also carry `latents_mean` and
    `latents_std`, the wrapper's per-channel statistics: they default to the release's for z_dim 16
    and are required for any other z_dim.
    """
    official = official_vae_config(config)
    _, stats = _split_config(config)
    z_dim = official["z_dim"]
    if not stats and z_dim == len(WAN21_LATENTS_MEAN):
        stats = {"latents_mean": list(WAN21_LATENTS_MEAN), "latents_std": list(WAN21_LATENTS_STD)}
    for key in _STATS_KEYS:
        if key not in stats:
            raise ValueError(
                f"z_dim {z_dim}: the release's latent statistics exist for z_dim 16 only; give {key} "
                f"({z_dim} values) with the config"
            )
        if len(stats[key]) != z_dim:
            raise ValueError(f"{key} has {len(stats[key])} values, z_dim is {z_dim}")
    levels = len(official["dim_mult"])
    return {
        "base_dim": official["dim"],
        "z_dim": z_dim,
        "dim_mult": list(official["dim_mult"]),
        "num_res_blocks": official["num_res_blocks"],
        "attn_scales": list(official["attn_scales"]),
        "temperal_downsample": list(official["temperal_downsample"]),
        "dropout": official["dropout"],
        # Stored in the config so a saved diffusers folder carries the release's statistics.
        "latents_mean": [float(v) for v in stats["latents_mean"]],
        "latents_std": [float(v) for v in stats["latents_std"]],
        # One spatial halving per level but the last, one temporal halving per flagged level.
        "scale_factor_spatial": 2 ** (levels - 1),
        "scale_factor_temporal": 2 ** sum(official["temperal_downsample"][: levels - 1]),
    }


# Parameter names inside each kind of module: (official suffix, diffusers suffix), in the
# release's state-dict order. The renames are those of diffusers' convert_wan_vae_to_diffusers.
_CONV = [("weight", "weight"), ("bias", "bias")]
_RESIDUAL = [("residual.0.gamma", "norm1.gamma"), ("residual.2.weight", "conv1.weight"),
             ("residual.2.bias", "conv1.bias"), ("residual.3.gamma", "norm2.gamma"),
             ("residual.6.weight", "conv2.weight"), ("residual.6.bias", "conv2.bias")]
_SHORTCUT = [("shortcut.weight", "conv_shortcut.weight"), ("shortcut.bias", "conv_shortcut.bias")]
_ATTENTION = [("norm.gamma", "norm.gamma"), ("to_qkv.weight", "to_qkv.weight"), ("to_qkv.bias", "to_qkv.bias"),
              ("proj.weight", "proj.weight"), ("proj.bias", "proj.bias")]
_RESAMPLE = [("resample.1.weight", "resample.1.weight"), ("resample.1.bias", "resample.1.bias")]
_TIME_CONV = [("time_conv.weight", "time_conv.weight"), ("time_conv.bias", "time_conv.bias")]
_HEAD = [("head.0.gamma", "norm_out.gamma"), ("head.2.weight", "conv_out.weight"), ("head.2.bias", "conv_out.bias")]


def official_key_map(config: Mapping | None = None) -> dict[str, str]:
    """{official key: diffusers key} of every parameter of a `WanVAE_` config, in the release's
    state-dict order (encoder, conv1, conv2, decoder).

    Walks the release's layout: the encoder's flat `downsamples` list (`num_res_blocks` residual
    blocks per level, then a resampler on every level but the last) keeps its indices in diffusers'
    `down_blocks`; the decoder's flat `upsamples` list (`num_res_blocks + 1` residual blocks per
    level, then a resampler) is regrouped into `up_blocks.{level}.resnets.{j}` / `.upsamplers.0`.
    A residual block has a 1x1x1 shortcut exactly where its input and output widths differ.
    """
    official = official_vae_config(config)
    dim, dim_mult, blocks = official["dim"], official["dim_mult"], official["num_res_blocks"]
    levels = len(dim_mult)
    key_map: dict[str, str] = {}

    def add(source: str, target: str, names) -> None:
        for old, new in names:
            key_map[f"{source}.{old}"] = f"{target}.{new}"

    def residual(source: str, target: str, in_dim: int, out_dim: int) -> None:
        add(source, target, _RESIDUAL + (_SHORTCUT if in_dim != out_dim else []))

    def middle(part: str) -> None:
        add(f"{part}.middle.0", f"{part}.mid_block.resnets.0", _RESIDUAL)
        add(f"{part}.middle.1", f"{part}.mid_block.attentions.0", _ATTENTION)
        add(f"{part}.middle.2", f"{part}.mid_block.resnets.1", _RESIDUAL)

    # encoder
    add("encoder.conv1", "encoder.conv_in", _CONV)
    dims = [dim * m for m in [1, *dim_mult]]
    index = 0
    for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(blocks):
            residual(f"encoder.downsamples.{index}", f"encoder.down_blocks.{index}", in_dim, out_dim)
            in_dim, index = out_dim, index + 1
        if level != levels - 1:
            temporal = official["temperal_downsample"][level]
            add(f"encoder.downsamples.{index}", f"encoder.down_blocks.{index}",
                _RESAMPLE + (_TIME_CONV if temporal else []))
            index += 1
    middle("encoder")
    add("encoder", "encoder", _HEAD)
    # latent convolutions
    add("conv1", "quant_conv", _CONV)
    add("conv2", "post_quant_conv", _CONV)
    # decoder
    add("decoder.conv1", "decoder.conv_in", _CONV)
    middle("decoder")
    dims = [dim * m for m in [dim_mult[-1], *dim_mult[::-1]]]
    temperal_upsample = official["temperal_downsample"][::-1]
    index = 0
    for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        if level > 0:  # the previous level's upsampler halved the width
            in_dim //= 2
        for j in range(blocks + 1):
            residual(f"decoder.upsamples.{index}", f"decoder.up_blocks.{level}.resnets.{j}", in_dim, out_dim)
            in_dim, index = out_dim, index + 1
        if level != levels - 1:
            add(f"decoder.upsamples.{index}", f"decoder.up_blocks.{level}.upsamplers.0",
                _RESAMPLE + (_TIME_CONV if temperal_upsample[level] else []))
            index += 1
    add("decoder", "decoder", _HEAD)
    return key_map


def official_to_diffusers_keys(keys, config: Mapping | None = None) -> dict[str, str]:
    """{official key: diffusers key} for `keys`, from `official_key_map(config)`.

    Keys the config's layout does not have come back unchanged (the strict loader then reports
    them as unexpected).
    """
    key_map = official_key_map(config)
    return {key: key_map.get(key, key) for key in keys}


def diffusers_to_official_state_dict(
    vae: AutoencoderKLWan | Mapping[str, torch.Tensor], config: Mapping | None = None
) -> dict[str, torch.Tensor]:
    """The release-format state dict of a diffusers `AutoencoderKLWan` (or of its state dict).

    The exact inverse of the load map: the same tensors (not copies) under the release's names,
    in the release's state-dict order, so `torch.save(..., "Wan2.1_VAE.pth")` gives a file the
    official `WanVAE_` loads. `config` (official names) defaults to the model's own config; with a
    bare state dict it defaults to Wan2.1. Raises ValueError naming any parameter left over or
    missing.
    """
    if isinstance(vae, torch.nn.Module):
        state = vae.state_dict()
        config = official_config_of(vae) if config is None else config
    else:
        state = vae
    key_map = official_key_map(config)
    targets = set(key_map.values())
    missing = [new for new in key_map.values() if new not in state]
    unexpected = [key for key in state.keys() if key not in targets]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing parameters ({len(missing)}): {preview_keys(missing)}")
        if unexpected:
            problems.append(f"parameters without a release key ({len(unexpected)}): {preview_keys(unexpected)}")
        raise ValueError(f"state dict does not fit WanVAE_ {_describe(config)}: " + "; ".join(problems))
    return {old: state[new] for old, new in key_map.items()}


def _describe(config: Mapping | None) -> str:
    official = official_vae_config(config)
    return "config " + ", ".join(f"{key}={official[key]}" for key in ("dim", "z_dim", "dim_mult", "num_res_blocks",
                                                                      "temperal_downsample"))


def build_empty_vae(config: Mapping | None = None) -> AutoencoderKLWan:
    """`AutoencoderKLWan` with every parameter on the meta device (allocates nothing)."""
    with init_empty_weights():
        return AutoencoderKLWan(**diffusers_vae_config(config))


def load_wan_vae(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, config: Mapping | None = None
) -> AutoencoderKLWan:
    """Loads a release VAE state dict (`Wan2.1_VAE.pth`, or a `.safetensors` with official keys).

    `config` is the `WanVAE_` constructor config (official names; default Wan2.1). Strict: every
    file key must land on a parameter of the same shape and every parameter must be covered, else
    `CheckpointError` names the file, the config and the offending keys (missing ones by their
    release name, with the diffusers name in parentheses). Returns an eval-mode, frozen model in
    `dtype` (the release runs the VAE in float32).
    """
    state = open_state_dict(path, what="Wan VAE checkpoint")
    vae = build_empty_vae(config)
    key_map = official_key_map(config)
    source = f"Wan VAE checkpoint {path}"
    _check_keys(vae, state, key_map, f"{source} does not fit AutoencoderKLWan ({_describe(config)})")
    load_state_dict_into_meta_model(vae, state, rename=key_map.__getitem__, dtype=dtype, source=source)
    return vae.eval().requires_grad_(False)


def _check_keys(vae: AutoencoderKLWan, state: Mapping, key_map: dict[str, str], what: str) -> None:
    """Names, in release terms, the keys a file lacks or has beyond the config's layout.

    Only when keys are off are shapes read (to report mismatches in the same message); a file whose
    keys fit goes straight to the strict loader, which checks the shapes as it assigns.
    """
    missing = [key for key in key_map if key not in state]
    unexpected = [key for key in state.keys() if key not in key_map]
    if not missing and not unexpected:
        return
    shapes = {name: tuple(t.shape) for name, t in vae.state_dict().items()}
    mismatched = [f"{key}: file {tuple(state[key].shape)} vs model {shapes[key_map[key]]}"
                  for key in key_map if key in state and tuple(state[key].shape) != shapes[key_map[key]]]
    problems = fit_problems([f"{key} ({key_map[key]})" for key in missing], unexpected, mismatched)
    raise CheckpointError(f"{what}: " + "; ".join(problems))


def _latent_stats(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1/std) as float32 [1, C, 1, 1, 1], as the release wrapper builds them.

    The wrapper stores `scale = [mean, 1.0 / std]` as float32 tensors and multiplies / divides by
    the reciprocal; `x * (1/std)` is not bit-identical to `x / std`, so keep the reciprocal.
    """
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=like.device)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32, device=like.device)
    return mean.view(1, -1, 1, 1, 1), inv_std.view(1, -1, 1, 1, 1)


def normalize_latents(vae: AutoencoderKLWan, mu: torch.Tensor) -> torch.Tensor:
    """Raw encoder mean [B, C, T, h, w] -> the normalised latent the DiT sees (float32)."""
    mean, inv_std = _latent_stats(vae, mu)
    return (mu - mean) * inv_std


def denormalize_latents(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    """Normalised latent -> raw decoder input (float32): `z / (1/std) + mean`, as the release."""
    mean, inv_std = _latent_stats(vae, z)
    return z / inv_std + mean


@torch.no_grad()
def encode_video(vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    """Video in [-1, 1], [B, 3, 1+4k, H, W] -> normalised latent mean [B, 16, 1+k, H/8, W/8].

    Like the release: the posterior mode (log_var is discarded), then normalised in float32.
    """
    mu = vae.encode(video.to(vae.dtype)).latent_dist.mode()
    return normalize_latents(vae, mu)


@torch.no_grad()
def decode_latents(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    """Normalised latent [B, 16, T, h, w] -> video [B, 3, 1+4(T-1), 8h, 8w] clamped to [-1, 1]."""
    # diffusers' decode clamps to [-1, 1] itself, as the release wrapper does.
    return vae.decode(denormalize_latents(vae, z).to(vae.dtype)).sample


def decode_unclamped(vae: AutoencoderKLWan, x: torch.Tensor) -> torch.Tensor:
    """Raw (denormalised) latent [B, 16, T, h, w] -> video [B, 3, 1+4(T-1), 8h, 8w] without the
    final clamp to [-1, 1]: diffusers' frame-by-frame causal decode (`AutoencoderKLWan._decode`),
    one latent frame per call. Differentiable (VAE training: a clamp has no gradient where the
    output overshoots); for a normalised latent pass `denormalize_latents(vae, z)`."""
    vae.clear_cache()
    x = vae.post_quant_conv(x)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, dim=2)
