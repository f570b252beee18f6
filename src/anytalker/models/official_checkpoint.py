"""The released AnyTalker DiT files (`1_3B-single-v1.pth`, `14B-multi-v1.pth`, configs) as they are.

The release's `WanModel` config and state-dict names are translated to AnyTalkerTransformer's
(diffusers Wan naming); loading builds the model on the meta device and assigns the file's
(memory-mapped) tensors in place.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from accelerate import init_empty_weights

from ..utils.checkpoints import CheckpointError, Overlay, load_state_dict_into_meta_model, open_state_dict

# The release's DiT configs (`config_af2v_1_3B.json`, `config_af2v_14B.json`).
_COMMON = {"model_type": "a2v_af", "text_len": 512, "in_dim": 36, "freq_dim": 256, "out_dim": 16, "eps": 1e-6,
           "temporal_align": True, "audio_window": 5, "intermediate_dim": 512, "audio_output_dim": 768,
           "context_tokens": 32, "vae_scale": 4, "norm_input_visual": True, "norm_output_audio": True,
           "use_concat_attention": False}
RELEASE_DIT_CONFIGS = {
    "1.3B": {**_COMMON, "dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30,
             "legacy_audio_cross_attn": False},
    "14B": {**_COMMON, "dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40,
            "legacy_audio_cross_attn": True},
}

# Fixed in the release's code, so absent from its config files.
_RELEASE_CONSTANTS = {"patch_size": (1, 2, 2), "text_dim": 4096, "image_dim": 1280, "face_dim": 1280,
                      "audio_layers": 12, "audio_channels": 768}


def config_from_official(official: Mapping | str | os.PathLike) -> dict:
    """AnyTalkerTransformer config from a release config (`config_af2v_1_3B.json` style dict or path)."""
    if not isinstance(official, Mapping):
        path = Path(official)
        if not path.is_file():
            raise CheckpointError(f"DiT config not found: expected a JSON file at {path}")
        official = json.loads(path.read_text())
    if official.get("model_type", "a2v_af") != "a2v_af":
        raise CheckpointError(f"unsupported model_type {official.get('model_type')!r}: AnyTalker releases use 'a2v_af'")
    for flag in ("norm_input_visual", "norm_output_audio"):
        if not official.get(flag, True):
            raise CheckpointError(f"{flag}=False is used by no AnyTalker release and is not supported")
    dim, heads = official["dim"], official["num_heads"]
    return dict(
        _RELEASE_CONSTANTS,
        num_attention_heads=heads,
        attention_head_dim=dim // heads,
        in_channels=official.get("in_dim", 36),
        out_channels=official.get("out_dim", 16),
        text_len=official.get("text_len", 512),
        freq_dim=official.get("freq_dim", 256),
        ffn_dim=official["ffn_dim"],
        num_layers=official["num_layers"],
        eps=official.get("eps", 1e-6),
        audio_attention="separate" if official.get("legacy_audio_cross_attn", False) else "fused",
        audio_window=official.get("audio_window", 5),
        audio_hidden_dim=official.get("intermediate_dim", 512),
        audio_tokens_per_frame=official.get("context_tokens", 32),
        audio_token_dim=official.get("audio_output_dim", 768),
        temporal_stride=official.get("vae_scale", 4),
    )


_EMBEDDER = {"0": "norm1", "1": "ff.net.0.proj", "3": "ff.net.2", "4": "norm2"}
_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k",
              "k_img": "add_k_proj", "v_img": "add_v_proj", "norm_k_img": "norm_added_k",
              "k_face": "to_k_face", "v_face": "to_v_face", "norm_k_face": "norm_k_face",
              "k_audio": "to_k_audio", "v_audio": "to_v_audio", "norm_k_audio": "norm_k_audio"}
_AUDIO_ATTENTION = {"q_linear": "to_q", "kv_linear": "to_kv", "k_face": "to_k_face", "v_face": "to_v_face",
                    "proj": "to_out.0"}
_BLOCK = {"modulation": "scale_shift_table", "norm3": "norm2", "norm_x": "norm_audio",
          "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}
_TOP = {"text_embedding.0": "condition_embedder.text_embedder.linear_1",
        "text_embedding.2": "condition_embedder.text_embedder.linear_2",
        "time_embedding.0": "condition_embedder.time_embedder.linear_1",
        "time_embedding.2": "condition_embedder.time_embedder.linear_2",
        "time_projection.1": "condition_embedder.time_proj",
        "head.head": "proj_out", "patch_embedding": "patch_embedding"}

_PATTERNS = [
    (re.compile(r"blocks\.(\d+)\.(self_attn|cross_attn)\.(\w+)\.(weight|bias)$"),
     lambda m: f"blocks.{m[1]}.{'attn1' if m[2] == 'self_attn' else 'attn2'}.{_ATTENTION[m[3]]}.{m[4]}"),
    (re.compile(r"blocks\.(\d+)\.audio_cross_attn\.(\w+)\.(weight|bias)$"),
     lambda m: f"blocks.{m[1]}.audio_attn.{_AUDIO_ATTENTION[m[2]]}.{m[3]}"),
    (re.compile(r"blocks\.(\d+)\.(modulation|norm3|norm_x|ffn\.0|ffn\.2)(\.weight|\.bias|)$"),
     lambda m: f"blocks.{m[1]}.{_BLOCK[m[2]]}{m[3]}"),
    (re.compile(r"(img_emb|audio_ref_emb)\.proj\.(\d)\.(weight|bias)$"),
     lambda m: f"{'condition_embedder.image_embedder' if m[1] == 'img_emb' else 'face_embedder'}."
               f"{_EMBEDDER[m[2]]}.{m[3]}"),
    (re.compile(r"(?:audio_emb|audio_proj)\.(proj1|proj1_vf|proj2|proj3|norm)\.(weight|bias)$"),
     lambda m: f"audio_projector.{m[1]}.{m[2]}"),
    (re.compile(r"head\.modulation$"), lambda m: "scale_shift_table"),
    (re.compile(r"(text_embedding\.[02]|time_embedding\.[02]|time_projection\.1|head\.head|patch_embedding)"
                r"\.(weight|bias)$"),
     lambda m: f"{_TOP[m[1]]}.{m[2]}"),
]


def official_key_to_diffusers(key: str) -> str:
    """Release state-dict key -> AnyTalkerTransformer key (unknown keys are returned unchanged)."""
    for pattern, replace in _PATTERNS:
        match = pattern.match(key)
        if match:
            try:
                return replace(match)
            except KeyError:
                return key
    return key


def _inverse(table: dict) -> dict:
    return {value: key for key, value in table.items()}


_INVERSE_PATTERNS = [
    (re.compile(r"blocks\.(\d+)\.(attn1|attn2)\.(.+)\.(weight|bias)$"),
     lambda m, _: f"blocks.{m[1]}.{'self_attn' if m[2] == 'attn1' else 'cross_attn'}.{_inverse(_ATTENTION)[m[3]]}.{m[4]}"),
    (re.compile(r"blocks\.(\d+)\.audio_attn\.(.+)\.(weight|bias)$"),
     lambda m, _: f"blocks.{m[1]}.audio_cross_attn.{_inverse(_AUDIO_ATTENTION)[m[2]]}.{m[3]}"),
    (re.compile(r"blocks\.(\d+)\.(scale_shift_table|norm2|norm_audio|ffn\.net\.0\.proj|ffn\.net\.2)(\.weight|\.bias|)$"),
     lambda m, _: f"blocks.{m[1]}.{_inverse(_BLOCK)[m[2]]}{m[3]}"),
    (re.compile(r"(condition_embedder\.image_embedder|face_embedder)\.(.+)\.(weight|bias)$"),
     lambda m, _: f"{'img_emb' if m[1] != 'face_embedder' else 'audio_ref_emb'}.proj.{_inverse(_EMBEDDER)[m[2]]}.{m[3]}"),
    (re.compile(r"audio_projector\.(.+)$"),
     lambda m, variant: f"{'audio_emb' if variant == 'fused' else 'audio_proj'}.{m[1]}"),
    (re.compile(r"scale_shift_table$"), lambda m, _: "head.modulation"),
    (re.compile(r"(.+)\.(weight|bias)$"), lambda m, _: f"{_inverse(_TOP)[m[1]]}.{m[2]}"),
]


def diffusers_key_to_official(key: str, audio_attention: str = "fused") -> str:
    """AnyTalkerTransformer key -> the release's key (for exporting weights in release format)."""
    for pattern, replace in _INVERSE_PATTERNS:
        match = pattern.match(key)
        if match:
            return replace(match, audio_attention)
    raise KeyError(f"{key} has no release name")


