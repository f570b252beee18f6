"""The one generation API (`anytalker.pipeline.runner` + `settings`) and the layering rule it serves."""

import ast
import json
import re

import numpy as np
import pytest
from conftest import REPO_ROOT, run_cli

from anytalker.faces import FaceBox
from anytalker.pipeline import runner
from anytalker.pipeline.settings import (
    InputSettings,
    ModelSettings,
    SamplingSettings,
    SettingsError,
    flag_label,
    parse_size,
)

SRC = REPO_ROOT / "src" / "anytalker"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("settings, field, message", [
    (SamplingSettings(size=(33, 48)), "size", "size 33x48: height and width must be positive multiples of 16"),
    (SamplingSettings(max_frames_per_window=80), "max_frames_per_window", "max_frames_per_window must be 4n+1"),
    (SamplingSettings(motion_frames=6), "motion_frames", "motion_frames must be 4n+1"),
    (SamplingSettings(max_frames_per_window=9, motion_frames=9), "motion_frames", "must be smaller than"),
    (SamplingSettings(steps=0), "steps", "steps and fps must be >= 1, got 0 and 24"),
    (SamplingSettings(fps=0), "fps", "steps and fps must be >= 1"),
    (SamplingSettings(guidance_scale=0.5), "guidance_scale", "guidance_scale must be >= 1, got 0.5"),
    (SamplingSettings(audio_guidance_scale=0.0), "audio_guidance_scale", "audio_guidance_scale must be >= 1"),
    (SamplingSettings(area=10), "area", "area must be at least 256 pixels"),
])
def test_sampling_rules_name_the_field(settings, field, message):
    with pytest.raises(SettingsError, match=re.escape(message)) as caught:
        settings.validate()
    assert caught.value.field == field
    with pytest.raises(SettingsError, match=re.escape(flag_label(field))):
        settings.validate(flag_label)  # the CLI's spelling of the same rule


def test_model_and_input_rules():
    with pytest.raises(SettingsError, match="variant '7B'"):
        ModelSettings(variant="7B").validate()
    with pytest.raises(SettingsError, match="scheduler 'ddim'"):
        ModelSettings(scheduler="ddim").validate()
    with pytest.raises(SettingsError, match="flow_shift must be positive"):
        ModelSettings(flow_shift=0).validate()
    with pytest.raises(SettingsError, match="order 'random'"):
        InputSettings(order="random").validate()
    with pytest.raises(SettingsError, match="expected HxW"):
        parse_size("480by832")
    assert parse_size("480x832") == (480, 832)


def test_model_defaults_fill_only_what_is_unset():
    tiny = runner.resolved_sampling(ModelSettings("random-tiny"), SamplingSettings(guidance_scale=2.0))
    assert (tiny.steps, tiny.area, tiny.guidance_scale, tiny.max_frames_per_window) == (4, 32 * 48, 2.0, 81)
    release = runner.resolved_sampling(ModelSettings("checkpoints"), SamplingSettings(steps=7))
    assert (release.steps, release.area, release.guidance_scale) == (7, 480 * 832, 4.5)
    puppets = runner.resolved_sampling(ModelSettings("puppets-tiny"), SamplingSettings())
    assert (puppets.steps, puppets.guidance_scale) == (20, 1.0)
    with pytest.raises(TypeError, match="unknown sampling settings"):
        SamplingSettings().with_defaults(stepz=3)


def _two_person_inputs(seconds=0.5):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    tracks = [rng.standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1 for _ in range(2)]
    boxes = [FaceBox(4, 8, 36, 40), FaceBox(56, 8, 88, 40)]
    return runner.GenerationInputs(image, tracks, boxes, "two people talk")


