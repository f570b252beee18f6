"""AnyTalkerTransformer against golden outputs of the official release (../shared/parity, float32)."""

import pytest
import torch
from accelerate import init_empty_weights
from conftest import parity_file, parity_json, parity_params, require_parity_dir

from anytalker.models import AnyTalkerTransformer
from anytalker.models.attention import build_dense_temporal_mask
from anytalker.models.official_checkpoint import (
    RELEASE_DIT_CONFIGS,
    config_from_official,
    diffusers_key_to_official,
    official_key_to_diffusers,
)
from anytalker.parity import TOLERANCE, load_case, load_release_transformer, transformer_case_diffs

_MODELS = {}


def release_model(name):
    """The family's model from `<name>.config.json` + `<name>.weights.safetensors` (skipped if absent)."""
    if name not in _MODELS:
        parity_file(f"{name}.config.json"), parity_file(f"{name}.weights.safetensors")
        _MODELS[name] = load_release_transformer(require_parity_dir(), name)
    return _MODELS[name]


def _family(path):
    return path.name.split(".")[0]  # `<family>.case_*.safetensors`, whatever the case is called


@pytest.mark.parametrize("path", parity_params("dit_af_tiny") + parity_params("dit_legacy_tiny"))
def test_outputs_match_release(path):
    case, meta = load_case(path)
    assert meta.get("model", _family(path)) == _family(path)
    assert meta["N"] == sum(1 for key in case if key.startswith("audio."))
    diffs = transformer_case_diffs(release_model(_family(path)), path)
    assert set(diffs) == {"out", "out_uncond", "out_zero_audio", "out_no_token_mask"}
    for key, diff in diffs.items():
        assert diff <= TOLERANCE, f"{path.name}:{key} differs from the release by {diff:.2e}"


@pytest.mark.parametrize("path", parity_params("dit_af_tiny"))
def test_dense_temporal_mask_matches_release(path):
    case, meta = load_case(path)
    config = config_from_official(parity_json(f"{_family(path)}.config.json"))
    tokens_per_frame = meta["seq_len"] // meta["T"]
    mask = build_dense_temporal_mask(meta["T"], tokens_per_frame, meta["F"], config["audio_tokens_per_frame"],
                                     config["temporal_stride"])
    assert torch.equal(mask, case["dbg.temporal_mask"])


@pytest.mark.parametrize("manifest", ["manifest_dit_af_1.3B.json", "manifest_dit_legacy_14B.json"])
def test_full_size_manifest_maps_onto_meta_model(manifest):
    spec = parity_json(manifest)
    with init_empty_weights():
        model = AnyTalkerTransformer.from_config(config_from_official(spec["config_json"]))
    params = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    mapped = {official_key_to_diffusers(item["name"]): tuple(item["shape"]) for item in spec["keys"]}
    assert len(mapped) == len(spec["keys"]) == spec["num_keys"]
    assert mapped == params
    assert sum(p.numel() for p in model.parameters()) == spec["num_elements"]
    # Exporting back to release names is the exact inverse, and the bundled configs are the release's.
    variant = model.config.audio_attention
    assert [diffusers_key_to_official(official_key_to_diffusers(item["name"]), variant) for item in spec["keys"]] \
        == [item["name"] for item in spec["keys"]]
    assert RELEASE_DIT_CONFIGS["1.3B" if variant == "fused" else "14B"] == spec["config_json"]
