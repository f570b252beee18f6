"""Wan2.1 VAE in diffusers' AutoencoderKLWan against the release's golden vectors.

Measured on CPU (float32), max abs diff vs the official run:
  case_1: mu 6.9e-7, mu_raw 1.2e-6, log_var 1.3e-6, decoded 2.7e-6, decoded_unclamped 2.7e-6
  case_2: mu 7.7e-7, mu_raw 1.1e-6, log_var 1.2e-6, decoded 3.5e-6, decoded_unclamped 3.5e-6
i.e. thread-count noise (README §2); the normalisation alone is bit-exact.

Other `WanVAE_` layouts (num_res_blocks 1 and 3, other dim_mult, widths and z_dim) need no golden
file: a random diffusers model is exported to release keys, loaded back through `load_wan_vae`
and must give the same tensors and the same encode / decode, bit for bit.
"""

import pytest
import torch
from conftest import load_case, parity_file, parity_json, parity_params, require_parity_dir
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import load_file, save_file

from anytalker.encoders.vae import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    WAN21_VAE_CONFIG,
    build_empty_vae,
    decode_latents,
    denormalize_latents,
    diffusers_to_official_state_dict,
    diffusers_vae_config,
    encode_video,
    load_wan_vae,
    normalize_latents,
    official_config_of,
    official_key_map,
    official_to_diffusers_keys,
    official_vae_config,
)
from anytalker.parity import (
    TOLERANCE,
    decode_latents_unclamped,
    load_release_vae,
    max_abs_diff,
    vae_case_diffs,
    vae_case_outputs,
)
from anytalker.utils.checkpoints import CheckpointError


@pytest.fixture(scope="module")
def tiny_config():
    return parity_json("vae_tiny.config.json")


@pytest.fixture(scope="module")
def tiny_weights():
    return parity_file("vae_tiny.weights.safetensors")


@pytest.fixture(scope="module")
def tiny_vae(tiny_config, tiny_weights):
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


def test_latent_stats():
    stats = parity_json("vae_latent_stats.json")
    assert WAN21_LATENTS_MEAN == stats["mean"] and WAN21_LATENTS_STD == stats["std"]
    config = build_empty_vae().config
    assert list(config.latents_mean) == stats["mean"] and list(config.latents_std) == stats["std"]


def test_default_config_is_the_release():
    assert WAN21_VAE_CONFIG == parity_json("manifest_vae_wan2.1.json")["constructor"]


def test_manifest_maps_onto_full_size_model():
    manifest = parity_json("manifest_vae_wan2.1.json")
    entries = manifest["keys"]
    assert len(entries) == manifest["num_keys"]
    model = dict(build_empty_vae(manifest["constructor"]).state_dict())  # full-size VAE, meta device
    assert all(t.is_meta for t in model.values())
    rename = official_to_diffusers_keys([e["name"] for e in entries], manifest["constructor"])
    covered = set()
    for entry in entries:
        name = rename[entry["name"]]
        assert name in model, f"{entry['name']} -> {name} is not a model parameter"
        assert list(model[name].shape) == entry["shape"], entry["name"]
        assert str(model[name].dtype).removeprefix("torch.") == entry["dtype"]
        covered.add(name)
    assert covered == set(model), f"parameters without a source key: {sorted(set(model) - covered)}"
    assert sum(t.numel() for t in model.values()) == manifest["num_elements"]
    # The config-derived map lists the release's keys in the release's state-dict order ...
    assert list(official_key_map(manifest["constructor"])) == [e["name"] for e in entries]
    # ... and the export is its exact inverse: the same keys, in that order, with the same shapes.
    exported = diffusers_to_official_state_dict(build_empty_vae(manifest["constructor"]))
    assert [(k, list(v.shape)) for k, v in exported.items()] == [(e["name"], e["shape"]) for e in entries]


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


def test_unknown_key(tiny_config, tiny_weights, tmp_path):
    state = load_file(tiny_weights)
    state["encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "extra.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError, match="unexpected keys.*encoder.extra.weight"):
        load_wan_vae(path, config=tiny_config)


def test_tiny_export_is_the_file(tiny_config, tiny_weights, tiny_vae):
    """Exporting the loaded golden VAE gives the release file back: same keys, same order, same bits."""
    state = load_file(tiny_weights)
    exported = diffusers_to_official_state_dict(tiny_vae)
    assert list(exported) == list(official_key_map(tiny_config))
    assert set(exported) == set(state)
    for key, value in exported.items():
        assert torch.equal(value, state[key]), key
    assert official_config_of(tiny_vae) == official_vae_config(tiny_config)


