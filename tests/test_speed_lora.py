"""LoRA files in the Wan-original, musubi and diffusers key layouts on AnyTalkerTransformer (the
audio/face modules included): unfused, fused and merged by hand into the weights give the same
output; a file that matches nothing is refused with a clear error."""

import copy

import pytest
import torch
from conftest import random_transformer_inputs
from safetensors.torch import save_file

from anytalker.acceleration import lora
from anytalker.models.official_checkpoint import diffusers_key_to_official
from anytalker.pipeline import runner
from anytalker.pipeline.settings import ModelSettings, SpeedSettings
from anytalker.pipeline.tiny import random_tiny_components

RANK = 3
SCALE = 0.7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base():
    return random_tiny_components(0)["transformer"]


def _inputs(transformer, frames=2, identities=2):
    return random_transformer_inputs(transformer, frames, (4, 6), identities)


def make_lora(transformer, layout: str, seed: int = 1):
    """(file state dict in `layout`, {our module: (delta W, delta b)}) for every linear layer of the
    blocks (attention incl. AFCA's face/audio projections, FFN) and of the audio projector / face
    embedder; deltas already include alpha / rank."""
    g = torch.Generator().manual_seed(seed)
    state, deltas = {}, {}
    for name, module in lora.linear_module_names(transformer).items():
        if not name.startswith(("blocks.", "audio_projector.", "face_embedder.")):
            continue
        down = torch.randn(RANK, module.in_features, generator=g) * 0.2
        up = torch.randn(module.out_features, RANK, generator=g) * 0.2
        release = diffusers_key_to_official(f"{name}.weight", "fused").removesuffix(".weight")
        if layout == "wan":
            alpha, bias = 2.0, torch.randn(module.out_features, generator=g) * 0.05
            key = f"diffusion_model.{release}"
            state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                          f"{key}.alpha": torch.tensor(alpha), f"{key}.diff_b": bias})
        elif layout == "musubi":
            alpha, bias = 1.5, None
            key = "lora_unet_" + release.replace(".", "_")
            state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                          f"{key}.alpha": torch.tensor(alpha)})
        else:  # diffusers: our own names, no alpha (scale 1)
            alpha, bias = RANK, None
            state.update({f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up})
        deltas[name] = ((alpha / RANK) * up @ down, bias)
    return state, deltas


def merged_by_hand(base, deltas, scale):
    model = copy.deepcopy(base)
    linears = lora.linear_module_names(model)
    with torch.no_grad():
        for name, (delta, bias) in deltas.items():
            linears[name].weight += scale * delta
            if bias is not None:
                linears[name].bias += scale * bias
    return model


@pytest.mark.parametrize("layout", ["wan", "musubi", "diffusers"])
def test_unfused_fused_and_merged_agree(base, layout, tmp_path):
    state, deltas = make_lora(base, layout)
    path = tmp_path / f"{layout}.safetensors"
    save_file(state, str(path))
    x = _inputs(base)
    with torch.no_grad():
        plain = base(**x).sample
        merged = merged_by_hand(base, deltas, SCALE)(**x).sample

        model = copy.deepcopy(base)
        (report,) = lora.load_loras(model, [(path, SCALE)], fuse=False)
        assert report.layout == layout and report.keys_matched == report.keys_total == len(state)
        assert report.modules == len(deltas)
        assert any(".attn2.to_k_audio" in m for m in lora.lora_modules(model))  # AFCA's audio path adapted
        unfused = model(**x).sample
        lora.fuse_loras(model)
        fused = model(**x).sample
        lora.unfuse_loras(model)
        unfused_again = model(**x).sample

    assert (unfused - plain).abs().max() > 1e-2  # the LoRA changes the output
    assert (unfused - merged).abs().max() < 1e-5
    assert (fused - merged).abs().max() < 1e-5
    assert (unfused_again - unfused).abs().max() < 1e-5


