"""The release's CLIP image encoder (open-clip XLM-RoBERTa ViT-H/14 visual tower) as transformers' `CLIPVisionModel`.

The release's `VisionTransformer` (pre-norm blocks, class token, `pre_norm` before the blocks,
GELU(erf), LayerNorm eps 1e-5, bias-free patch conv, scale 1/sqrt(head_dim)) is the same network as
`CLIPVisionModel`; the only layout difference is the fused `to_qkv` projection, split here into
q/k/v (its output is ordered [q | k | v], each head-major). Checked against the golden vectors in
tests/test_image_encoder.py.

What is loaded from `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`:
- every `visual.*` key, including `visual.post_norm` (into `post_layernorm`, which
  `CLIPVisionModel` has anyway; it only feeds `pooler_output`, which the pipeline never uses);
- deliberately skipped, by exact prefix: `textual.*` (the XLM-RoBERTa text tower), `log_scale`
  (the contrastive temperature) and `visual.head` (the 1280->1024 projection, which
  `CLIPVisionModel` has no module for). Any other key that does not fit is an error.

The pipeline's features are the output of all blocks but the last ([B, 257, 1280] for ViT-H/14),
on images resized straight to 224x224 without antialiasing (see `preprocess_clip_image`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from transformers import CLIPVisionConfig, CLIPVisionModel

from anytalker.utils.checkpoints import load_state_dict_into_meta_model, open_state_dict

__all__ = [
    "CLIP_VIT_H_14_CONFIG",
    "CLIP_MEAN",
    "CLIP_STD",
    "SKIPPED_PREFIXES",
    "clip_vision_config",
    "official_to_clip_key",
    "VisualStateDict",
    "build_empty_clip_vision",
    "clip_vision_from_state_dict",
    "load_clip_vision",
    "preprocess_clip_image",
    "clip_penultimate_features",
    "encode_clip_image",
]

logger = logging.getLogger(__name__)

# Constructor arguments of the release's `VisionTransformer` for open-clip-xlm-roberta-large-vit-huge-14.
CLIP_VIT_H_14_CONFIG = {
    "image_size": 224,
    "patch_size": 14,
    "dim": 1280,
    "mlp_ratio": 4,
    "out_dim": 1024,
    "num_heads": 16,
    "num_layers": 32,
    "pool_type": "token",
    "pre_norm": True,
    "post_norm": False,
    "activation": "gelu",
    "norm_eps": 1e-5,
}
# The release's `T.Normalize` statistics (the OpenAI CLIP ones).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Keys of the full CLIP file that the image encoder deliberately does not load (see module doc).
SKIPPED_PREFIXES = ("textual.", "log_scale", "visual.head")
_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu"}  # erf GELU / x*sigmoid(1.702x), same in both


def clip_vision_config(config: Mapping | CLIPVisionConfig | None = None) -> CLIPVisionConfig:
    """`CLIPVisionConfig` for an official `VisionTransformer` config (official names, missing = ViT-H/14).

    Structure flags `CLIPVisionModel` cannot express (other pooling, no pre-norm, post-norm
    blocks) are rejected. `mean`/`std`/`class_name` entries of exported configs are ignored.
    """
    if isinstance(config, CLIPVisionConfig):
        return config
    official = dict(CLIP_VIT_H_14_CONFIG)
    if config is not None:
        config = {key: value for key, value in config.items() if key not in ("class_name", "mean", "std")}
        dropouts = {"dropout", "attn_dropout", "proj_dropout", "embedding_dropout"}  # inactive in eval
        unknown = sorted(set(config) - set(official) - dropouts)
        if unknown:
            raise ValueError(f"unknown VisionTransformer keys {unknown}; expected a subset of {sorted(official)}")
        official.update(config)
    if official["pool_type"] != "token" or not official["pre_norm"] or official["post_norm"]:
        raise ValueError(
            "CLIPVisionModel needs pool_type='token', pre_norm=True and post_norm=False; got "
            f"{official['pool_type']!r}, {official['pre_norm']}, {official['post_norm']}"
        )
    if official["activation"] not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {official['activation']!r}; expected one of {sorted(_ACTIVATIONS)}")
    return CLIPVisionConfig(
        hidden_size=official["dim"],
        intermediate_size=int(official["dim"] * official["mlp_ratio"]),
        num_attention_heads=official["num_heads"],
        num_hidden_layers=official["num_layers"],
        image_size=official["image_size"],
        patch_size=official["patch_size"],
        hidden_act=_ACTIVATIONS[official["activation"]],
        layer_norm_eps=official["norm_eps"],
        projection_dim=official["out_dim"],  # unused by CLIPVisionModel; kept for reference
    )


# Per-block renames: release `visual.transformer.N.<key>` -> transformers `encoder.layers.N.<value>`.
# `to_qkv` appears split, as the virtual keys `...to_qkv.{weight,bias}[q|k|v]` of `VisualStateDict`.
_BLOCK_KEYS = {
    "norm1": "layer_norm1",
    "attn.to_qkv.weight[q]": "self_attn.q_proj.weight",
    "attn.to_qkv.weight[k]": "self_attn.k_proj.weight",
    "attn.to_qkv.weight[v]": "self_attn.v_proj.weight",
    "attn.to_qkv.bias[q]": "self_attn.q_proj.bias",
    "attn.to_qkv.bias[k]": "self_attn.k_proj.bias",
    "attn.to_qkv.bias[v]": "self_attn.v_proj.bias",
    "attn.proj": "self_attn.out_proj",
    "norm2": "layer_norm2",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}
_TOP_KEYS = {
    "visual.cls_embedding": "embeddings.class_embedding",
    "visual.pos_embedding": "embeddings.position_embedding.weight",
    "visual.patch_embedding.weight": "embeddings.patch_embedding.weight",
    "visual.pre_norm.weight": "pre_layrnorm.weight",
    "visual.pre_norm.bias": "pre_layrnorm.bias",
    "visual.post_norm.weight": "post_layernorm.weight",
    "visual.post_norm.bias": "post_layernorm.bias",
}
_BLOCK_RE = re.compile(r"visual\.transformer\.(\d+)\.(.+)")


def official_to_clip_key(key: str) -> str:
    """transformers name of a (virtual) release visual key; unknown keys come back unchanged."""
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    match = _BLOCK_RE.fullmatch(key)
    if match:
        layer, rest = match.groups()
        for old, new in _BLOCK_KEYS.items():
            if rest == old or (rest.startswith(old + ".") and "[" not in old):
                return f"encoder.layers.{layer}.{new}{rest[len(old):]}"
    return key


def _reshape(name: str, tensor: torch.Tensor) -> torch.Tensor:
    # The release keeps the class token as [1, 1, dim] and the positions as [1, N, dim]. Only
    # leading 1s are dropped, so a wrong shape still reaches the loader's shape check.
    if name == "embeddings.class_embedding" and tensor.shape[:-1] == (1, 1):
        return tensor[0, 0]
    if name == "embeddings.position_embedding.weight" and tensor.dim() == 3 and tensor.shape[0] == 1:
        return tensor[0]
    return tensor


class VisualStateDict(Mapping):
    """Lazy view of a CLIP state dict as the visual tower's keys, with each fused `to_qkv` tensor
    presented as three virtual keys `...to_qkv.weight[q]`, `[k]`, `[v]` (views, no copy).

    Keys under `SKIPPED_PREFIXES` are left out (and counted in `skipped`); every other key is kept,
    so that a stray key still fails the strict load under its own name.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self._state = state_dict
        self._sources: dict[str, tuple[str, int | None]] = {}
        self.skipped: list[str] = []
        for key in state_dict.keys():
            if key.startswith(SKIPPED_PREFIXES):
                self.skipped.append(key)
            elif re.search(r"\.attn\.to_qkv\.(weight|bias)$", key):
                for index, part in enumerate("qkv"):
                    self._sources[f"{key}[{part}]"] = (key, index)
            else:
                self._sources[key] = (key, None)

    def __getitem__(self, key: str) -> torch.Tensor:
        source, part = self._sources[key]
        tensor = self._state[source]
        # tensor_split always yields 3 pieces, so a malformed fused tensor fails the shape check.
        return tensor if part is None else tensor.tensor_split(3, dim=0)[part]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


