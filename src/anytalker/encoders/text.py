"""The release's umT5-XXL text encoder (`models_t5_umt5-xxl-enc-bf16.pth`) as transformers' `UMT5EncoderModel`.

`UMT5EncoderModel` computes what the release's `T5Encoder` computes (checked against the golden
vectors in tests/test_text_encoder.py):
- no 1/sqrt(d) attention scaling, and a relative-position table in *every* block (umT5, not T5,
  whose blocks share the first block's table; the release's `shared_pos=False`);
- bidirectional buckets, 16 per direction, exact below 8, logarithmic up to distance 128;
- FFN `wo(wi_1(x) * gelu_tanh(wi_0(x)))`, i.e. release `fc2(fc1(x) * gate(x))`;
- RMS norms (eps 1e-6) and a final norm; padded *keys* are masked, padded *queries* are computed
  normally and are dropped afterwards by trimming each prompt to its real length.

This module renames the release's keys (no tensor is touched), loads the file into a meta-device
model in place, and reproduces the release's prompt path (`T5EncoderModel.__call__`): clean,
tokenize to a fixed 512 tokens, encode with the mask, trim each prompt to its real length.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from anytalker.utils.checkpoints import CheckpointError, load_state_dict_into_meta_model, open_state_dict

__all__ = [
    "UMT5_XXL_CONFIG",
    "TEXT_LEN",
    "umt5_config",
    "official_to_umt5_key",
    "build_empty_umt5_encoder",
    "load_umt5_encoder",
    "umt5_from_state_dict",
    "load_umt5_tokenizer",
    "clean_prompt",
    "encode_token_ids",
    "encode_prompts",
]

# Constructor arguments of the release's `T5Encoder` for umt5-xxl (wan/modules/t5.py).
UMT5_XXL_CONFIG = {
    "vocab": 256384,
    "dim": 4096,
    "dim_attn": 4096,
    "dim_ffn": 10240,
    "num_heads": 64,
    "num_layers": 24,
    "num_buckets": 32,
    "shared_pos": False,
    "dropout": 0.1,
}

# The pipeline tokenizes every prompt to exactly this many tokens (`text_len` in the Wan configs).
TEXT_LEN = 512


def umt5_config(config: Mapping | UMT5Config | None = None) -> UMT5Config:
    """`UMT5Config` for an official `T5Encoder` config (official argument names, missing = umT5-XXL).

    A `UMT5Config` is passed through unchanged. A `class_name` entry (exported JSON configs) is ignored.
    """
    if isinstance(config, UMT5Config):
        return config
    official = dict(UMT5_XXL_CONFIG)
    if config is not None:
        config = {key: value for key, value in config.items() if key != "class_name"}
        unknown = sorted(set(config) - set(official))
        if unknown:
            raise ValueError(f"unknown T5Encoder config keys {unknown}; expected a subset of {sorted(official)}")
        official.update(config)
    if official["shared_pos"]:
        # T5-style shared table (first block only) is not what umT5 / UMT5EncoderModel has.
        raise ValueError("shared_pos=True (one position table for all blocks) is unsupported: umT5 has one per block")
    if official["dim_attn"] % official["num_heads"]:
        raise ValueError(f"dim_attn {official['dim_attn']} is not divisible by num_heads {official['num_heads']}")
    return UMT5Config(
        vocab_size=official["vocab"],
        d_model=official["dim"],
        d_kv=official["dim_attn"] // official["num_heads"],
        d_ff=official["dim_ffn"],
        num_heads=official["num_heads"],
        num_layers=official["num_layers"],
        relative_attention_num_buckets=official["num_buckets"],
        relative_attention_max_distance=128,  # hard-coded in the release's bucket function
        feed_forward_proj="gated-gelu",  # gated FFN with gelu_new, the tanh approximation
        layer_norm_epsilon=1e-6,
        dropout_rate=official["dropout"],  # inactive: the encoder always runs in eval mode
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=True,
    )


# Per-block renames: release `blocks.N.<key>` -> transformers `encoder.block.N.<value>`.
_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # the linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)")


def official_to_umt5_key(key: str) -> str:
    """transformers name of a release `T5Encoder` key; unknown keys come back unchanged (the
    strict loader then reports them as unexpected)."""
    if key == "token_embedding.weight":
        return "shared.weight"
    if key == "norm.weight":
        return "encoder.final_layer_norm.weight"
    match = _BLOCK_RE.fullmatch(key)
    if match and match.group(2) in _BLOCK_KEYS:
        return f"encoder.block.{match.group(1)}.{_BLOCK_KEYS[match.group(2)]}"
    return key


def build_empty_umt5_encoder(config: Mapping | UMT5Config | None = None) -> UMT5EncoderModel:
    """A `UMT5EncoderModel` whose parameters live on the meta device (no memory, no init)."""
    with init_empty_weights():
        model = UMT5EncoderModel(umt5_config(config))
    # transformers builds `encoder.embed_tokens` as a second embedding tied to `shared` only
    # later. The release file has one table: drop the duplicate now, so that the strict loader
    # expects exactly the file's keys; it is re-pointed at `shared` after loading.
    model.encoder.embed_tokens = None
    return model


def umt5_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = torch.bfloat16,
    config: Mapping | UMT5Config | None = None,
    source: str = "umT5 encoder checkpoint",
) -> UMT5EncoderModel:
    """Builds the encoder on the meta device and fills it strictly from a release state dict."""
    model = build_empty_umt5_encoder(config)
    load_state_dict_into_meta_model(model, state_dict, rename=official_to_umt5_key, dtype=dtype, source=source)
    model.encoder.embed_tokens = model.shared  # one table, shared by module (the tie)
    return model.eval().requires_grad_(False)


def load_umt5_encoder(
    path: str | os.PathLike,
    dtype: torch.dtype | None = torch.bfloat16,
    config: Mapping | UMT5Config | None = None,
) -> UMT5EncoderModel:
    """Loads `models_t5_umt5-xxl-enc-bf16.pth` (or a same-keyed .safetensors) into `UMT5EncoderModel`.

    The release runs umT5 in bf16 (the default); pass `dtype=torch.float32` for parity checks, or
    None to keep the file's dtype. Shapes are checked against `config` (umT5-XXL by default).
    """
    state_dict = open_state_dict(path, what="umT5 encoder checkpoint")
    return umt5_from_state_dict(state_dict, dtype=dtype, config=config, source=f"umT5 encoder checkpoint {path}")


def load_umt5_tokenizer(path: str | os.PathLike):
    """The release's tokenizer folder (`google/umt5-xxl/`), read offline; never contacts a hub."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"umT5 tokenizer not found: expected a tokenizer folder at {path}")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - any reader failure means an incomplete folder
        raise CheckpointError(
            f"umT5 tokenizer folder {path} could not be loaded ({type(error).__name__}: {error}); "
            "expected tokenizer.json or spiece.model with tokenizer_config.json"
        ) from error


