"""Wan2.1 VAE in diffusers' AutoencoderKLWan against the release's golden vectors.

Measured on CPU (float32), max abs diff vs the official run:
  case_1: mu 6.9e-7, mu_raw 1.2e-6, log_var 1.3e-6, decoded 2.7e-6, decoded_unclamped 2.7e-6
  case_2: mu 7.7e-7, mu_raw 1.1e-6, log_var 1.2e-6, decoded 3.5e-6, decoded_unclamped 3.5e-6
i.e. thread-count noise (README §2); the normalisation alone is bit-exact.
"""

import json

import pytest
import torch
from conftest import load_case, parity_params, require_parity_dir
from safetensors.torch import load_file, save_file

from anytalker.encoders.vae import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    WAN21_VAE_CONFIG,
    build_empty_vae,
    denormalize_latents,
    load_wan_vae,
    normalize_latents,
    official_to_diffusers_keys,
)
from anytalker.parity import (
    TOLERANCE,
    load_release_vae,
    max_abs_diff,
    vae_case_diffs,
    vae_case_outputs,
)
from anytalker.utils.checkpoints import CheckpointError


@pytest.fixture(scope="module")
def tiny_config():
    return json.loads((require_parity_dir() / "vae_tiny.config.json").read_text())


@pytest.fixture(scope="module")
def tiny_weights():
    return require_parity_dir() / "vae_tiny.weights.safetensors"


@pytest.fixture(scope="module")
def tiny_vae():
    return load_release_vae(require_parity_dir())


def _max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return max_abs_diff(a, b)


@pytest.mark.parametrize("case", parity_params("vae_tiny"))
def test_parity(case, tiny_vae):
    diffs = vae_case_diffs(tiny_vae, case)  # what `anytalker parity` reports
    print(case.name, diffs)
    assert set(diffs) == {"mu", "mu_raw", "log_var", "decoded", "decoded_unclamped"}
    assert all(d <= TOLERANCE for d in diffs.values()), diffs

    t, _ = load_case(case)
    # diffusers clamps log_var to [-30, 20]; the golden values lie well inside, so compare directly.
    assert -30 < t["log_var"].min() and t["log_var"].max() < 20
    outputs = vae_case_outputs(tiny_vae, t)
    decoded, unclamped = outputs["decoded"], outputs["decoded_unclamped"]
    # The unclamped loop is diffusers' decode path: clamping it gives decode's result exactly.
    assert torch.equal(unclamped.clamp(-1, 1), decoded)
    assert decoded.abs().max() <= 1.0


@pytest.mark.parametrize("case", parity_params("vae_tiny"))
def test_normalisation_is_bit_exact(case, tiny_config):
    t, _ = load_case(case)
    vae = build_empty_vae(tiny_config)  # the stats live in the config; no weights needed
    assert torch.equal(normalize_latents(vae, t["mu_raw"]), t["mu"])
    assert _max_diff(denormalize_latents(vae, t["mu"]), t["mu_raw"]) <= 1e-6


def test_latent_stats_and_default_config():
    root = require_parity_dir()
    stats = json.loads((root / "vae_latent_stats.json").read_text())
    assert WAN21_LATENTS_MEAN == stats["mean"] and WAN21_LATENTS_STD == stats["std"]
    manifest = json.loads((root / "manifest_vae_wan2.1.json").read_text())
    assert WAN21_VAE_CONFIG == manifest["constructor"]
    config = build_empty_vae().config
    assert list(config.latents_mean) == stats["mean"] and list(config.latents_std) == stats["std"]


def test_manifest_maps_onto_full_size_model():
    manifest = json.loads((require_parity_dir() / "manifest_vae_wan2.1.json").read_text())
    entries = manifest["keys"]
    assert len(entries) == manifest["num_keys"]
    model = dict(build_empty_vae().state_dict())  # full-size Wan2.1 VAE, meta device
    assert all(t.is_meta for t in model.values())
    rename = official_to_diffusers_keys([e["name"] for e in entries])
    covered = set()
    for entry in entries:
        name = rename[entry["name"]]
        assert name in model, f"{entry['name']} -> {name} is not a model parameter"
        assert list(model[name].shape) == entry["shape"], entry["name"]
        assert str(model[name].dtype).removeprefix("torch.") == entry["dtype"]
        covered.add(name)
    assert covered == set(model), f"parameters without a source key: {sorted(set(model) - covered)}"
    assert sum(t.numel() for t in model.values()) == manifest["num_elements"]


def test_pth_and_dtype(tiny_config, tiny_weights, tiny_vae, tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(load_file(tiny_weights), path)
    from_pth = load_wan_vae(path, config=tiny_config)
    for (name, a), (_, b) in zip(from_pth.state_dict().items(), tiny_vae.state_dict().items()):
        assert torch.equal(a, b), name
    assert not any(p.is_meta or p.requires_grad for p in from_pth.parameters())
    half = load_wan_vae(tiny_weights, dtype=torch.bfloat16, config=tiny_config)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "Wan2.1_VAE.pth"
    with pytest.raises(CheckpointError, match=str(path)):
        load_wan_vae(path)


def test_wrong_shape_and_missing_key(tiny_config, tiny_weights, tmp_path):
    state = load_file(tiny_weights)
    state["decoder.head.2.bias"] = torch.zeros(4)  # the model has 3 output channels
    del state["encoder.middle.1.to_qkv.weight"]
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError) as error:
        load_wan_vae(path, config=tiny_config)
    message = str(error.value)
    assert str(path) in message
    assert "decoder.head.2.bias: file (4,) vs model (3,)" in message
    assert "encoder.mid_block.attentions.0.to_qkv.weight" in message  # reported under its model name


def test_unknown_key_and_unsupported_config(tiny_config, tiny_weights, tmp_path):
    state = load_file(tiny_weights)
    state["encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "extra.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError, match="unexpected keys.*encoder.extra.weight"):
        load_wan_vae(path, config=tiny_config)
    with pytest.raises(ValueError, match="unknown WanVAE_ config keys"):
        load_wan_vae(tiny_weights, config={**tiny_config, "base_dim": 8})
    with pytest.raises(ValueError, match="attn_scales"):
        build_empty_vae({"attn_scales": [0.5]})