def build_empty_clip_vision(config: Mapping | CLIPVisionConfig | None = None) -> CLIPVisionModel:
    """A `CLIPVisionModel` whose parameters live on the meta device (no memory, no init)."""
    with init_empty_weights():
        return CLIPVisionModel(clip_vision_config(config))


def clip_vision_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = torch.float16,
    config: Mapping | CLIPVisionConfig | None = None,
    source: str = "CLIP checkpoint",
) -> CLIPVisionModel:
    """Builds the visual tower on the meta device and fills it strictly from a release state dict."""
    model = build_empty_clip_vision(config)
    view = VisualStateDict(state_dict)
    if view.skipped:
        logger.info("%s: not loading %d keys under %s", source, len(view.skipped), SKIPPED_PREFIXES)
    load_state_dict_into_meta_model(
        model, view, rename=official_to_clip_key, transform=_reshape, dtype=dtype, source=source
    )
    return model.eval().requires_grad_(False)


def load_clip_vision(
    path: str | os.PathLike,
    dtype: torch.dtype | None = torch.float16,
    config: Mapping | CLIPVisionConfig | None = None,
) -> CLIPVisionModel:
    """Loads the visual tower of `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` into `CLIPVisionModel`.

    The release runs CLIP in fp16 (the default); pass `dtype=torch.float32` for parity checks, or
    None to keep the file's dtype. Shapes are checked against `config` (ViT-H/14 by default).
    """
    state_dict = open_state_dict(path, what="CLIP checkpoint")
    return clip_vision_from_state_dict(state_dict, dtype=dtype, config=config, source=f"CLIP checkpoint {path}")


def preprocess_clip_image(
    images: torch.Tensor, size: int = 224, mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD
) -> torch.Tensor:
    """[B, 3, H, W] images in [-1, 1] -> normalised float32 pixel values [B, 3, size, size].

    As the release: bicubic straight to size x size (aspect ratio not kept), align_corners=False,
    no antialiasing; then x*0.5+0.5 *without* clamping (bicubic overshoot survives); then per-channel
    (x - mean) / std. Computed in float32; `encode_clip_image` casts to the model's dtype.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    x = x * 0.5 + 0.5
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_penultimate_features(model: CLIPVisionModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """Output of all blocks but the last (the release's `use_31_block=True`), in the model's dtype.

    Equal to `model(pixel_values, output_hidden_states=True).hidden_states[-2]`, but the last block
    (1/32 of the compute) is never run.
    """
    weight = model.embeddings.patch_embedding.weight
    hidden = model.embeddings(pixel_values.to(device=weight.device, dtype=weight.dtype))
    hidden = model.pre_layrnorm(hidden)
    for layer in model.encoder.layers[:-1]:
        hidden = layer(hidden, attention_mask=None)
    return hidden


def encode_clip_image(model: CLIPVisionModel, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] images in [-1, 1] (a whole reference image or face crops) -> [B, 257, 1280]."""
    return clip_penultimate_features(model, preprocess_clip_image(images, size=model.config.image_size))