def clean_prompt(text: str) -> str:
    """The release's `clean='whitespace'`: fix mojibake (ftfy, when installed), unescape HTML
    twice, collapse whitespace runs to one space, strip."""
    try:
        import ftfy  # optional: only changes text that holds mis-decoded unicode

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def encode_token_ids(model: UMT5EncoderModel, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Encoder features of each sequence, trimmed to its real length (mask sum), as the release's
    `T5EncoderModel` returns them: the encoder's outputs at padded positions never leave here."""
    device = model.shared.weight.device
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    lengths = mask.gt(0).sum(dim=1).tolist()
    return [features[:length] for features, length in zip(out, lengths)]


def encode_prompts(
    model: UMT5EncoderModel, tokenizer, prompts: str | Sequence[str], max_length: int = TEXT_LEN
) -> list[torch.Tensor]:
    """Prompts -> list of [real_length, dim] features in the model's dtype (what the DiT receives).

    Every prompt is padded to exactly `max_length` tokens (truncated beyond, keeping the final
    `</s>`), so the batch shape never depends on the other prompts, as in the release.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    batch = tokenizer(
        [clean_prompt(prompt) for prompt in prompts],
        padding="max_length",
        truncation=True,
        max_length=max_length,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return encode_token_ids(model, batch["input_ids"], batch["attention_mask"])
