"""The official Wan2.1 VAE (`Wan2.1_VAE.pth`) loaded into diffusers' `AutoencoderKLWan`.

diffusers' model computes what the release's `WanVAE_` computes, layer for layer, including the
chunked causal encode (frame 0 alone, then chunks of 4 frames) and the frame-by-frame decode with
the `'Rep'` cache rule of the temporal upsamplers (checked against the golden vectors in
tests/test_vae.py, max abs diff ~1e-6). So no subclass is needed; this module only
- renames the release's keys (reusing diffusers' own converter, without touching tensor data),
- loads the file into a meta-device model in place (no fp32 materialisation, no second copy),
- applies the latent normalisation exactly where the release's `WanVAE` wrapper applies it.

Do not enable diffusers' tiling (`vae.enable_tiling()`) when release parity matters: tiles are
blended, which the release never does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from anytalker.utils.checkpoints import load_state_dict_into_meta_model, open_state_dict

__all__ = [
    "WAN21_VAE_CONFIG",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "diffusers_vae_config",
    "official_to_diffusers_keys",
    "build_empty_vae",
    "load_wan_vae",
    "normalize_latents",
    "denormalize_latents",
    "encode_video",
    "decode_latents",
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


def diffusers_vae_config(config: Mapping | None = None) -> dict:
    """`AutoencoderKLWan` constructor kwargs for an official `WanVAE_` constructor config.

    `config` holds the official argument names (a `class_name` entry, as in exported JSON configs,
    is ignored); missing entries take the Wan2.1 values.
    """
    official = dict(WAN21_VAE_CONFIG)
    if config is not None:
        config = {key: value for key, value in config.items() if key != "class_name"}
        unknown = sorted(set(config) - set(official))
        if unknown:
            raise ValueError(f"unknown WanVAE_ config keys {unknown}; expected a subset of {sorted(official)}")
        official.update(config)
    # diffusers' decoder has no attention outside the middle block, and its key converter
    # hard-codes the decoder layout of 2 residual blocks per level: reject what neither can hold.
    if list(official["attn_scales"]):
        raise ValueError("attn_scales must be empty: diffusers' AutoencoderKLWan decoder has no attention blocks there")
    if official["num_res_blocks"] != 2:
        raise ValueError("num_res_blocks must be 2: the official->diffusers key mapping assumes the Wan2.1 layout")
    if len(official["dim_mult"]) != 4 or len(official["temperal_downsample"]) != 3:
        raise ValueError("dim_mult needs 4 levels and temperal_downsample 3 flags (the Wan2.1 layout)")
    z_dim = official["z_dim"]
    if z_dim != len(WAN21_LATENTS_MEAN):
        raise ValueError(f"z_dim {z_dim}: the release's latent statistics exist for z_dim 16 only")
    return {
        "base_dim": official["dim"],
        "z_dim": z_dim,
        "dim_mult": list(official["dim_mult"]),
        "num_res_blocks": official["num_res_blocks"],
        "attn_scales": list(official["attn_scales"]),
        "temperal_downsample": list(official["temperal_downsample"]),
        "dropout": official["dropout"],
        # Stored in the config so a saved diffusers folder carries the release's statistics.
        "latents_mean": list(WAN21_LATENTS_MEAN),
        "latents_std": list(WAN21_LATENTS_STD),
    }


def official_to_diffusers_keys(keys) -> dict[str, str]:
    """{official key: diffusers key}, from diffusers' own converter.

    The converter only re-keys a dict (it never copies tensor data), but it reads every value;
    feeding it {key: key} gets the mapping without reading a single tensor from the file. Keys it
    does not know come back unchanged and are then reported as unexpected by the strict loader.
    """
    converted = convert_wan_vae_to_diffusers({key: key for key in keys})
    return {old: new for new, old in converted.items()}


def build_empty_vae(config: Mapping | None = None) -> AutoencoderKLWan:
    """`AutoencoderKLWan` with every parameter on the meta device (allocates nothing)."""
    with init_empty_weights():
        return AutoencoderKLWan(**diffusers_vae_config(config))


def load_wan_vae(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, config: Mapping | None = None
) -> AutoencoderKLWan:
    """Loads a release VAE state dict (`Wan2.1_VAE.pth`, or a `.safetensors` with official keys).

    Strict: every file key must land on a parameter of the same shape and every parameter must be
    covered, else `CheckpointError` names the file and the offending keys. Returns an eval-mode,
    frozen model in `dtype` (the release runs the VAE in float32).
    """
    state = open_state_dict(path, what="Wan VAE checkpoint")
    vae = build_empty_vae(config)
    rename = official_to_diffusers_keys(state.keys())
    load_state_dict_into_meta_model(
        vae, state, rename=lambda key: rename.get(key, key), dtype=dtype, source=f"Wan VAE checkpoint {path}"
    )
    return vae.eval().requires_grad_(False)


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