# ---------------------------------------------------------------- other WanVAE_ layouts (no golden files needed)
#
# The official code is not available, so an official-format file of another layout is made from a
# random diffusers model through the export (the exact inverse of the load map), then loaded back.

OTHER_CONFIGS = {
    "res1": {"dim": 4, "num_res_blocks": 1},
    "res3": {"dim": 4, "num_res_blocks": 3},
    # 3 levels, temporal halving on the first, z_dim 8 with its own statistics
    "mult132_z8": {"dim": 6, "dim_mult": [1, 3, 2], "num_res_blocks": 1, "temperal_downsample": [True, False],
                   "z_dim": 8, "latents_mean": [0.1 * i for i in range(8)], "latents_std": [1.0 + 0.1 * i for i in range(8)]},
    # shortcuts where diffusers' converter does not expect them (encoder level 1 and 3, decoder level 2)
    "mult1224": {"dim": 3, "dim_mult": [1, 2, 2, 4], "temperal_downsample": [True, True, False]},
}


def _random_vae(config, seed=0):
    """A diffusers AutoencoderKLWan of an official config with every parameter random (the parity
    README's scheme), so a misplaced tensor changes the outputs."""
    vae = AutoencoderKLWan(**diffusers_vae_config(config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in vae.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("gamma"):
                param.copy_(1 + 0.1 * noise)
            elif param.ndim == 1:
                param.copy_(0.05 * noise)
            else:
                param.copy_(noise / param[0].numel() ** 0.5)
    return vae.eval().requires_grad_(False)


def _save(state, path):
    save_file({key: value.contiguous() for key, value in state.items()}, path)
    return path


def _block_indices(keys, prefix):
    return sorted({int(key.removeprefix(prefix).split(".")[0]) for key in keys if key.startswith(prefix)})


def _check_release_layout(official, config):
    """The exported keys have the release's flat layout, and shortcuts exactly where widths change."""
    full = official_vae_config(config)
    levels, blocks = len(full["dim_mult"]), full["num_res_blocks"]
    flags = full["temperal_downsample"][: levels - 1]
    assert _block_indices(official, "encoder.downsamples.") == list(range(levels * blocks + levels - 1))
    assert _block_indices(official, "decoder.upsamples.") == list(range(levels * (blocks + 1) + levels - 1))
    for part in ("encoder.downsamples.", "decoder.upsamples."):
        assert sum(k.startswith(part) and k.endswith("time_conv.weight") for k in official) == sum(flags)
        assert sum(k.startswith(part) and k.endswith("resample.1.weight") for k in official) == levels - 1
    for key in official:
        if key.endswith("residual.2.weight"):
            block = key.removesuffix("residual.2.weight")
            in_dim, out_dim = official[key].shape[1], official[block + "residual.6.weight"].shape[0]
            assert (block + "shortcut.weight" in official) == (in_dim != out_dim), block
    assert official["conv1.weight"].shape[0] == 2 * full["z_dim"] and official["conv2.weight"].shape[0] == full["z_dim"]


@pytest.mark.parametrize("name", OTHER_CONFIGS)
def test_other_layout_loads_bit_exact(name, tmp_path):
    config = OTHER_CONFIGS[name]
    source = _random_vae(config)
    source_state = source.state_dict()
    official = diffusers_to_official_state_dict(source)  # the model's own config
    key_map = official_key_map(config)
    # the export is a bijection onto the model's parameters: every one exactly once, the same storage
    assert list(official) == list(key_map)
    assert sorted(key_map.values()) == sorted(source_state) and len(set(key_map.values())) == len(key_map)
    assert all(official[k].data_ptr() == source_state[v].data_ptr() for k, v in key_map.items())
    assert official_config_of(source) == official_vae_config(config)
    _check_release_layout(official, config)

    path = _save(official, tmp_path / "vae.safetensors")
    loaded = load_wan_vae(path, config=config)  # strict: every file key consumed, every parameter covered
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(source_state)
    for key, value in source_state.items():
        assert torch.equal(loaded_state[key], value), key
    assert list(loaded.config.latents_mean) == list(source.config.latents_mean)

    # loading then exporting gives the file back, bit for bit and in the same order (the inverse both ways)
    again = diffusers_to_official_state_dict(loaded)
    assert list(again) == list(official) and all(torch.equal(again[k], official[k]) for k in official)

    # the same computation, bit for bit, on a tiny video and latent
    generator = torch.Generator().manual_seed(1)
    spatial = source.config.scale_factor_spatial
    video = torch.rand(1, 3, 5, 2 * spatial, 3 * spatial, generator=generator) * 2 - 1
    with torch.no_grad():
        expected, actual = source.encode(video).latent_dist, loaded.encode(video).latent_dist
    assert torch.equal(actual.mean, expected.mean) and torch.equal(actual.logvar, expected.logvar)
    latent = encode_video(source, video)
    assert latent.shape[1] == official_vae_config(config)["z_dim"]
    assert torch.equal(encode_video(loaded, video), latent)
    z = torch.randn(1, latent.shape[1], 2, 2, 3, generator=generator)
    assert torch.equal(decode_latents(loaded, z), decode_latents(source, z))
    unclamped = decode_latents_unclamped(source, z)
    assert torch.equal(decode_latents_unclamped(loaded, z), unclamped)
    assert unclamped.shape[2] == 1 + (z.shape[2] - 1) * source.config.scale_factor_temporal


def test_wan21_map_is_diffusers_converter():
    """For the Wan2.1 layout (any width) the derived map is exactly diffusers' own converter; for
    another layout that converter misplaces keys, which is why the map is derived from the config."""
    for config in (WAN21_VAE_CONFIG, {"dim": 8}, {"dim": 5, "z_dim": 16}):
        key_map = official_key_map(config)
        converted = convert_wan_vae_to_diffusers({key: key for key in key_map})
        assert {old: new for new, old in converted.items()} == key_map
    config = OTHER_CONFIGS["mult1224"]
    key_map = official_key_map(config)
    converted = {old: new for new, old in convert_wan_vae_to_diffusers({key: key for key in key_map}).items()}
    parameters = set(build_empty_vae(config).state_dict())
    assert set(key_map.values()) == parameters
    assert not set(converted.values()) <= parameters


def test_missing_and_extra_keys_are_named(tmp_path):
    config = OTHER_CONFIGS["res1"]
    official = diffusers_to_official_state_dict(_random_vae(config))
    del official["decoder.upsamples.2.resample.1.weight"]  # num_res_blocks 1: level 0 is upsamples 0-1 + resampler 2
    official["decoder.upsamples.99.residual.0.gamma"] = torch.ones(4, 1, 1, 1)
    path = _save(official, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_wan_vae(path, config=config)
    message = str(error.value)
    assert str(path) in message and "num_res_blocks=1" in message
    assert ("missing keys (1): decoder.upsamples.2.resample.1.weight "
            "(decoder.up_blocks.0.upsamplers.0.resample.1.weight)") in message
    assert "unexpected keys (1): decoder.upsamples.99.residual.0.gamma" in message

    # a release file read with another layout's config names the keys that do not fit
    wrong = _save(diffusers_to_official_state_dict(_random_vae(OTHER_CONFIGS["res3"])), tmp_path / "res3.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): .*unexpected keys \(\d+\): decoder\.upsamples\.11"):
        load_wan_vae(wrong, config=config)  # num_res_blocks 1 has decoder.upsamples 0-10 only

    # the export is strict too
    state = _random_vae(config).state_dict()
    del state["decoder.conv_in.bias"]
    with pytest.raises(ValueError, match=r"missing parameters \(1\): decoder\.conv_in\.bias"):
        diffusers_to_official_state_dict(state, config)
    with pytest.raises(ValueError, match="parameters without a release key"):
        diffusers_to_official_state_dict(_random_vae(OTHER_CONFIGS["res3"]), config)


@pytest.mark.parametrize(
    "config, field",
    [
        ({"base_dim": 8}, "unknown WanVAE_ config keys"),
        ({"dim_mult": [1, 2, 2, 4, 4], "temperal_downsample": [False, True, True, True]}, "dim_mult"),
        ({"dim_mult": [1, 0, 2]}, "dim_mult"),
        ({"attn_scales": [0.5]}, "attn_scales"),  # encoder level 1 and decoder level 1
        ({"attn_scales": [0.125]}, "attn_scales"),  # encoder level 3 only
        ({"attn_scales": [2.0]}, "attn_scales"),  # decoder level 3 only
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"dim": 0}, "dim"),
        ({"temperal_downsample": [True]}, "temperal_downsample"),
        ({"z_dim": 8}, "z_dim"),  # the release has statistics for z_dim 16 only
        ({"z_dim": 8, "latents_mean": [0.0] * 8, "latents_std": [1.0] * 7}, "latents_std"),
    ],
)
def test_unsupported_config_names_the_field(config, field):
    with pytest.raises(ValueError, match=field):
        build_empty_vae(config)


def test_attention_scale_without_a_level_is_a_no_op():
    assert official_key_map({"attn_scales": [3.0]}) == official_key_map()
    assert set(build_empty_vae({"attn_scales": [3.0]}).state_dict()) == set(build_empty_vae().state_dict())
