"""AnyTalkerPipeline's numbered steps: step callbacks as diffusers' contract, interrupt, input checks
from the settings' rules, VAE geometry, and the conditioning functions the trainer shares."""

import numpy as np
import pytest
import torch

from anytalker.faces import FaceBox
from anytalker.pipeline import AnyTalkerPipeline, conditioning
from anytalker.pipeline.settings import SettingsError
from anytalker.pipeline.tiny import random_tiny_components


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_generate.py: the toy models run faster on one thread
    pipe = AnyTalkerPipeline(**random_tiny_components(0))
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    torch.set_num_threads(threads)


def _run(pipe, seconds=0.5, **kwargs):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    audio = [(0.1 * rng.standard_normal(round(seconds * 16000))).astype(np.float32)]
    options = dict(prompt="a man talking", height=32, width=48, num_inference_steps=2, max_frames_per_window=9,
                   generator=torch.Generator().manual_seed(0), output_type="pt")
    return pipe(image, audio, [FaceBox(32, 8, 80, 56)], **{**options, **kwargs})


def test_callback_returned_latents_replace_the_loops(pipe):
    plain = _run(pipe).frames
    assert torch.equal(_run(pipe, callback_on_step_end=lambda p, step, t, kwargs: {}).frames, plain)

    seen = []

    def scale(p, step, timestep, kwargs):
        seen.append((p.current_window, step, sorted(kwargs)))
        return {"latents": kwargs["latents"] * 0.5}

    changed = _run(pipe, callback_on_step_end=scale).frames
    assert changed.shape == plain.shape and not torch.equal(changed, plain)
    # 13 frames -> windows of 9 and 9 (5 carried); 2 steps each; only the requested tensors are passed.
    assert seen == [(w, s, ["latents"]) for w in (0, 1) for s in (0, 1)]


def test_callback_tensor_inputs_are_named_and_shaped(pipe):
    shapes = {}

    def record(p, step, timestep, kwargs):
        shapes.update({k: tuple(v.shape) for k, v in kwargs.items()})
        return {}

    names = ["latents", "condition", "audio_embeds", "face_token_masks", "prompt_embeds"]
    _run(pipe, seconds=0.3, callback_on_step_end=record, callback_on_step_end_tensor_inputs=names)
    assert shapes["latents"] == (1, 16, 3, 4, 6) and shapes["condition"] == (1, 20, 3, 4, 6)
    assert shapes["audio_embeds"][:3] == (2, 1, 9)  # [passes, N, window frames, ...]
    assert shapes["face_token_masks"] == (1, 1, 2, 3) and shapes["prompt_embeds"][0] == 1


def test_unknown_callback_tensor_input_is_a_value_error(pipe, monkeypatch):
    monkeypatch.setattr(pipe.transformer, "forward", lambda **kw: pytest.fail("checked before any model runs"))
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs.*'noise'"):
        _run(pipe, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["latents", "noise"])


def test_interrupt_skips_the_remaining_steps_and_windows(pipe):
    steps = []

    def stop(p, step, timestep, kwargs):
        steps.append((p.current_window, step))
        p._interrupt = True
        return {}

    result = _run(pipe, callback_on_step_end=stop)
    assert steps == [(0, 0)] and pipe.interrupt
    assert result.frames.shape[0] == 9  # window 0 only, decoded after its first step
    _run(pipe, num_inference_steps=1)
    assert not pipe.interrupt  # every call starts uninterrupted


@pytest.mark.parametrize("options, message", [
    ({"max_frames_per_window": 8}, r"max_frames_per_window must be 4n\+1"),
    ({"motion_frames": 9, "max_frames_per_window": 9}, "must be smaller than"),
    ({"height": 33}, "multiples of 16"),
    ({"guidance_scale": 0.5}, "guidance_scale must be >= 1"),
    ({"num_inference_steps": 0}, "steps"),
])
def test_sampling_checks_are_the_settings_rules(pipe, options, message):
    with pytest.raises(SettingsError, match=message):
        _run(pipe, **options)


def test_geometry_comes_from_the_vae_config(pipe):
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal) == (8, 4)
    assert pipe.patch_size == (2, 2)


def test_face_crops_keep_at_least_one_pixel():
    image = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).view(2, 3, 10, 12)[:1]
    valid, thin = conditioning.face_crops(image, [FaceBox(2.5, 1.2, 7.9, 6.0), [3.2, 4.1, 3.8, 4.6]])
    assert torch.equal(valid, image[:, :, 1:6, 2:7])  # int() of each coordinate, as before
    assert torch.equal(thin, image[:, :, 4:5, 3:4])


def test_pixels_and_condition_layout():
    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 16, 3), dtype=np.uint8)
    clip = conditioning.pixels(frames)
    assert clip.shape == (1, 3, 5, 8, 16) and clip.min() >= -1 and clip.max() <= 1
    assert torch.equal(conditioning.pixels(frames[0]), clip[:, :, 0])
    regions = conditioning.face_regions([[2, 1, 8, 7]], 8, 16)
    reference = torch.randn(16, 2, 1, 2)
    y = conditioning.condition_latents(regions, reference, 5)
    assert y.shape == (20, 2, 1, 2) and torch.equal(y[4:], reference)
    batched = conditioning.condition_latents(regions, reference[None], 5)
    assert torch.equal(batched[0], y)