def test_generate_reports_progress_and_can_be_cancelled():
    loaded = runner.load_pipeline(ModelSettings("random-tiny"), progress=False)
    inputs = _two_person_inputs(seconds=0.5)  # 12 frames -> 13 generated -> 2 windows of <= 9
    events = []
    sampling = SamplingSettings(size=(32, 48), steps=2, max_frames_per_window=9, motion_frames=5)
    result = runner.generate(loaded, inputs, sampling, on_step=events.append)
    assert result.frames.shape == (12, 32, 48, 3) and result.frames.dtype == np.uint8
    assert [(e["window"], e["step"]) for e in events] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [e["fraction"] for e in events] == [0.25, 0.5, 0.75, 1.0]
    assert {e["windows"] for e in events} == {2}
    assert result.info["num_inference_steps"] == 2 and result.info["model"] == "random-tiny"

    plain = runner.generate(loaded, inputs, sampling)  # a progress callback changes nothing
    assert np.array_equal(plain.frames, result.frames)

    calls = []
    with pytest.raises(runner.GenerationCancelled):
        runner.generate(loaded, inputs, sampling, should_stop=lambda: calls.append(1) or len(calls) >= 3)
    assert len(calls) == 3  # stopped at the third step, not at the end


def test_random_tiny_without_size_or_steps_is_small(tmp_path):
    """`--model random-tiny` alone must not sample 40 steps at 480p (20+ minutes on 2 cores)."""
    from test_generate import BOXES_2P1, IMAGES, needs_examples  # noqa: F401  (shared example inputs)

    if not IMAGES.is_dir():
        pytest.skip(f"example inputs not found at {IMAGES}")
    wave = (np.sin(np.arange(8000) / 7.0) * 0.3).astype(np.float32)
    from test_generate import write_wav

    track = write_wav(tmp_path / "a.wav", wave)
    out = tmp_path / "tiny.mp4"
    code, _, err = run_cli(["generate", "--model", "random-tiny", "--image", str(IMAGES / "2p-1.png"),
                            "--audio", str(track), "--bbox", BOXES_2P1[0], "--out", str(out), "--quiet"])
    assert code == 0, err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["num_inference_steps"] == 4
    assert meta["height"] * meta["width"] <= 2 * 32 * 48 and meta["width"] > meta["height"]  # 2p-1 is 3:2


def _imports(path):
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module or ""


def test_nothing_below_a_surface_imports_the_cli():
    offenders = [f"{path.relative_to(SRC)} imports {name}" for path in SRC.rglob("*.py")
                 if "cli" not in path.relative_to(SRC).parts[:1]
                 for name in _imports(path) if name == "anytalker.cli" or name.startswith("anytalker.cli.")]
    assert offenders == []


def test_no_private_name_imported_across_packages():
    offenders = []
    for path in SRC.rglob("*.py"):
        own = path.relative_to(SRC).parts[0]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level >= 2 or (node.module or "").startswith("anytalker.")):
                if node.level == 1:
                    continue
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                target = (node.module or "").removeprefix("anytalker.").split(".")[0]
                if private and target != own:
                    offenders.append(f"{path.relative_to(SRC)}: {private} from {node.module}")
    assert offenders == []


def test_too_many_unipc_steps_is_a_settings_error():
    """UniPC's timesteps repeat past ~300 steps at shift 3 and its update then fails mid-run."""
    with pytest.raises(SettingsError, match="steps 400 is too many for the unipc scheduler") as caught:
        runner.resolved_sampling(ModelSettings("random-tiny"), SamplingSettings(steps=400))
    assert caught.value.field == "steps"
    assert runner.resolved_sampling(ModelSettings("random-tiny"), SamplingSettings(steps=300)).steps == 300
    euler = ModelSettings("random-tiny", scheduler="euler")
    assert runner.resolved_sampling(euler, SamplingSettings(steps=400)).steps == 400


def test_step_limit_follows_the_preset_scheduler():
    """--preset few-step samples with euler: its step count is not UniPC's to limit."""
    from anytalker.pipeline.settings import SpeedSettings

    few_step = ModelSettings("random-tiny", speed=SpeedSettings(preset="few-step"))
    assert runner.resolved_sampling(few_step, SamplingSettings(steps=400)).steps == 400
