"""CLIP vision encoder: golden-vector parity, full-size manifest, loader errors, key skipping."""

import pytest
import torch
from conftest import parity_file, parity_json, parity_params, require_parity_dir
from safetensors.torch import load_file, save_file

from anytalker.encoders.image import (
    CLIP_MEAN,
    CLIP_STD,
    clip_vision_from_state_dict,
    encode_clip_image,
    load_clip_vision,
    preprocess_clip_image,
)
from anytalker.parity import TOLERANCE, clip_vision_case_diffs, load_release_clip_vision
from anytalker.utils.checkpoints import CheckpointError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@pytest.fixture(scope="module")
def tiny():
    config = parity_json("clip_vision_tiny.config.json")
    parity_file("clip_vision_tiny.weights.safetensors")
    return load_release_clip_vision(require_parity_dir()), config


def _num_tokens(config):
    """Class token + one per patch of the square input."""
    return (config["image_size"] // config["patch_size"]) ** 2 + 1


@pytest.mark.parametrize("case", parity_params("clip_vision_tiny"))
def test_parity(tiny, case):
    model, config = tiny
    # The pipeline preprocesses with the module defaults: they must be the release's.
    assert model.config.image_size == config["image_size"]
    assert (tuple(config["mean"]), tuple(config["std"])) == (CLIP_MEAN, CLIP_STD)
    diffs = clip_vision_case_diffs(model, case)  # what `anytalker parity` reports
    # pixel_values from the raw image; tokens_in, out_all_blocks and out.* from the golden pixel values,
    # except `out`: encode_clip_image straight from the raw image, as the pipeline runs it.
    assert set(diffs) == {"pixel_values", "tokens_in", "out.hidden_states", "out_all_blocks",
                          "out.from_pixel_values", "out"}
    for key, diff in diffs.items():
        assert diff <= TOLERANCE, f"{case.name}:{key} differs from the release by {diff:.2e}"


def test_default_load_is_fp16(tiny):
    config = tiny[1]
    model = load_clip_vision(parity_file("clip_vision_tiny.weights.safetensors"), config=config)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    out = encode_clip_image(model, torch.rand(2, 3, 30, 50) * 2 - 1)
    assert out.dtype == torch.float16 and out.shape == (2, _num_tokens(config), config["dim"])


def test_manifest_fits_full_size_model():
    manifest = parity_json("manifest_clip_visual_vit_h_14.json")
    state = {k["name"]: torch.empty(k["shape"], dtype=DTYPES[k["dtype"]], device="meta") for k in manifest["keys"]}
    # The real file also holds the text tower and the temperature: skipped on purpose.
    state["textual.token_embedding.weight"] = torch.empty(514, 1024, device="meta")
    state["log_scale"] = torch.empty((), device="meta")
    model = clip_vision_from_state_dict(state)  # default config = ViT-H/14; strict: all covered
    shapes = {k["name"]: k["shape"] for k in manifest["keys"]}
    head = torch.Size(shapes["visual.head"]).numel()  # the only visual key without a CLIPVisionModel module
    assert sum(p.numel() for p in model.parameters()) == manifest["num_elements"] - head
    layers = len({name.split(".")[2] for name in shapes if name.startswith("visual.transformer.")})
    assert list(model.embeddings.position_embedding.weight.shape) == shapes["visual.pos_embedding"][1:]
    assert len(model.encoder.layers) == layers


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_clip_vision(missing)


def test_wrong_shape_raises(tiny, tmp_path):
    dim = tiny[1]["dim"]
    state = load_file(str(parity_file("clip_vision_tiny.weights.safetensors")))
    state["visual.transformer.0.attn.to_qkv.weight"] = torch.zeros(3 * dim - 1, dim)  # not 3 x dim rows
    state["visual.pos_embedding"] = torch.zeros(1, _num_tokens(tiny[1]) + 1, dim)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"to_qkv\.weight\[v\].*") as error:
        load_clip_vision(path, config=tiny[1])
    assert str(path) in str(error.value) and "visual.pos_embedding" in str(error.value)


def test_only_known_prefixes_are_skipped(tiny, tmp_path):
    state = dict(load_file(str(parity_file("clip_vision_tiny.weights.safetensors"))))
    state["textual.head.weight"] = torch.zeros(2, 2)
    state["log_scale"] = torch.zeros(())
    torch.save(state, tmp_path / "clip.pth")  # the release's format, text tower included
    load_clip_vision(tmp_path / "clip.pth", config=tiny[1])  # skipped: loads
    state["visual.stray"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): visual\.stray"):
        clip_vision_from_state_dict(state, config=tiny[1])


def test_preprocess_keeps_overshoot():
    # A sharp edge: bicubic overshoots [-1, 1]; the release does not clamp before normalising.
    image = -torch.ones(1, 3, 8, 8)
    image[..., 4:] = 1
    x = preprocess_clip_image(image, size=13, mean=(0.0,) * 3, std=(1.0,) * 3)
    assert x.max() > 1.0 and x.min() < 0.0
