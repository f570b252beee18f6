"""Step caches through diffusers' hooks (first-block, MagCache, TaylorSeer) and the TeaCache-style
cache: one decision per step for all guidance passes, a fresh cache every window, calibration
written and read back by name, and the pipeline's cache context."""

import json

import numpy as np
import pytest

from anytalker.acceleration import caches
from anytalker.acceleration.calibration import calibrate, write_calibration
from anytalker.faces import FaceBox
from anytalker.pipeline import runner
from anytalker.pipeline.settings import ModelSettings, SamplingSettings, SpeedSettings

STEPS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(frames=9):
    rng = np.random.default_rng(0)
    samples = int(round(frames / 24 * 16000))
    return runner.GenerationInputs(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8),
                                   [rng.standard_normal(samples).astype(np.float32) * 0.1 for _ in range(2)],
                                   [FaceBox(4, 4, 36, 36), FaceBox(52, 8, 84, 40)])


SAMPLING = SamplingSettings(size=(32, 48), steps=STEPS, seed=2, guidance_scale=3.0, audio_guidance_scale=2.0)


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    loaded = runner.load_pipeline(ModelSettings("random-tiny"), progress=False)
    result = calibrate(loaded, [_inputs()], SAMPLING)
    assert result["steps"] == STEPS and len(result["mag_ratios"]) == STEPS and result["mag_ratios"][0] == 1.0
    assert len(result["teacache"]["x"]) == STEPS - 1
    return write_calibration(tmp_path_factory.mktemp("cal") / "tiny.json", result)


def run(speed, frames=9, sampling=SAMPLING):
    loaded = runner.load_pipeline(ModelSettings("random-tiny", speed=speed), progress=False)
    with caches.BlockCounter(loaded.pipe.transformer) as counter:
        result = runner.generate(loaded, _inputs(frames), sampling)
    return result, counter


@pytest.fixture(scope="module")
def plain():
    return run(None)


@pytest.mark.parametrize("kind", ["first-block", "magcache", "taylorseer", "teacache"])
def test_each_cache_skips_blocks_and_stays_close(kind, plain, calibration_file):
    loose = {"first-block": 10.0, "magcache": 10.0, "teacache": 10.0, "taylorseer": None}[kind]
    speed = SpeedSettings(cache=kind, cache_threshold=loose, cache_warmup=1 if kind != "first-block" else None,
                          cache_interval=2 if kind == "taylorseer" else None,
                          cache_calibration=str(calibration_file) if kind in caches.NEEDS_CALIBRATION else None)
    result, counter = run(speed)
    assert counter.calls == STEPS  # 3 guidance passes batched: one transformer call, one decision per step
    assert 0 < counter.skipped_fraction < 1
    assert result.info["speed"]["cache"]["kind"] == kind
    difference = np.abs(result.frames.astype(int) - plain[0].frames).mean()
    assert difference < 20  # random weights: same picture, nearby noise


def test_tight_threshold_changes_nothing(plain):
    result, counter = run(SpeedSettings(cache="first-block", cache_threshold=1e-9))
    assert counter.skipped_fraction == 0 and np.array_equal(result.frames, plain[0].frames)


def test_teacache_keeps_warmup_and_last_step(calibration_file):
    _, counter = run(SpeedSettings(cache="teacache", cache_threshold=1e6, cache_warmup=1,
                                   cache_calibration=str(calibration_file)))
    layers = 2
    assert counter.evaluated == 2 * layers  # step 0 (warm-up) and the last step; steps 1-2 reuse


def test_every_window_starts_with_a_fresh_cache():
    sampling = SamplingSettings(size=(32, 48), steps=STEPS, seed=2, max_frames_per_window=9, motion_frames=5)
    result, counter = run(SpeedSettings(cache="first-block", cache_threshold=1e6), frames=13, sampling=sampling)
    windows, layers = len(result.info["windows"]), 2
    assert windows == 3
    # per window: step 0 computes every block, later steps only the first block (the rest reuse)
    assert counter.evaluated == windows * (layers + (STEPS - 1))


