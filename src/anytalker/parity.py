"""Runs the golden vectors of the official release (`../shared/parity`) through this implementation.

The vectors were produced by the official code in float32; matching them within 1e-4 shows that
the same functions are computed (see the parity README). Used by the tests and by
`anytalker parity`, so a user can check an installation on their own machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

TOLERANCE = 1e-4  # float32 noise is ~3e-6; a semantic error is >= 0.38 (parity README, section 2)


def default_parity_dir() -> Path:
    return Path(os.environ.get("ANYTALKER_PARITY_DIR", Path(__file__).resolve().parents[3] / "shared" / "parity"))


def load_case(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a golden case; floating tensors upcast to float32 as the README asks."""
    tensors = {}
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
        for key in handle.keys():
            value = handle.get_tensor(key)
            tensors[key] = value.float() if value.is_floating_point() else value
    return tensors, meta


def load_release_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Release-named weights; big matrices are stored as exact f16 low-rank factors A @ B."""
    raw = load_file(str(path))
    state = {}
    for key, value in raw.items():
        if key.endswith("::lowrank_a"):
            name = key.removesuffix("::lowrank_a")
            state[name] = value.float() @ raw[name + "::lowrank_b"].float()
        elif not key.endswith("::lowrank_b"):
            state[key] = value
    return state


def load_release_transformer(parity_dir: Path, name: str):
    from .models import AnyTalkerTransformer

    config = json.loads((parity_dir / f"{name}.config.json").read_text())
    weights = load_release_weights(parity_dir / f"{name}.weights.safetensors")
    return AnyTalkerTransformer.from_official(weights, config).float().eval()


def transformer_inputs(case: dict, context_key: str = "context", zero_audio: bool = False) -> dict:
    """The release's forward call of a DiT case (batch 1, N identities) in AnyTalkerTransformer's terms."""
    num_ids = sum(1 for key in case if key.startswith("audio."))
    audio = torch.stack([case[f"audio.{i}"] for i in range(num_ids)])[None]
    return dict(
        hidden_states=torch.cat([case["x"], case["y"]])[None],
        timestep=case["t"],
        encoder_hidden_states=case[context_key][None],
        encoder_hidden_states_image=case["clip_fea"],
        face_embeds=torch.cat([case[f"ref_face.{i}"] for i in range(num_ids)])[None],
        audio_embeds=torch.zeros_like(audio) if zero_audio else audio,
        face_token_masks=torch.cat([case[f"face_mask.{i}"][0] for i in range(num_ids)])[None],
    )


def transformer_case_variants(case: dict) -> dict[str, dict]:
    """Inputs for each stored output of a DiT case (conditional, CFG-unconditional, ablations)."""
    return {
        "out": transformer_inputs(case),
        "out_uncond": transformer_inputs(case, "context_null", zero_audio=True),
        "out_zero_audio": transformer_inputs(case, zero_audio=True),
        "out_no_token_mask": {**transformer_inputs(case), "face_token_masks": None},
    }


@torch.no_grad()
def transformer_case_diffs(model, path: str | os.PathLike) -> dict[str, float]:
    """Max abs difference of every stored output of one DiT case."""
    case, _ = load_case(path)
    return {key: (model(**inputs).sample[0] - case[key]).abs().max().item()
            for key, inputs in transformer_case_variants(case).items()}


def run_all(parity_dir: Path) -> Iterator[tuple[str, str, float]]:
    """(case file, output, max abs diff) for every golden case this implementation covers."""
    for name in ("dit_af_tiny", "dit_legacy_tiny"):
        cases = sorted(parity_dir.glob(f"{name}.case_*.safetensors"))
        if not cases:
            continue
        model = load_release_transformer(parity_dir, name)
        for path in cases:
            for output, diff in transformer_case_diffs(model, path).items():
                yield path.name, output, diff
