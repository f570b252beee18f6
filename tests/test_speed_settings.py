"""SpeedSettings (the one place the speed flags are checked), their CLI flags, and the attention
backend choice: every attention of the transformer, the grouped audio-face one included, goes
through diffusers' dispatch without a mask, so the chosen backend serves all of them."""

import re

import pytest
import torch
from conftest import random_transformer_inputs, run_cli

from anytalker.acceleration import backends
from anytalker.pipeline import runner
from anytalker.pipeline.settings import (
    ModelSettings,
    SamplingSettings,
    SettingsError,
    SpeedSettings,
    flag_label,
    parse_lora,
)
from anytalker.pipeline.tiny import random_tiny_components


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def restore_backend():
    """set_attention_backend also sets diffusers' process-wide active backend: put native back."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    yield
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)


@pytest.mark.parametrize("speed, field, message", [
    (SpeedSettings(attention_backend="flash_hub"), "attention_backend", "hub backends download kernels"),
    (SpeedSettings(attention_backend="nonsense"), "attention_backend", "choose from"),
    (SpeedSettings(lora=(("missing.safetensors", 1.0),)), "lora", "missing.safetensors: no such file"),
    (SpeedSettings(preset="zero-step"), "preset", "preset 'zero-step': choose from few-step"),
    (SpeedSettings(quantize="int4"), "quantize", "quantize 'int4': choose from fp8-storage, int8, fp8"),
    (SpeedSettings(offload="disk"), "offload", "offload 'disk'"),
    (SpeedSettings(offload_blocks=0), "offload_blocks", "offload_blocks must be >= 1"),
    (SpeedSettings(cache="deepcache"), "cache", "cache 'deepcache'"),
    (SpeedSettings(cache="first-block", cache_threshold=0), "cache_threshold", "must be positive"),
    (SpeedSettings(cache="taylorseer", cache_interval=0), "cache_interval", "integer >= 1"),
    (SpeedSettings(cache="taylorseer", cache_patterns=("blocks[",)), "cache_patterns", "blocks["),
    (SpeedSettings(cache_threshold=0.1), "cache_threshold", "needs cache"),
    (SpeedSettings(cache="magcache", cache_calibration="nowhere/ratios.json"), "cache_calibration", "no such file"),
])
def test_speed_rules_name_the_field(speed, field, message):
    with pytest.raises(SettingsError, match=re.escape(message)) as caught:
        speed.validate()
    assert caught.value.field == field
    with pytest.raises(SettingsError, match=re.escape(flag_label(field))):
        ModelSettings("random-tiny", speed=speed).validate(flag_label)  # checked with the model settings


def test_missing_kernel_is_a_clear_error_before_any_weights():
    for name in ("flash", "sage", "_flash_3"):
        problem = backends.backend_problem(name)
        if problem is None:
            pytest.skip(f"{name} is installed and usable here")
        assert "not installed" in problem or "CUDA" in problem
    with pytest.raises(SettingsError, match=r"attention_backend sage: its kernel \(sageattention\) is not installed"):
        SpeedSettings(attention_backend="sage").validate()


def test_backend_choices_are_diffusers_registry_without_hub():
    from diffusers.models.attention_dispatch import AttentionBackendName

    choices = backends.backend_choices()
    assert {"native", "flash", "_flash_3", "sage", "flex", "_native_math"} <= set(choices)
    assert not [c for c in choices if c.endswith("_hub")]
    assert set(choices) == {b.value for b in AttentionBackendName} - {b.value for b in AttentionBackendName
                                                                       if b.value.endswith("_hub")}


def test_lora_flag_parsing_and_lora_quantize_rule(tmp_path):
    assert parse_lora("a.safetensors") == ("a.safetensors", 1.0)
    assert parse_lora("dir/a.safetensors:0.75") == ("dir/a.safetensors", 0.75)
    path = tmp_path / "l.safetensors"
    path.write_bytes(b"")
    with pytest.raises(SettingsError, match="needs fused LoRAs"):
        SpeedSettings(lora=((str(path), 1.0),), fuse_lora=False, quantize="fp8-storage").validate()


def test_preset_fills_only_what_is_unset():
    few = ModelSettings("checkpoints", speed=SpeedSettings(preset="few-step"))
    sampling = runner.resolved_sampling(few, SamplingSettings())
    assert (sampling.steps, sampling.guidance_scale) == (4, 1.0)
    assert runner.resolved_sampling(few, SamplingSettings(steps=8)).steps == 8
    assert few.resolved_scheduler() == ("euler", 5.0)
    assert ModelSettings("checkpoints", flow_shift=7.0, speed=few.speed).resolved_scheduler() == ("euler", 7.0)
    assert ModelSettings("checkpoints", scheduler="euler", flow_shift=3.0,
                         speed=few.speed).resolved_scheduler() == ("euler", 3.0)
    assert ModelSettings("checkpoints").resolved_scheduler() == ("unipc", None)


def test_cli_flags_become_speed_settings(tmp_path):
    from anytalker.cli import build_parser
    from anytalker.cli.common import model_settings

    lora = tmp_path / "distill.safetensors"
    lora.write_bytes(b"")
    args = build_parser().parse_args([
        "generate", "--model", "random-tiny", "--attention-backend", "_native_math", "--lora", f"{lora}:0.5",
        "--no-fuse-lora", "--preset", "few-step", "--offload", "leaf", "--compile", "--cache", "taylorseer",
        "--cache-interval", "2", "--cache-patterns", r"blocks\.\d+\.ffn,proj_out"])
    speed = model_settings(args).speed
    assert speed == SpeedSettings(attention_backend="_native_math", lora=((str(lora), 0.5),), fuse_lora=False,
                                  preset="few-step", offload="leaf", compile=True, cache="taylorseer",
                                  cache_interval=2, cache_patterns=(r"blocks\.\d+\.ffn", "proj_out"))
    plain = build_parser().parse_args(["generate", "--model", "random-tiny"])
    assert model_settings(plain).speed is None


def test_cli_refuses_a_missing_kernel_before_loading(tmp_path):
    code, _, err = run_cli(["generate", "--model", "random-tiny", "--attention-backend", "sage", "--image", "x.png",
                            "--audio", "a.wav", "--out", str(tmp_path / "o.mp4")])
    if backends.backend_problem("sage") is None:
        pytest.skip("sage is usable here")
    assert code == 2 and "--attention-backend sage: its kernel (sageattention) is not installed" in err


@pytest.mark.parametrize("variant", ["fused", "separate"])
def test_every_attention_dispatches_to_the_chosen_backend_without_a_mask(variant, monkeypatch, restore_backend):
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from anytalker.models import AnyTalkerTransformer

    base = random_tiny_components(0)["transformer"]
    transformer = AnyTalkerTransformer.from_config({**base.config, "audio_attention": variant,
                                                    "audio_token_dim": 32}).eval()
    x = random_transformer_inputs(transformer)
    with torch.no_grad():
        reference = transformer(**x).sample

    calls = {"native": 0, "_native_math": 0, "masked": 0}
    registry = _AttentionBackendRegistry._backends
    for name in ("native", "_native_math"):
        original = registry[AttentionBackendName(name)]

        def spy(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            calls["masked"] += kwargs.get("attn_mask") is not None
            return _original(*args, **kwargs)

        monkeypatch.setitem(registry, AttentionBackendName(name), spy)
    backends.apply_attention_backend(transformer, "_native_math")
    assert set(backends.processor_backends(transformer).values()) == {"_native_math"}
    with torch.no_grad():
        output = transformer(**x).sample
    layers = transformer.config.num_layers
    # per block: self-attention, text, image and at least one grouped audio-face call
    assert calls["_native_math"] >= 4 * layers and calls["native"] == 0 and calls["masked"] == 0
    assert torch.allclose(output, reference, atol=1e-5)


def test_load_pipeline_applies_the_backend(restore_backend):
    loaded = runner.load_pipeline(ModelSettings("random-tiny", speed=SpeedSettings(attention_backend="_native_math")),
                                  progress=False)
    assert set(backends.processor_backends(loaded.pipe.transformer).values()) == {"_native_math"}
    assert loaded.speed == {"attention_backend": "_native_math"}
