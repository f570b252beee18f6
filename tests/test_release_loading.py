"""A release download folder (tiny weights in release format) loads as it is and converts to diffusers."""

import json
import shutil

import pytest
import torch
from conftest import make_tiny_tokenizer, require_parity_dir
from safetensors import safe_open
from safetensors.torch import save_file

from anytalker.cli import main
from anytalker.parity import load_case, load_release_weights, transformer_inputs
from anytalker.pipeline import AnyTalkerPipeline
from anytalker.pipeline.release import release_folder
from anytalker.utils.checkpoints import CheckpointError

AUDIO_FACE_PREFIXES = ("audio_emb.", "audio_ref_emb.")
AUDIO_FACE_PARTS = (".k_face.", ".v_face.", ".norm_k_face.", ".k_audio.", ".v_audio.", ".norm_k_audio.")


def _configs(parity):
    read = lambda name: {k: v for k, v in json.loads((parity / f"{name}.config.json").read_text()).items()
                         if k not in ("class_name", "mean", "std", "out_dim", "pool_type", "pre_norm", "post_norm",
                                      "activation", "norm_eps", "mlp_ratio", "dropout")}
    return {"vae": read("vae_tiny"), "text_encoder": read("t5_tiny"),
            "image_encoder": json.loads((parity / "clip_vision_tiny.config.json").read_text())}


@pytest.fixture(scope="module")
def release_root(tmp_path_factory):
    """The release's folder layout with the parity suite's tiny weights. The AnyTalker file holds
    only the audio/face weights; the Wan DiT file supplies the rest (exercising the base overlay)."""
    parity = require_parity_dir()
    root = tmp_path_factory.mktemp("checkpoints")
    wan, anytalker, wav2vec = root / "Wan2.1-Fun-1.3B-Inp", root / "AnyTalker", root / "wav2vec2-base-960h"
    for folder in (wan, anytalker, wav2vec):
        folder.mkdir()
    load = lambda name: load_release_weights(parity / f"{name}.weights.safetensors")
    torch.save(load("vae_tiny"), wan / "Wan2.1_VAE.pth")
    torch.save(load("t5_tiny"), wan / "models_t5_umt5-xxl-enc-bf16.pth")
    clip = load("clip_vision_tiny")
    clip.update({"textual.token_embedding.weight": torch.zeros(4, 4), "log_scale": torch.zeros(())})
    torch.save(clip, wan / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    make_tiny_tokenizer(wan / "google" / "umt5-xxl")
    dit = load("dit_af_tiny")
    is_audio_face = lambda key: key.startswith(AUDIO_FACE_PREFIXES) or any(p in key for p in AUDIO_FACE_PARTS)
    save_file({k: v.contiguous() for k, v in dit.items() if not is_audio_face(k)},
              str(wan / "diffusion_pytorch_model.safetensors"))
    torch.save({"model": {k: v for k, v in dit.items() if is_audio_face(k)}}, anytalker / "1_3B-single-v1.pth")
    shutil.copy(parity / "dit_af_tiny.config.json", anytalker / "config_af2v_1_3B.json")
    shutil.copy(parity / "wav2vec_tiny.config.json", wav2vec / "config.json")
    shutil.copy(parity / "wav2vec_tiny.weights.safetensors", wav2vec / "model.safetensors")
    (root / "configs.json").write_text(json.dumps(_configs(parity)))
    return root


def _transformer_out(pipe):
    case, _ = load_case(require_parity_dir() / "dit_af_tiny.case_2.safetensors")
    with torch.no_grad():
        return (pipe.transformer(**transformer_inputs(case)).sample[0] - case["out"]).abs().max().item()


def test_release_folder_loads_and_matches_release(release_root):
    configs = json.loads((release_root / "configs.json").read_text())
    pipe = AnyTalkerPipeline.from_release(release_root, torch_dtype=torch.float32, configs=configs)
    assert _transformer_out(pipe) <= 1e-4
    assert pipe.text_encoder.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    assert pipe.scheduler.config.flow_shift == 3.0 and pipe.scheduler.config.use_flow_sigmas


def test_convert_writes_a_diffusers_folder_that_loads_back(release_root, tmp_path):
    dst = tmp_path / "anytalker-1.3B"
    args = [str(release_root), str(dst), "--dtype", "fp32", "--configs", str(release_root / "configs.json"), "--quiet"]
    assert main(["convert", *args]) == 0
    index = json.loads((dst / "model_index.json").read_text())
    assert index["_class_name"] == "AnyTalkerPipeline"
    assert index["transformer"][0].startswith("anytalker") and index["transformer"][1] == "AnyTalkerTransformer"
    assert (dst / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.glob(".anytalker-1.3B.partial-*"))

    pipe = AnyTalkerPipeline.from_pretrained(dst)
    assert _transformer_out(pipe) <= 1e-4
    reference = AnyTalkerPipeline.from_release(release_root, torch_dtype=torch.float32,
                                               configs=json.loads((release_root / "configs.json").read_text()))
    for name in ("vae", "text_encoder", "image_encoder", "audio_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert pipe.tokenizer("a man talk").input_ids == reference.tokenizer("a man talk").input_ids

    assert main(["convert", *args]) == 2  # refuses to overwrite without --overwrite
    assert main(["convert", *args, "--overwrite", "--dtype", "bf16"]) == 0
    with safe_open(str(dst / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as saved:
        assert saved.get_slice("proj_out.weight").get_dtype() == "BF16"
        assert saved.get_slice("blocks.0.scale_shift_table").get_dtype() == "F32"  # diffusers' fp32-kept modules


def test_missing_release_files_are_all_named(tmp_path, capsys):
    (tmp_path / "AnyTalker").mkdir()
    with pytest.raises(CheckpointError) as error:
        release_folder(tmp_path).check()
    text = str(error.value)
    for expected in ("AnyTalker/1_3B-single-v1.pth", "AnyTalker/config_af2v_1_3B.json", "wav2vec2-base-960h",
                     "Wan2.1-Fun-1.3B-Inp/Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl",
                     "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"):
        assert expected in text
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "1_3B-single-v1.pth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_wan_folder_in_diffusers_layout_loads(release_root, tmp_path):
    """The Wan components may come from a diffusers-format folder (model_index.json + subfolders)."""
    wan = tmp_path / "wan-diffusers"
    configs = json.loads((release_root / "configs.json").read_text())
    AnyTalkerPipeline.from_release(release_root, torch_dtype=torch.float32, configs=configs).save_pretrained(wan)
    root = tmp_path / "checkpoints"
    root.mkdir()
    for name in ("AnyTalker", "wav2vec2-base-960h"):
        shutil.copytree(release_root / name, root / name)
    pipe = AnyTalkerPipeline.from_release(root, torch_dtype=torch.float32, wan_dir=wan)
    assert _transformer_out(pipe) <= 1e-4
    assert pipe.vae.config.latents_mean == reference_vae_mean()


def test_corrupt_checkpoint_names_the_file(tmp_path):
    from anytalker.models import AnyTalkerTransformer
    from anytalker.models.official_checkpoint import RELEASE_DIT_CONFIGS

    corrupt = tmp_path / "1_3B-single-v1.pth"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match=f"{corrupt}.*could not be read"):
        AnyTalkerTransformer.from_official(corrupt, RELEASE_DIT_CONFIGS["1.3B"])


def reference_vae_mean():
    return json.loads((require_parity_dir() / "vae_latent_stats.json").read_text())["mean"]