def test_magcache_without_calibration_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibrate-cache"):
        caches.cache_setup(SpeedSettings(cache="magcache"), tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder"):
        runner.load_pipeline(ModelSettings("random-tiny", speed=SpeedSettings(cache="teacache")), progress=False)


def test_calibration_by_name_in_the_model_folder(tmp_path, calibration_file):
    target = caches.calibration_path(tmp_path, "fast")
    assert target == tmp_path / "cache_calibration" / "fast.json"
    write_calibration(target, json.loads(calibration_file.read_text()))
    setup = caches.cache_setup(SpeedSettings(cache="magcache", cache_calibration="fast"), tmp_path)
    assert setup.calibration_file == str(target) and setup.warmup == caches.DEFAULT_WARMUP["magcache"]
    assert caches.calibration_path(tmp_path, None) == tmp_path / "cache_calibration" / "default.json"


def test_calibrate_cache_cli_then_generate(tmp_path):
    from conftest import run_cli
    from PIL import Image

    out = tmp_path / "cal.json"
    code, stdout, err = run_cli(["calibrate-cache", "random-tiny", "--out", str(out), "--scenes", "1",
                                 "--steps", "3"])
    assert code == 0, err
    assert "MagCache ratios" in stdout and len(json.loads(out.read_text())["mag_ratios"]) == 3
    code, _, err = run_cli(["calibrate-cache", "random-tiny", "--cache", "teacache"])
    assert code == 2 and "drop --cache" in err

    import soundfile

    Image.fromarray(np.zeros((64, 96, 3), np.uint8) + 90).save(tmp_path / "i.png")
    soundfile.write(tmp_path / "a.wav", np.random.default_rng(1).standard_normal(4000) * 0.1, 16000)
    code, _, err = run_cli(["generate", "--model", "random-tiny", "--image", str(tmp_path / "i.png"), "--audio",
                            str(tmp_path / "a.wav"), "--bbox", "8,8,40,40", "--size", "32x48", "--steps", "3",
                            "--out", str(tmp_path / "o.mp4"), "--quiet", "--cache", "teacache",
                            "--cache-calibration", str(out)])
    assert code == 0, err
    sidecar = json.loads((tmp_path / "o.json").read_text())
    assert sidecar["speed"]["cache"]["calibration"] == str(out)


def test_pipeline_calls_run_inside_a_cache_context():
    loaded = runner.load_pipeline(ModelSettings("random-tiny"), progress=False)
    transformer = loaded.pipe.transformer
    original, current, seen = transformer.cache_context, [None], []

    def recording(name, **kwargs):
        current[0] = (name, kwargs)
        return original(name, **kwargs)

    transformer.cache_context = recording
    transformer.register_forward_pre_hook(lambda *_: seen.append(current[0]))
    runner.generate(loaded, _inputs(), SamplingSettings(size=(32, 48), steps=3, seed=0))
    assert [kwargs["step_index"] for _, kwargs in seen] == [0, 1, 2]
    assert all(kwargs["num_inference_steps"] == 3 and kwargs["sigma"] is not None for _, kwargs in seen)


def test_puppets_tiny_keeps_lip_sync_and_binding_while_skipping():
    """The bundled model with its shipped calibration: TeaCache 0.1 skips >= 40% of the block
    evaluations on held-out scenes and keeps lip sync (own track) >= 0.95x and binding as uncached
    (benchmarks/cache_quality.py has the table over 12 scenes and every cache)."""
    from anytalker.puppets.model import evaluation_scenes, generate_scene, scene_metrics, summarize_metrics

    scenes = evaluation_scenes(2)

    def evaluate(speed):
        loaded = runner.load_pipeline(ModelSettings("puppets-tiny", dtype="fp32", speed=speed), progress=False)
        with caches.BlockCounter(loaded.pipe.transformer) as counter:
            summary = summarize_metrics([scene_metrics(generate_scene(loaded, scene), scene) for scene in scenes])
        return summary, counter.skipped_fraction

    uncached, _ = evaluate(None)
    cached, skipped = evaluate(SpeedSettings(cache="teacache", cache_threshold=0.1))
    assert skipped >= 0.4
    assert cached["lip_own"] >= 0.95 * uncached["lip_own"]
    assert cached["binding"] == uncached["binding"]