def to_official_state_dict(model) -> dict:
    """The model's weights under the release's names (what `1_3B-single-v1.pth` holds under "model")."""
    variant = model.config.audio_attention
    return {diffusers_key_to_official(name, variant): tensor for name, tensor in model.state_dict().items()}


class RenamedStateDict(Mapping):
    """A state dict seen under AnyTalkerTransformer's names (release or diffusers-Wan names accepted)."""

    def __init__(self, state_dict: Mapping):
        self._source = {official_key_to_diffusers(key): key for key in state_dict.keys()}
        self._state_dict = state_dict

    def __getitem__(self, key):
        return self._state_dict[self._source[key]]

    def source_key(self, key):
        return self._source[key]

    def __iter__(self):
        return iter(self._source)

    def __len__(self):
        return len(self._source)


def open_checkpoint(checkpoint, what: str) -> tuple[Mapping, str]:
    """(state dict, description for errors) of a path (file, shard folder) or an in-memory dict."""
    if isinstance(checkpoint, Mapping):
        return checkpoint, f"{what} (state dict)"
    return open_state_dict(checkpoint, what), f"{what} {checkpoint}"


def load_official_transformer(cls, checkpoint, config, torch_dtype: torch.dtype | None = None, base_checkpoint=None):
    """Builds `cls` on the meta device from a release config and fills it from release files.

    `base_checkpoint` (a Wan2.1 DiT in release or diffusers naming, file, shard folder or dict)
    supplies every weight the AnyTalker checkpoint does not hold; the AnyTalker file wins.
    """
    model_config = config_from_official(config)
    state_dict, source = open_checkpoint(checkpoint, "AnyTalker DiT checkpoint")
    state_dict = RenamedStateDict(state_dict)
    if base_checkpoint is not None:
        base, base_source = open_checkpoint(base_checkpoint, "base Wan DiT checkpoint")
        state_dict, source = Overlay(state_dict, RenamedStateDict(base)), f"{source} over {base_source}"
    with init_empty_weights():
        model = cls.from_config(model_config)
    keep_fp32 = tuple(cls._keep_in_fp32_modules) if torch_dtype in (torch.float16, torch.bfloat16) else ()
    load_state_dict_into_meta_model(
        model, state_dict, dtype=torch_dtype, source=source,
        keep_fp32=lambda name: any(part in name.split(".") for part in keep_fp32),
    )
    return model.eval()