def test_two_loras_at_their_scales_and_baked_weights(base, tmp_path):
    first, first_deltas = make_lora(base, "wan", seed=1)
    second, second_deltas = make_lora(base, "musubi", seed=2)
    save_file(first, str(tmp_path / "a.safetensors"))
    save_file(second, str(tmp_path / "b.safetensors"))
    x = _inputs(base)
    model = copy.deepcopy(base)
    lora.load_loras(model, [(tmp_path / "a.safetensors", 0.5), (tmp_path / "b.safetensors", -0.25)], fuse=True)
    lora.bake_loras(model)  # plain layers holding the merged weights (what quantization gets)
    assert not lora.lora_modules(model)
    expected = merged_by_hand(merged_by_hand(base, first_deltas, 0.5), second_deltas, -0.25)
    with torch.no_grad():
        assert (model(**x).sample - expected(**x).sample).abs().max() < 1e-5


def test_unmatched_file_is_a_clear_error(base, tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768),
               "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(3072, 4)}, str(path))
    with pytest.raises(lora.LoraError, match=r"no key of LoRA .*sdxl.safetensors matches a module of this "
                                             r"transformer .*lora_te1_text_model"):
        lora.load_loras(copy.deepcopy(base), [(path, 1.0)])


def test_partly_matching_file_reports_what_it_left(base, tmp_path):
    state, _ = make_lora(base, "wan")
    state["diffusion_model.blocks.0.norm3.diff"] = torch.zeros(32)
    state["lora_te_text_encoder.lora_down.weight"] = torch.zeros(2, 2)
    report = lora.load_loras(copy.deepcopy(base), [(state, 1.0)], fuse=False)[0]
    assert report.keys_total == report.keys_matched + 2
    assert "diffusion_model.blocks.0.norm3.diff" in report.unmatched
    assert f"{report.keys_matched} of {report.keys_total} keys matched" in report.summary()


def test_shape_mismatch_names_the_layer(base):
    state = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 1536),
             "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(1536, 4)}
    with pytest.raises(lora.LoraError, match="blocks.0.attn1.to_q.*another model size"):
        lora.load_loras(copy.deepcopy(base), [(state, 1.0)])


def test_load_pipeline_applies_loras_from_settings(base, tmp_path):
    state, deltas = make_lora(base, "musubi")
    path = tmp_path / "distill.safetensors"
    save_file(state, str(path))
    loaded = runner.load_pipeline(ModelSettings("random-tiny", speed=SpeedSettings(lora=((str(path), SCALE),))),
                                  progress=False)
    (applied,) = loaded.speed["lora"]
    assert applied["layout"] == "musubi" and applied["keys_matched"] == len(state)
    x = _inputs(base)
    with torch.no_grad():
        expected = merged_by_hand(base, deltas, SCALE)(**x).sample
        assert (loaded.pipe.transformer(**x).sample - expected).abs().max() < 1e-5


def test_cli_reports_matched_keys_and_refuses_an_unmatched_file(base, tmp_path):
    import numpy as np
    import soundfile
    from conftest import run_cli
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    soundfile.write(tmp_path / "a.wav", np.random.default_rng(1).standard_normal(4000) * 0.1, 16000)
    state, _ = make_lora(base, "wan")
    save_file(state, str(tmp_path / "good.safetensors"))
    save_file({"lora_te1_x.lora_down.weight": torch.zeros(2, 4)}, str(tmp_path / "bad.safetensors"))
    argv = ["generate", "--model", "random-tiny", "--image", str(tmp_path / "i.png"), "--audio",
            str(tmp_path / "a.wav"), "--bbox", "8,8,40,40", "--size", "32x48", "--steps", "1"]
    good = f"{tmp_path / 'good.safetensors'}:0.5"
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "good.mp4"), "--lora", good])
    assert code == 0, err
    assert f"{len(state)} of {len(state)} keys matched" in err and "wan layout" in err
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "bad.mp4"), "--lora", str(tmp_path / "bad.safetensors")])
    assert code == 2 and "no key of LoRA" in err and not (tmp_path / "bad.mp4").exists()
