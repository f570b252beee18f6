"""MultiTalk job files read as MultiTalk's own code reads them, and images of every PIL mode.

- `bbox` is each person's REGION, [row0, col0, row1, col1] in cond_image pixels (MultiTalk fills
  mask[b0:b2, b1:b3]); the face is detected inside it and bound to that person's track.
- relative paths are relative to the current directory (MultiTalk's repo root), else to the
  job file's folder; `audio_type` add = turns one after another (concat), para = together (pad).
- `load_image` returns RGB uint8 for RGBA (composited over white), grey, palette, 16-bit, CMYK.

Real inputs: the two-person example 2p-1 placed on a 2400 px wide canvas (MultiTalk's examples
are 2-3k px wide), 2p-0 (an RGBA PNG), and short cuts of the 2p-1 speech tracks.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image
from test_generate import (  # noqa: F401  (turns is a fixture)
    BOXES_2P1,
    IMAGES,
    assert_video,
    generate,
    needs_examples,
    sidecar,
    turns,
)

from anytalker import cli
from anytalker.faces import FaceBox, load_image
from anytalker.faces.detection import FaceCountError
from anytalker.pipeline import runner
from anytalker.pipeline.tasks import GenerationTask, prepare_task, read_batch_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDE_HW = (1300, 2400)  # height, width of the wide canvas
OFFSET = (432, 138)  # (x, y) where 2p-1 (1536 x 1024) sits on it
# Person regions as a MultiTalk job gives them, rows first: each person's half of the picture,
# top to bottom (upper body, not face). person1 is the RIGHT person, so that binding by person
# order differs from the left-to-right default.
RIGHT_REGION = [138, 1200, 1162, 1968]
LEFT_REGION = [138, 432, 1162, 1200]


def _shifted(text):
    x0, y0, x1, y1 = (int(v) for v in text.split(","))
    return FaceBox(x0 + OFFSET[0], y0 + OFFSET[1], x1 + OFFSET[0], y1 + OFFSET[1])


# The faces of 2p-1 (dlib on the whole image) moved onto the canvas.
LEFT_FACE, RIGHT_FACE = _shifted(BOXES_2P1[0]), _shifted(BOXES_2P1[1])


def iou(a, b):
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    inter = max(w, 0) * max(h, 0)
    return inter / (a.area + b.area - inter)


def inside(box, region_xy):
    """box (FaceBox or [x0, y0, x1, y1]) within an x-first region."""
    x0, y0, x1, y1 = box.as_tuple() if isinstance(box, FaceBox) else box
    return region_xy[0] <= x0 and region_xy[1] <= y0 and x1 <= region_xy[2] and y1 <= region_xy[3]


def x_first(region):
    row0, col0, row1, col1 = region
    return [col0, row0, col1, row1]


@pytest.fixture
def model_loads(monkeypatch):
    """Counts model loads (the real loader still runs)."""
    calls, real = [], runner.load_pipeline

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "load_pipeline", spy)
    return calls


def forbid_model(monkeypatch, why):
    def fail(*args, **kwargs):
        pytest.fail(why)

    monkeypatch.setattr(runner, "load_pipeline", fail)


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory):
    """2p-1 on a 2400 x 1300 grey canvas, as a PNG."""
    if not IMAGES.is_dir():
        pytest.skip(f"real example inputs not found at {IMAGES}")
    canvas = np.full((*WIDE_HW, 3), 200, np.uint8)
    picture = load_image(IMAGES / "2p-1.png")
    canvas[OFFSET[1]:OFFSET[1] + picture.shape[0], OFFSET[0]:OFFSET[0] + picture.shape[1]] = picture
    path = tmp_path_factory.mktemp("wide") / "wide.png"
    Image.fromarray(canvas).save(path, compress_level=1)
    return path


def write_job(path, job):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(job))
    return path


def _job(image, tracks, regions=(RIGHT_REGION, LEFT_REGION), audio_type="add"):
    job = {"prompt": "two people talk", "cond_image": str(image),
           "cond_audio": {"person1": str(tracks[0]), "person2": str(tracks[1])}, "audio_type": audio_type}
    if regions is not None:
        job["bbox"] = {"person1": list(regions[0]), "person2": list(regions[1])}
    return job


# ------------------------------------------------------------------------------------------------
# 1. regions, rows first, on a wide image
# ------------------------------------------------------------------------------------------------

@needs_examples
def test_regions_bind_faces_in_person_order(tmp_path, wide_image, turns):
    # person1 speaks the right track and stands on the right: binding follows person order.
    job = write_job(tmp_path / "job.json", _job(wide_image, (turns[1], turns[0])))
    (task,) = read_batch_file(job)
    assert task.regions == [RIGHT_REGION, LEFT_REGION]  # as given, rows first
    assert task.persons == ["person1", "person2"] and task.bboxes is None
    assert task.audio == [str(turns[1]), str(turns[0])] and task.audio_mode == "concat"

    prepared = prepare_task(task)
    assert prepared.image.shape == (*WIDE_HW, 3) and prepared.image.dtype == np.uint8
    assert [list(r.as_tuple()) for r in prepared.regions] == [x_first(RIGHT_REGION), x_first(LEFT_REGION)]
    right, left = prepared.detected
    # Each chosen face lies inside its person's region and is that person's face.
    assert inside(right, x_first(RIGHT_REGION)) and inside(left, x_first(LEFT_REGION))
    assert iou(right, RIGHT_FACE) > 0.8 and iou(left, LEFT_FACE) > 0.8, (right, left)
    assert prepared.faces_from == "dlib"
    for box, face, region in zip(prepared.boxes, prepared.detected, (RIGHT_REGION, LEFT_REGION)):
        assert box.width == box.height == round(max(face.width, face.height))  # squared as square_box does
        assert abs(box.center[0] - face.center[0]) <= 1 and abs(box.center[1] - face.center[1]) <= 1
        assert inside(box, x_first(region))
    assert prepared.boxes[0].x0 > prepared.boxes[1].x1  # track 1 -> the right face


@needs_examples
def test_multitalk_batch_and_rerun(tmp_path, capsys, model_loads, monkeypatch, wide_image, turns):
    # Audio paths relative to the job file's folder (the current directory holds no such files).
    job = write_job(tmp_path / "job.json", _job(wide_image, (turns[0].name, turns[1].name),
                                                regions=(LEFT_REGION, RIGHT_REGION)))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    out_dir = tmp_path / "videos"
    code, _, err = generate(capsys, "--batch", job, "--out-dir", out_dir)
    assert code == 0, err
    assert len(model_loads) == 1
    out = out_dir / "job-0.mp4"
    assert sorted(p.name for p in out_dir.iterdir()) == ["job-0.json", "job-0.mp4"]
    assert_video(out, 1.25)  # "add": turns back to back, 0.5 + 0.75 s
    meta = sidecar(out)
    assert meta["audio"]["mode"] == "concat" and meta["task"]["prompt"] == "two people talk"
    assert meta["audio"]["placements_s"] == [[0.0, 0.5], [0.5, 1.25]]
    assert meta["task"]["audio"] == [str(turns[0]), str(turns[1])]  # resolved, absolute
    assert meta["task"]["regions"] == [LEFT_REGION, RIGHT_REGION] and meta["task"]["bboxes"] is None
    faces = meta["faces"]
    assert faces["source"] == "dlib" and faces["detectors"] == ["dlib", "dlib"]
    assert faces["regions"] == [x_first(LEFT_REGION), x_first(RIGHT_REGION)]
    assert "[row0, col0, row1, col1]" in faces["region_format"]
    for box, detected, region, reference in zip(faces["boxes"], faces["detected_boxes"], faces["regions"],
                                                (LEFT_FACE, RIGHT_FACE)):
        assert inside(detected, region) and inside(box, region)
        assert box[2] - box[0] == box[3] - box[1]  # square
        assert iou(FaceBox(*detected), reference) > 0.8

    # Existing outputs are skipped, without loading a model; --overwrite redoes them.
    os.utime(out, (1_000_000, 1_000_000))
    with monkeypatch.context() as patch:
        forbid_model(patch, "a skipped batch must not load a model")
        code = cli.main(["generate", "--model", "random-tiny", "--batch", str(job), "--out-dir", str(out_dir)])
    assert code == 0
    assert f"skip job-0: {out} exists" in capsys.readouterr().out
    assert out.stat().st_mtime == 1_000_000

    code, _, err = generate(capsys, "--batch", job, "--out-dir", out_dir, "--overwrite")
    assert code == 0, err
    assert len(model_loads) == 2
    assert out.stat().st_mtime > 1_000_000
    assert sorted(p.name for p in out_dir.iterdir()) == ["job-0.json", "job-0.mp4"]  # no temp files left
    assert sidecar(out)["faces"]["boxes"] == faces["boxes"]


# ------------------------------------------------------------------------------------------------
# 2. regions written x first by mistake, and bad region values
# ------------------------------------------------------------------------------------------------

@needs_examples
@pytest.mark.parametrize("mistake", ["outside", "no-face"])
def test_region_given_x_first(tmp_path, capsys, monkeypatch, wide_image, turns, mistake):
    forbid_model(monkeypatch, "the region error must come before any model is loaded")
    if mistake == "outside":
        # person2's region as [x0, y0, x1, y1]: rows 1200..1968 run past the 1300 px tall image.
        regions = (LEFT_REGION, x_first(RIGHT_REGION))
        expected = ("person2's bbox [row0, col0, row1, col1] = [1200, 138, 1968, 1162] (rows 1200..1968, "
                    f"columns 138..1162) reaches outside image {wide_image}, 2400x1300 (width x height); "
                    "it would fit read as [x0, y0, x1, y1]: MultiTalk's bbox lists rows (y) first, "
                    "write it as [138, 1200, 1162, 1968]")
    else:
        # person1 meant x 600..1200, y 138..1162 (their face and upper body) and wrote it x first:
        # read rows first it is rows 600..1200, columns 138..1162, the torso below the face.
        regions = ([600, 138, 1200, 1162], RIGHT_REGION)
        expected = (f"no face found inside person1's region [row0, col0, row1, col1] = [600, 138, 1200, 1162] "
                    f"(rows 600..1200, columns 138..1162) of image {wide_image} (dlib: 0 faces in ")
    job = write_job(tmp_path / "job.json", _job(wide_image, turns, regions=regions))
    out_dir = tmp_path / "videos"
    code, _, err = generate(capsys, "--batch", job, "--out-dir", out_dir)
    assert code == 2
    assert err.startswith("error: job-0: ") and expected in err, err
    if mistake == "no-face":  # every detector of the chain was tried, and the fix is spelled out
        assert "opencv: 0 faces" in err and "dlib-cnn: 0 faces" in err
        assert err.rstrip().endswith("if this region was written as [x0, y0, x1, y1], "
                                     "write it as [138, 600, 1162, 1200]")
    assert not out_dir.exists()
    with pytest.raises(FaceCountError if mistake == "no-face" else ValueError):
        prepare_task(read_batch_file(job)[0], detectors=("dlib",))


@needs_examples
def test_face_in_region_rules():
    from anytalker.faces.detection import detect_faces_in_region

    image = load_image(IMAGES / "2p-1.png")
    left, right = (FaceBox(*(int(v) for v in text.split(","))) for text in BOXES_2P1)
    # Both faces inside: the largest (the left one, 322 px against 269 px) is the region's.
    whole = detect_faces_in_region(image, FaceBox(0, 0, 1536, 1024), detectors=("dlib",))
    assert len(whole.boxes) == 2 and iou(whole.boxes[0], left) > 0.8
    # A region whose edge cuts through the face (x 150..560, the face spans 312..634): the face is
    # still found whole, since its centre lies inside; the other face's centre does not.
    cut_through = detect_faces_in_region(image, FaceBox(150, 100, 560, 1024), detectors=("dlib",))
    assert len(cut_through.boxes) == 1 and iou(cut_through.boxes[0], left) > 0.8
    assert cut_through.boxes[0].x1 > 560
    # A wide margin shows the right face (x 973..1242, centre ~1100) whole, but its centre lies
    # outside x 640..1060: not this region's face. With the edge past the centre it is the region's.
    assert detect_faces_in_region(image, FaceBox(640, 100, 1060, 1024), ("dlib",), margin=0.5).boxes == ()
    (found,) = detect_faces_in_region(image, FaceBox(640, 100, 1160, 1024), ("dlib",), margin=0.5).boxes
    assert iou(found, right) > 0.8


@pytest.mark.parametrize("region, message", [
    ([1, 2, 3], "job.json[0]: bbox of person2 must be 4 numbers [row0, col0, row1, col1] (MultiTalk's bbox, "
                "rows first), got [1, 2, 3]"),
    ("0,0,10,10", "bbox of person2 must be 4 numbers [row0, col0, row1, col1]"),
    ([0, "a", 10, 10], "bbox of person2 [0, a, 10, 10]: col0 = 'a' is not a number"),
    ([0, True, 10, 10], "col0 = True is not a number"),
    ([50, 0, 50, 10], "bbox of person2 [row0, col0, row1, col1] = [50, 0, 50, 10] is empty: "
                      "row1 (50) must be greater than row0 (50)"),
    ([0, 40, 10, 20], "is empty: col1 (20) must be greater than col0 (40)"),
    ([-5, 0, 10, 10], "= [-5, 0, 10, 10] is outside the image: coordinates must be >= 0"),
])
def test_region_values_are_checked(tmp_path, region, message):
    for name in ("face.png", "a.wav", "b.wav"):
        (tmp_path / name).touch()
    job = write_job(tmp_path / "job.json", _job(tmp_path / "face.png", (tmp_path / "a.wav", tmp_path / "b.wav"),
                                                regions=([0, 0, 10, 10], region)))
    with pytest.raises(ValueError) as error:
        read_batch_file(job)
    assert message in str(error.value)


@needs_examples
def test_region_outside_image_without_hint(turns):
    # 2p-1 is 1536 x 1024: column 1600 is past its right edge, and read x first it would not fit either.
    task = GenerationTask("x", str(IMAGES / "2p-1.png"), [str(t) for t in turns],
                          regions=[[0, 0, 500, 500], [0, 900, 1000, 1600]], persons=["person1", "person2"])
    with pytest.raises(ValueError) as error:
        prepare_task(task)
    assert str(error.value) == (
        "person2's bbox [row0, col0, row1, col1] = [0, 900, 1000, 1600] (rows 0..1000, columns 900..1600) "
        f"reaches outside image {IMAGES / '2p-1.png'}, 1536x1024 (width x height)")
    with pytest.raises(ValueError, match="1 person regions for 2 audio tracks"):
        prepare_task(GenerationTask("x", task.image, task.audio, regions=[[0, 0, 500, 500]]))
    with pytest.raises(ValueError, match="not both"):
        prepare_task(GenerationTask("x", task.image, task.audio, bboxes=BOXES_2P1, regions=task.regions))


# ------------------------------------------------------------------------------------------------
# 3. relative paths: the current directory first, then the job file's folder
# ------------------------------------------------------------------------------------------------

def _files(root, names=("examples/face.png", "examples/one.wav", "examples/two.wav")):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def _relative_job(jobs):
    return write_job(jobs / "job.json", {"cond_image": "examples/face.png", "audio_type": "para",
                                         "cond_audio": {"person1": "examples/one.wav", "person2": "examples/two.wav"}})


def test_paths_relative_to_current_directory_first(tmp_path, monkeypatch):
    repo = _files(tmp_path / "repo")
    job = _relative_job(_files(tmp_path / "jobs"))  # the job's folder holds same-named files: cwd wins
    monkeypatch.chdir(repo)
    (task,) = read_batch_file(os.path.relpath(job))  # a relative job path works too
    assert task.image == str(repo / "examples" / "face.png")
    assert task.audio == [str(repo / "examples" / "one.wav"), str(repo / "examples" / "two.wav")]
    assert task.audio_mode == "pad" and task.regions is None
    monkeypatch.chdir(tmp_path)  # resolved at read time: later directory changes do not matter
    assert os.path.isabs(task.image) and os.path.exists(task.image)


def test_paths_fall_back_to_the_job_folder(tmp_path, monkeypatch):
    jobs = _files(tmp_path / "jobs")
    job = _relative_job(jobs)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (task,) = read_batch_file(job)
    assert task.image == str(jobs / "examples" / "face.png")
    assert task.audio == [str(jobs / "examples" / "one.wav"), str(jobs / "examples" / "two.wav")]


def test_missing_path_names_both_candidates(tmp_path, capsys, monkeypatch):
    jobs = _files(tmp_path / "jobs", names=("examples/face.png", "examples/one.wav"))
    job = _relative_job(jobs)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    expected = (f"job.json[0]: cond_audio person2 'examples/two.wav' not found: neither "
                f"{here / 'examples' / 'two.wav'} (current directory) nor "
                f"{jobs / 'examples' / 'two.wav'} (the job file's folder) exists")
    with pytest.raises(FileNotFoundError) as error:
        read_batch_file(job)
    assert str(error.value) == expected
    forbid_model(monkeypatch, "a missing input must be reported before any model is loaded")
    code = cli.main(["generate", "--model", "random-tiny", "--batch", str(job), "--out-dir", str(here / "o")])
    assert code == 2
    assert capsys.readouterr().err == f"error: {expected}\n"
    assert not (here / "o").exists()


def test_release_batch_paths_stay_relative_to_its_folder(tmp_path, monkeypatch):
    repo, jobs = _files(tmp_path / "repo"), _files(tmp_path / "jobs")
    job = write_job(jobs / "batch.json", {"t": {"image_path": "examples/face.png", "caption": "c",
                                                "audio_list": ["examples/one.wav"]}})
    monkeypatch.chdir(repo)
    (task,) = read_batch_file(job)
    assert task.image == str(jobs / "examples" / "face.png") and task.audio == [str(jobs / "examples" / "one.wav")]


# ------------------------------------------------------------------------------------------------
# 4. audio_type
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("audio_type, mode", [("add", "concat"), ("para", "pad"), (None, "pad"), ("concat", None),
                                              ("ADD", None)])
def test_audio_type(tmp_path, audio_type, mode):
    _files(tmp_path, names=("f.png", "a.wav", "b.wav"))
    job = _job(tmp_path / "f.png", (tmp_path / "a.wav", tmp_path / "b.wav"), regions=None)
    job.pop("audio_type")
    if audio_type is not None:
        job["audio_type"] = audio_type
    path = write_job(tmp_path / "job.json", [job, job])  # a list of jobs
    if mode is None:
        with pytest.raises(ValueError) as error:
            read_batch_file(path)
        assert str(error.value) == (f"job.json[0]: audio_type must be 'add' (turns one after another) or 'para' "
                                    f"(everyone's track together), got {audio_type!r}")
    else:
        tasks = read_batch_file(path)
        assert [t.audio_mode for t in tasks] == [mode, mode] and [t.name for t in tasks] == ["job-0", "job-1"]


# ------------------------------------------------------------------------------------------------
# 5. images of every mode -> RGB uint8
# ------------------------------------------------------------------------------------------------

def _saved(tmp_path, image, name):
    path = tmp_path / name
    image.save(path)
    return path


def test_load_image_modes(tmp_path):
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [0, 0, 0, 128], [200, 100, 0, 64]]], np.uint8)
    over_white = [[[10, 20, 30], [255, 255, 255], [127, 127, 127], [241, 216, 191]]]
    # RGBA: alpha composited over white, from a file, a PIL image and an array alike.
    for form in (_saved(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png"), Image.fromarray(rgba, "RGBA"), rgba):
        loaded = load_image(form)
        assert loaded.dtype == np.uint8 and loaded.tolist() == over_white
    grey = np.array([[0, 77, 255]], np.uint8)
    triple = [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]
    cases = {
        "L": Image.fromarray(grey, "L"),
        "LA": Image.fromarray(np.stack([grey, np.array([[255, 0, 255]], np.uint8)], -1), "LA"),
        "1": Image.fromarray(grey > 100),
        "I;16": Image.fromarray(np.array([[0, 19789, 65535]], np.uint16)),  # 19789 / 257 = 77.0
        "I": Image.fromarray(np.array([[0, 19789, 65535]], np.int32), "I"),
        "I 8-bit": Image.fromarray(np.array([[0, 77, 255]], np.int32), "I"),
        "F": Image.fromarray(np.array([[0, 77 / 255, 1]], np.float32), "F"),
        "P": Image.fromarray(grey, "L").convert("P"),
        "CMYK": Image.fromarray(np.array([[[0, 0, 0, 255], [0, 0, 0, 178], [0, 0, 0, 0]]], np.uint8), "CMYK"),
    }
    expected = {"LA": [[[0, 0, 0], [255, 255, 255], [255, 255, 255]]],
                "1": [[[0, 0, 0], [0, 0, 0], [255, 255, 255]]]}
    for name, image in cases.items():
        suffix = ".tif" if name in ("F", "I", "I 8-bit", "CMYK") else ".png"  # PNG has no float / CMYK
        path = _saved(tmp_path, image, name.replace(" ", "-").replace(";", "") + suffix)
        for form in (path, image):
            loaded = load_image(form)
            assert loaded.dtype == np.uint8 and loaded.shape == (1, 3, 3), name
            assert loaded.tolist() == expected.get(name, triple), name
    # Palette with a transparent entry (tRNS): that pixel turns white.
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([200, 10, 10, 0, 0, 0] + [0] * 762)
    palette.info["transparency"] = 1
    assert load_image(_saved(tmp_path, palette, "p-trns.png")).tolist() == [[[200, 10, 10], [255, 255, 255]]]
    # Arrays: grey, grey + alpha.
    assert load_image(grey).tolist() == triple
    assert load_image(np.stack([grey, np.array([[255, 0, 128]], np.uint8)], -1)).tolist() == \
        [[[0, 0, 0], [255, 255, 255], [255, 255, 255]]]
    assert load_image(np.zeros((2, 2, 1), np.uint8)).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="expected an RGB image"):
        load_image(np.zeros((2, 2, 5), np.uint8))


@pytest.fixture(scope="module")
def faces_2p0():
    """2p-0's faces from its RGB pixels (the file is RGBA with full alpha)."""
    if not IMAGES.is_dir():
        pytest.skip(f"real example inputs not found at {IMAGES}")
    from anytalker.faces import detect_faces, select_faces

    rgb = np.asarray(Image.open(IMAGES / "2p-0.png").convert("RGB"))
    return rgb, select_faces(detect_faces(rgb, max_faces=2), 2)


