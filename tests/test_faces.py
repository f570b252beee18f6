"""Face boxes, detectors on the real example images, and the release's masks against golden tensors."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_case, parity_params

from anytalker.faces import (
    Detection,
    DetectorUnavailable,
    FaceBox,
    FaceCountError,
    InsightFaceDetector,
    box_mask,
    build_face_masks,
    detect_faces,
    expand_mask,
    expand_mask_box,
    get_detector,
    load_image,
    mask_channels,
    parse_bbox,
    select_faces,
    square_box,
    token_mask,
)

EXAMPLES = Path(os.environ.get("ANYTALKER_EXAMPLES_DIR", REPO_ROOT.parent / "shared" / "examples")) / "images"

# Independent reference boxes: MediaPipe full-range BlazeFace (conf 0.3), measured once on the
# example images (x0, y0, x1, y1). Every detector's box must overlap these well.
REFERENCE_FACES = {
    "1p-0.png": [(565, 111, 730, 276)],
    "2p-0.png": [(119, 132, 311, 323), (593, 103, 800, 310)],
    "2p-1.png": [(302, 178, 642, 519), (955, 259, 1255, 559)],
}


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def example(name):
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"example image {path} absent (../shared/examples or $ANYTALKER_EXAMPLES_DIR)")
    return path


class FakeDetector:
    def __init__(self, name, boxes=(), unavailable=False):
        self.name, self.boxes, self.unavailable, self.calls = name, list(boxes), unavailable, 0

    def detect(self, image):
        self.calls += 1
        if self.unavailable:
            raise DetectorUnavailable("not installed")
        return self.boxes


def box(x0, y0, side, detector="fake"):
    return FaceBox(x0, y0, x0 + side, y0 + side, score=1.0, detector=detector)


# ---- FaceBox, parse_bbox, square_box, select_faces ------------------------------------------

def test_facebox_validation_and_geometry():
    face = FaceBox(np.int64(10), 20, 50.5, np.float32(60), score=np.float32(0.9), detector="dlib")
    assert type(face.x0) is int and type(face.x1) is float and type(face.score) is float
    assert (face.width, face.height, face.center) == (40.5, 40.0, (30.25, 40.0))
    assert face.clip((50, 40)).as_tuple() == (10, 20, 40, 50)
    for bad in [(10, 0, 10, 5), (0, 5, 4, 5), (0, 0, float("nan"), 5), (0, 0, "3", 5), (True, 0, 3, 5)]:
        with pytest.raises(ValueError):
            FaceBox(*bad)


def test_parse_bbox():
    assert parse_bbox("10, 20,110,120") == FaceBox(10, 20, 110, 120, None, "user")
    assert parse_bbox("1.5,2,3.25,4").as_tuple() == (1.5, 2, 3.25, 4)
    assert parse_bbox("0,0,153,102", image_hw=(102, 153)).as_tuple() == (0, 0, 153, 102)


@pytest.mark.parametrize("text, image_hw, message", [
    ("1,2,3", None, "expected 4 comma-separated numbers"),
    ("1,2,3,4,5", None, "expected 4"),
    ("1,2,x,4", None, "x1 = 'x' is not a number"),
    ("1,2,inf,4", None, "not a finite number"),
    ("10,2,10,4", None, "x1 (10) must be greater than x0 (10)"),
    ("1,9,3,4", None, "y1 (4) must be greater than y0 (9)"),
    ("-1,0,3,4", None, "outside the image"),
    ("0,0,154,50", (102, 153), "outside the 153x102"),
    ("0,0,50,103", (102, 153), "outside the 153x102"),
])
def test_parse_bbox_errors(text, image_hw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_bbox(text, image_hw)


def test_square_box():
    # Longer side wins, centred: 40x60 -> 60x60 around (30, 50).
    assert square_box(FaceBox(10, 20, 50, 80), (200, 200)).as_tuple() == (0, 20, 60, 80)
    # Shifted (not shrunk) back inside at the right / bottom edges.
    assert square_box(FaceBox(195, 170, 210, 200), (200, 210)).as_tuple() == (180, 170, 210, 200)
    # Never larger than the image's shorter side.
    assert square_box(FaceBox(0, 0, 300, 90), (100, 300)).as_tuple() == (100, 0, 200, 100)
    squared = square_box(FaceBox(10.4, 10.6, 30.2, 25.0, score=0.5, detector="dlib"), (100, 100))
    assert squared.width == squared.height == 20 and (squared.score, squared.detector) == (0.5, "dlib")
    assert all(isinstance(v, int) for v in squared.as_tuple())


def test_select_faces_keeps_largest_and_orders():
    right, left, small, top = box(300, 50, 100), box(10, 80, 90), box(200, 5, 20), box(150, 0, 95)
    assert select_faces([right, small, left], 2) == [left, right]
    assert select_faces([right, small, left, top], 3, order="top-to-bottom") == [top, right, left]
    with pytest.raises(ValueError, match="order"):
        select_faces([left], 1, order="random")
    with pytest.raises(ValueError):
        select_faces([left], 0)


def test_select_faces_reports_shortfall():
    detection = Detection((box(0, 0, 10),), "opencv", ())
    with pytest.raises(FaceCountError, match=r"3 audio tracks but 1 face detected in img.png.*--bbox"):
        select_faces(detection, 3, image_name="img.png")


# ---- detector chain logic (fake detectors, no images needed) -------------------------------

def test_chain_stops_at_first_detector_with_enough_faces():
    image = np.zeros((64, 64, 3), np.uint8)
    first, second, third = (FakeDetector("a", [box(0, 0, 10)]), FakeDetector("b", [box(0, 0, 10), box(30, 0, 20)]),
                            FakeDetector("c", [box(0, 0, 10)]))
    detection = detect_faces(image, max_faces=2, detectors=[first, second, third])
    assert detection.detector == "b" and [b.width for b in detection.boxes] == [20, 10]  # largest first
    assert [(a.detector, a.num_faces) for a in detection.attempts] == [("a", 1), ("b", 2)] and third.calls == 0
    assert "a: 1 face in" in detection.summary() and "b: 2 faces" in detection.summary()
    # Without max_faces one face is enough; max_faces also truncates to the largest.
    assert detect_faces(image, detectors=[second]).boxes == tuple(second.boxes[::-1])
    assert detect_faces(image, max_faces=1, detectors=[second]).boxes == (second.boxes[1],)


def test_chain_returns_best_when_none_finds_enough_and_skips_unavailable():
    image = np.zeros((64, 64, 3), np.uint8)
    missing, one, none = FakeDetector("m", unavailable=True), FakeDetector("one", [box(0, 0, 9)]), FakeDetector("n")
    detection = detect_faces(image, max_faces=2, detectors=[missing, one, none])
    assert detection.detector == "one" and len(detection.boxes) == 1
    assert detection.attempts[0].error == "not installed" and "m: unavailable" in detection.summary()
    with pytest.raises(DetectorUnavailable, match="no face detector could run"):
        detect_faces(image, detectors=[missing])


def test_detector_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown face detector"):
        get_detector("yolo")
    with pytest.raises(DetectorUnavailable, match="local model folder"):
        get_detector("insightface")
    with pytest.raises(DetectorUnavailable, match="no insightface detection model"):
        InsightFaceDetector(tmp_path)  # never downloads: an empty folder is an error


def test_load_image_forms(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert load_image(grey).shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert load_image(rgba).shape == (3, 4, 3)
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((3, 4, 3), np.float32))


# ---- detection on the real example images -------------------------------------------------

@pytest.mark.parametrize("name, expected_detector", [("1p-0.png", "opencv"), ("2p-0.png", "dlib"),
                                                     ("2p-1.png", "dlib")])
def test_default_chain_on_examples(name, expected_detector):
    path = example(name)
    image = load_image(path)
    height, width = image.shape[:2]
    reference = REFERENCE_FACES[name]
    detection = detect_faces(path, max_faces=len(reference))
    # dlib's HOG misses the backlit 1p-0 face; the chain falls back to OpenCV's Haar cascade.
    assert detection.detector == expected_detector, detection.summary()
    faces = select_faces(detection, len(reference), image_name=name)
    for face, ref in zip(faces, reference):
        assert face.detector == expected_detector
        assert iou(face.as_tuple(), ref) > 0.4, (face, ref)
        assert 0.1 * height < face.height < 0.6 * height
        squared = square_box(face, (height, width))
        assert 0 <= squared.x0 < squared.x1 <= width and 0 <= squared.y0 < squared.y1 <= height
    if len(faces) == 2:  # left-to-right: the first face's centre on the left half, the second's on the right
        assert faces[0].center[0] < width / 2 < faces[1].center[0]


def test_each_default_detector_alone_on_two_person_example():
    path = example("2p-1.png")
    for name in ("dlib", "opencv"):
        faces = select_faces(detect_faces(path, detectors=[name]), 2)
        for face, ref in zip(faces, REFERENCE_FACES["2p-1.png"]):
            assert iou(face.as_tuple(), ref) > 0.4, (name, face)


def test_dlib_cnn_finds_backlit_face():
    detection = detect_faces(example("1p-0.png"), detectors=["dlib-cnn"])
    assert len(detection.boxes) == 1 and iou(detection.boxes[0].as_tuple(), REFERENCE_FACES["1p-0.png"][0]) > 0.6


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="mediapipe (optional) not installed")
def test_mediapipe_on_examples():
    for name, reference in REFERENCE_FACES.items():
        faces = select_faces(detect_faces(example(name), detectors=["mediapipe"]), len(reference))
        assert all(iou(f.as_tuple(), r) > 0.8 for f, r in zip(faces, reference))


# ---- masks against the release (golden tensors) -------------------------------------------

@pytest.mark.parametrize("path", parity_params("dit_af_tiny"))
def test_masks_match_release(path):
    case, meta = load_case(path)
    height, width = meta["image_hw"]
    latent_h, latent_w, frames, latent_frames = meta["lat_h"], meta["lat_w"], meta["F"], meta["T"]
    boxes = [case[f"mask_build.box.{i}"].tolist() for i in range(meta["N"])]
    assert boxes == meta["boxes_xyxy"]
    expanded = []
    for i, xyxy in enumerate(boxes):
        square = box_mask(FaceBox(*xyxy), height, width)
        assert torch.equal(square, case[f"mask_build.square_mask.{i}"])
        expanded.append(expand_mask(square))
        assert torch.equal(expanded[-1], case[f"mask_build.expanded_mask.{i}"])
        tokens = token_mask(expanded[-1], latent_h // 2, latent_w // 2)
        golden = case[f"face_mask.{i}"]  # [1, 1, T, h/2, w/2]: the same grid in every latent frame
        assert torch.equal(tokens.expand(latent_frames, -1, -1)[None, None], golden)
    assert torch.equal(mask_channels(expanded, frames, latent_h, latent_w), case["y"][:4])

    token_masks, y_mask = build_face_masks(boxes, (height, width), frames, (latent_h, latent_w))
    assert torch.equal(token_masks, torch.cat([case[f"face_mask.{i}"][0, :, 0] for i in range(meta["N"])]))
    assert torch.equal(y_mask, case["y"][:4])


def test_expanded_mask_box_rule_and_clipping():
    # 70x70 box at (72, 18): 84 wide, 77 high about the centre (106.5, 52.5), as golden case_1.
    assert expand_mask_box((72, 18, 142, 88), 102, 153) == (64, 14, 149, 92)
    # Near the corner the enlarged box is clipped to the image, and the mask fills it.
    assert expand_mask_box((0, 0, 20, 30), 40, 25) == (0, 0, 22, 32)
    clipped = expand_mask(box_mask((0, 0, 20, 30), 40, 25))
    assert clipped[:32, :22].min() > 1 - 1e-6 and clipped[32:].max() == 0 and clipped[:, 22:].max() == 0


def test_masks_are_pure_and_validate():
    mask = box_mask((3, 2, 9, 8), 12, 16)
    before = mask.clone()
    expanded = expand_mask(mask)
    token_mask(expanded, 3, 4)
    mask_channels([expanded, expanded], 5, 6, 8)
    assert torch.equal(mask, before)
    assert box_mask(FaceBox(-5, -5, 4, 3), 12, 16).sum() == 12  # clipped to the image
    with pytest.raises(ValueError, match="outside"):
        box_mask((20, 0, 30, 5), 12, 16)
    with pytest.raises(ValueError, match="empty"):
        expand_mask(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="4k"):
        mask_channels([expanded], 6, 6, 8)
    with pytest.raises(ValueError, match="multiple of the patch"):
        build_face_masks([(3, 2, 9, 8)], (12, 16), 5, (7, 8))


def test_mask_channels_layout():
    # Channel c of latent frame j holds video frame 4j + c - 3; frame 0 (all ones) fills latent frame 0.
    expanded = [box_mask((0, 0, 8, 4), 8, 8), box_mask((0, 0, 8, 4), 8, 8)]  # overlapping faces add up
    channels = mask_channels(expanded, 9, 4, 4)
    assert channels.shape == (4, 3, 4, 4)
    assert torch.all(channels[:, 0] == 1)
    assert torch.equal(channels[:, 1:, :2], torch.full((4, 2, 2, 4), 2.0))
    assert torch.all(channels[:, 1:, 2:] == 0)


def test_detection_from_many_threads_at_once():
    """dlib/OpenCV detectors are not thread-safe (six threads crashed the process about one run in
    four): the REST server's and the app's request threads detect through one lock."""
    import threading

    image = load_image(example("2p-1.png"))
    found = []
    threads = [threading.Thread(target=lambda: found.append(detect_faces(image, max_faces=2).boxes)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(found) == 6 and len({tuple(b.as_tuple() for b in boxes) for boxes in found}) == 1
