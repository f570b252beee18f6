"""CLIP vision encoder: golden-vector parity, full-size manifest, loader errors, key skipping."""

import json

import pytest
import torch
from conftest import load_case, parity_params, require_parity_dir
from safetensors.torch import load_file, save_file

from anytalker.encoders.image import (
    clip_penultimate_features,
    clip_vision_from_state_dict,
    encode_clip_image,
    load_clip_vision,
    preprocess_clip_image,
)
from anytalker.utils.checkpoints import CheckpointError

TOL = 1e-4  # README §2: float32 noise is ~1e-6
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@pytest.fixture(scope="module")
def tiny():
    root = require_parity_dir()
    config = json.loads((root / "clip_vision_tiny.config.json").read_text())
    model = load_clip_vision(root / "clip_vision_tiny.weights.safetensors", dtype=torch.float32, config=config)
    return model, config


def _max_diff(a, b):
    assert a.shape == b.shape
    return (a.float() - b).abs().max().item()


@pytest.mark.parametrize("case", parity_params("clip_vision_tiny"))
def test_parity(tiny, case):
    model, config = tiny
    tensors, _ = load_case(case)
    image = tensors["image"][None]
    pixel_values = preprocess_clip_image(image, size=config["image_size"], mean=config["mean"], std=config["std"])
    assert _max_diff(pixel_values, tensors["pixel_values"]) <= TOL
    with torch.no_grad():
        tokens_in = model.pre_layrnorm(model.embeddings(tensors["pixel_values"]))
        outputs = model(tensors["pixel_values"], output_hidden_states=True)
    assert _max_diff(tokens_in, tensors["tokens_in"]) <= TOL
    # hidden_states[0] is the pre-norm output, so [-2] is "all blocks but the last" ...
    assert _max_diff(outputs.hidden_states[-2], tensors["out"]) <= TOL
    assert _max_diff(outputs.last_hidden_state, tensors["out_all_blocks"]) <= TOL
    # ... which is what the pipeline helpers return, from pixels or from the raw image.
    assert _max_diff(clip_penultimate_features(model, tensors["pixel_values"]), tensors["out"]) <= TOL
    assert _max_diff(encode_clip_image(model, image), tensors["out"]) <= TOL


def test_default_load_is_fp16(tiny):
    root = require_parity_dir()
    model = load_clip_vision(root / "clip_vision_tiny.weights.safetensors", config=tiny[1])
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    out = encode_clip_image(model, torch.rand(2, 3, 30, 50) * 2 - 1)
    assert out.dtype == torch.float16 and out.shape == (2, 10, 32)


def test_manifest_fits_full_size_model():
    root = require_parity_dir()
    manifest = json.loads((root / "manifest_clip_visual_vit_h_14.json").read_text())
    state = {k["name"]: torch.empty(k["shape"], dtype=DTYPES[k["dtype"]], device="meta") for k in manifest["keys"]}
    # The real file also holds the text tower and the temperature: skipped on purpose.
    state["textual.token_embedding.weight"] = torch.empty(514, 1024, device="meta")
    state["log_scale"] = torch.empty((), device="meta")
    model = clip_vision_from_state_dict(state)  # default config = ViT-H/14; strict: all covered
    head = 1280 * 1024  # visual.head, the only visual key without a CLIPVisionModel module
    assert sum(p.numel() for p in model.parameters()) == manifest["num_elements"] - head
    assert model.embeddings.position_embedding.weight.shape == (257, 1280) and len(model.encoder.layers) == 32


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_clip_vision(missing)


def test_wrong_shape_raises(tiny, tmp_path):
    root = require_parity_dir()
    state = load_file(str(root / "clip_vision_tiny.weights.safetensors"))
    state["visual.transformer.1.attn.to_qkv.weight"] = torch.zeros(95, 32)  # not 3 x dim rows
    state["visual.pos_embedding"] = torch.zeros(1, 11, 32)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"to_qkv\.weight\[v\].*") as error:
        load_clip_vision(path, config=tiny[1])
    assert str(path) in str(error.value) and "visual.pos_embedding" in str(error.value)


def test_only_known_prefixes_are_skipped(tiny, tmp_path):
    root = require_parity_dir()
    state = dict(load_file(str(root / "clip_vision_tiny.weights.safetensors")))
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