def _variant(tmp_path, rgb, kind):
    if kind == "rgba-cutout":  # the top 60 rows transparent, a half-transparent band at the bottom
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[:60], alpha[-40:] = 0, 128
        image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif kind == "grey":
        image = Image.fromarray(rgb).convert("L")
    else:  # 16-bit grey
        image = Image.fromarray((np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257))
        assert image.mode == "I;16"
    return _saved(tmp_path, image, f"{kind}.png"), np.asarray(image)


@needs_examples
@pytest.mark.parametrize("kind", ["rgba-cutout", "grey", "grey16"])
def test_rgba_and_grey_images_generate(tmp_path, capsys, turns, faces_2p0, kind):
    rgb, rgb_faces = faces_2p0
    path, pixels = _variant(tmp_path, rgb, kind)
    prepared = prepare_task(GenerationTask("x", str(path), [str(t) for t in turns]))
    image = prepared.image
    assert image.dtype == np.uint8 and image.shape == (480, 852, 3)
    if kind == "rgba-cutout":
        assert (image[:60] == 255).all()  # transparent -> white
        assert np.array_equal(image[60:-40], rgb[60:-40])  # opaque pixels untouched
        assert np.abs(image[-40:].astype(int) - (rgb[-40:].astype(int) * 128 + 255 * 127) / 255).max() <= 0.5
    else:
        grey = pixels if kind == "grey" else (pixels.astype(np.int64) // 257)
        assert (image == grey[..., None]).all()
    for box, reference in zip(prepared.boxes, rgb_faces):  # same faces as in colour, left to right
        assert iou(box, reference) > 0.7, (box, reference)
    if kind == "grey16":
        return  # one end-to-end run per kind of input is enough: the 8-bit grey one
    out = tmp_path / f"{kind}.mp4"
    code, _, err = generate(capsys, "--image", path, "--audio", turns[0], "--audio", turns[1], "--out", out)
    assert code == 0, err
    assert_video(out, 0.75)
    faces = sidecar(out)["faces"]
    assert faces == {"source": prepared.faces_from, "boxes": [list(b.as_tuple()) for b in prepared.boxes]}
