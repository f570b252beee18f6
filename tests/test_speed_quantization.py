"""Weight memory: fp8 storage, torchao weight-only int8 / fp8, group offload.

Memory method (full-size 1.3B config, no 3.8 GB allocation): `acceleration.quantization.weight_memory`
builds the model on the meta device in bf16 (float32 where `_keep_in_fp32_modules` says, as
loading does); fp8-storage casts the meta tensors; for int8 / fp8 one real layer of each distinct
quantized shape (3 in the 1.3B blocks) is materialised, quantized with torchao and measured, and
that size is counted for all 480 such layers. The same estimate is checked against a real
quantized puppets-tiny model here. Output tolerances are relative L2 errors on puppets-tiny.
"""

import copy

import pytest
import torch
from conftest import random_transformer_inputs

from anytalker.acceleration import quantization as q
from anytalker.models import AnyTalkerTransformer
from anytalker.models.official_checkpoint import RELEASE_DIT_CONFIGS, config_from_official
from anytalker.pipeline import runner
from anytalker.pipeline.settings import ModelSettings, SamplingSettings, SettingsError, SpeedSettings

needs_torchao = pytest.mark.skipif(q.torchao_problem() is not None, reason="torchao is not installed")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def puppets_transformer():
    return AnyTalkerTransformer.from_pretrained(runner.bundled_puppets_folder() / "transformer").eval()


def _inputs(transformer, frames=5, identities=2, dtype=torch.float32):
    return random_transformer_inputs(transformer, frames, (8, 12), identities, dtype)


def relative_error(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("mode, limit", [pytest.param("int8", 0.55, marks=needs_torchao), ("fp8-storage", 0.55),
                                         pytest.param("fp8", 0.55, marks=needs_torchao)])
def test_full_size_weight_memory_ratio(mode, limit):
    config = config_from_official(RELEASE_DIT_CONFIGS["1.3B"])
    bf16 = q.weight_memory(config, None)
    quantized = q.weight_memory(config, mode)
    assert bf16["parameters"] > 1.8e9  # the 1.3B DiT with AFCA's projections: 1.9e9 parameters
    ratio = quantized["bytes"] / bf16["bytes"]
    assert ratio <= limit, ratio  # measured: int8 0.524, fp8-storage 0.523, fp8 0.524
    if mode != "fp8-storage":
        assert quantized["quantized_layers"] == 30 * 16  # every linear layer of the 30 blocks


@pytest.mark.parametrize("mode", [pytest.param("int8", marks=needs_torchao), "fp8-storage"])
def test_memory_estimate_matches_a_real_quantized_model(puppets_transformer, mode):
    model = copy.deepcopy(puppets_transformer).to(torch.bfloat16)
    for name, param in model.named_parameters():  # keep_in_fp32 modules as loading keeps them
        if any(part in name.split(".") for part in model._keep_in_fp32_modules):
            param.data = param.data.float()
    q.quantize_weights(model, mode, torch.bfloat16)
    assert q.weight_bytes(model) == q.weight_memory(dict(puppets_transformer.config), mode)["bytes"]


@pytest.mark.parametrize("mode, tolerance", [pytest.param("int8", 0.02, marks=needs_torchao),
                                             ("fp8-storage", 0.06)])
def test_output_within_tolerance_fp32(puppets_transformer, mode, tolerance):
    x = _inputs(puppets_transformer)
    model = copy.deepcopy(puppets_transformer)
    info = q.quantize_weights(model, mode, torch.float32)
    assert info["layers"] == 4 * 16 and "audio_projector" in info["kept_full_precision"]
    with torch.no_grad():
        error = relative_error(model(**x).sample, puppets_transformer(**x).sample)
    assert error < tolerance, error  # measured: int8 0.0067, fp8-storage 0.030


@needs_torchao
def test_torchao_fp8_weight_only_in_bf16(puppets_transformer):
    reference = copy.deepcopy(puppets_transformer).to(torch.bfloat16)
    model = copy.deepcopy(reference)
    q.quantize_weights(model, "fp8", torch.bfloat16)
    x = _inputs(puppets_transformer, dtype=torch.bfloat16)
    with torch.no_grad():
        error = relative_error(model(**x).sample, reference(**x).sample)
    assert error < 0.06, error  # measured 0.031 against the bf16 model


def test_group_offload_gives_the_same_video():
    from anytalker.faces import FaceBox
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = runner.GenerationInputs(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8),
                                     [rng.standard_normal(4000).astype(np.float32) * 0.1 for _ in range(2)],
                                     [FaceBox(4, 4, 36, 36), FaceBox(52, 8, 84, 40)])
    sampling = SamplingSettings(size=(32, 48), steps=2, seed=3)
    plain = runner.generate(runner.load_pipeline(ModelSettings("random-tiny"), progress=False), inputs, sampling)
    for offload in ("block", "leaf"):
        loaded = runner.load_pipeline(ModelSettings("random-tiny", speed=SpeedSettings(offload=offload)),
                                      progress=False)
        result = runner.generate(loaded, inputs, sampling)
        assert result.info["speed"]["offload"] == offload
        assert np.array_equal(result.frames, plain.frames)


def test_model_offload_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SettingsError, match="offload model needs a GPU"):
        SpeedSettings(offload="model").validate()
