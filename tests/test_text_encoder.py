"""umT5 encoder: golden-vector parity, full-size manifest, loader errors, prompt path."""

import pytest
import torch
from conftest import load_case, make_tiny_tokenizer, parity_file, parity_json, parity_params, require_parity_dir
from safetensors.torch import load_file, save_file

from anytalker.encoders.text import (
    TEXT_LEN,
    clean_prompt,
    encode_prompts,
    load_umt5_encoder,
    load_umt5_tokenizer,
    umt5_from_state_dict,
)
from anytalker.parity import TOLERANCE, load_release_t5, t5_case_diffs, t5_case_outputs
from anytalker.utils.checkpoints import CheckpointError

TOL = TOLERANCE  # README §2: float32 noise is ~1e-6, a semantic error is far above 1e-3
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@pytest.fixture(scope="module")
def tiny():
    config = parity_json("t5_tiny.config.json")
    parity_file("t5_tiny.weights.safetensors")
    return load_release_t5(require_parity_dir()), config


@pytest.mark.parametrize("case", parity_params("t5_tiny"))
def test_parity(tiny, case):
    model, _ = tiny
    tensors, meta = load_case(case)
    # Padded positions are computed, not zeroed, in the release: out_full compares every position.
    diffs = t5_case_diffs(model, case)  # what `anytalker parity` reports
    assert set(diffs) == {"out_full"} | {f"out_trimmed.{b}" for b in range(len(meta["lengths"]))}
    for key, diff in diffs.items():
        assert diff <= TOLERANCE, f"{case.name}:{key} differs from the release by {diff:.2e}"
    outputs = t5_case_outputs(model, tensors)
    assert [len(outputs[f"out_trimmed.{b}"]) for b in range(len(meta["lengths"]))] == meta["lengths"]


def test_default_load_is_bf16_and_tied(tiny):
    model = load_umt5_encoder(parity_file("t5_tiny.weights.safetensors"), config=tiny[1])
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.encoder.embed_tokens is model.shared  # one table, as in the file
    assert not any(p.requires_grad for p in model.parameters())


def test_manifest_fits_full_size_model():
    manifest = parity_json("manifest_t5_umt5_xxl_encoder.json")
    # Meta tensors stand in for the real 11 GB file: the same rename / strict shape-checked load
    # runs, and any uncovered parameter or unplaced key raises.
    state = {k["name"]: torch.empty(k["shape"], dtype=DTYPES[k["dtype"]], device="meta") for k in manifest["keys"]}
    model = umt5_from_state_dict(state)  # default config = umT5-XXL
    assert sum(p.numel() for p in model.parameters()) == manifest["num_elements"]
    shapes = {k["name"]: tuple(k["shape"]) for k in manifest["keys"]}
    layers = len({name.split(".")[1] for name in shapes if name.startswith("blocks.")})
    assert model.shared.weight.shape == shapes["token_embedding.weight"] and len(model.encoder.block) == layers


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_umt5_encoder(missing)


def test_wrong_shape_raises(tiny, tmp_path):
    state = load_file(str(parity_file("t5_tiny.weights.safetensors")))
    last = f"blocks.{tiny[1]['num_layers'] - 1}.attn.q.weight"
    rows, cols = state[last].shape
    state[last] = torch.zeros(rows, cols - 1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=last.replace(".", r"\.")) as error:
        load_umt5_encoder(path, config=tiny[1])
    assert str(path) in str(error.value)


def test_unexpected_and_shared_pos_rejected(tiny):
    config = tiny[1]
    state = dict(load_file(str(parity_file("t5_tiny.weights.safetensors"))))
    # a shared_pos=True file
    state["pos_embedding.embedding.weight"] = torch.zeros(config["num_buckets"], config["num_heads"])
    with pytest.raises(CheckpointError, match="unexpected"):
        umt5_from_state_dict(state, config=tiny[1])
    with pytest.raises(ValueError, match="shared_pos"):
        umt5_from_state_dict(state, config={**tiny[1], "shared_pos": True})


def test_prompt_path_pads_truncates_and_trims(tiny, tmp_path):
    model, config = tiny
    dim = config["dim"]
    tokenizer = load_umt5_tokenizer(make_tiny_tokenizer(tmp_path / "umt5"))
    prompts = ["a man  and\n a woman talk", "the room", "a man and a woman talk in the room happily a man"]

    cleaned = [clean_prompt(p) for p in prompts]
    batch = tokenizer(cleaned, padding="max_length", truncation=True, max_length=8, return_tensors="pt")
    assert batch["input_ids"].shape == (3, 8)
    assert batch["attention_mask"].sum(1).tolist() == [7, 3, 8]  # 6 words + </s>; the last one truncated
    assert batch["input_ids"][2, -1].item() == 1  # truncation keeps the final </s>

    features = encode_prompts(model, tokenizer, prompts, max_length=8)
    assert [tuple(f.shape) for f in features] == [(7, dim), (3, dim), (8, dim)]
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    for b, f in enumerate(features):
        assert torch.equal(f, full[b, : len(f)])

    # Default: every prompt is padded to the pipeline's 512 tokens; trimming makes the result
    # independent of the padding (umT5 masks padded keys).
    default = encode_prompts(model, tokenizer, prompts[:2])
    assert TEXT_LEN == 512 and [len(f) for f in default] == [7, 3]
    for short, long in zip(features, default):
        assert (short - long).abs().max().item() <= TOL


def test_clean_prompt():
    assert clean_prompt("  a &amp;amp; b\n\t c  ") == "a & b c"


def test_missing_tokenizer_folder(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "google" / "umt5-xxl")):
        load_umt5_tokenizer(tmp_path / "google" / "umt5-xxl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="could not be loaded"):
        load_umt5_tokenizer(tmp_path / "empty")
