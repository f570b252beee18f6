"""`anytalker app`: the binding logic (faces, slots, who drives whom) and the page in a real browser.

The browser tests run `anytalker app` (the bundled puppets-tiny) on 127.0.0.1 and drive Debian's
chromium with playwright; they are skipped, saying why, when either is missing. Screenshots go to
$ANYTALKER_TEST_ARTIFACTS (default: the test's tmp_path); the generate test also leaves one at
/tmp/app_screenshot.png for the docs.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anytalker.app import binding
from anytalker.app.binding import BindingError
from anytalker.cli import build_parser
from anytalker.faces.detection import FaceBox, square_box
from anytalker.pipeline import runner

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "examples"
TWO_FACES = EXAMPLES / "images" / "2p-1.png"
CHROMIUM = "/usr/bin/chromium"
LEAD_SCREENSHOT = Path("/tmp/app_screenshot.png")


def _need_examples():
    if not TWO_FACES.is_file():
        pytest.skip(f"example image not found: {TWO_FACES}")


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    """Two 1 s tracks of the 2p-1 voices, both audible (2.5-3.5 s: the left speaker ends, the right begins)."""
    sf = pytest.importorskip("soundfile")
    folder = tmp_path_factory.mktemp("tracks")
    paths = []
    for side in ("left", "right"):
        source = EXAMPLES / "audios" / f"2p-1-{side}.wav"
        if not source.is_file():
            pytest.skip(f"example audio not found: {source}")
        wave, rate = sf.read(source)
        paths.append(folder / f"{side}.wav")
        sf.write(paths[-1], wave[int(2.5 * rate):int(3.5 * rate)], rate)
    return [str(p) for p in paths]


# ----------------------------------------------------------------------------------------------
# binding.py
# ----------------------------------------------------------------------------------------------

def test_faces_of_the_two_person_image_are_numbered_left_to_right():
    _need_examples()
    faces = binding.detect(TWO_FACES)
    assert len(faces) == 2 and faces.source in ("dlib", "opencv", "dlib-cnn")
    assert faces.boxes[0].center[0] < faces.boxes[1].center[0]  # face #1 is the left one
    assert binding.order_boxes(faces.boxes[::-1]) == list(faces.boxes)
    assert binding.parse_boxes(binding.format_boxes(faces.boxes)) == [
        FaceBox(*b.as_tuple()) for b in faces.boxes]  # the text field round-trips
    drawn = binding.draw(TWO_FACES, faces.boxes, binding.face_labels(2, ["/x/left.wav", None], [0, 1]))
    original = binding.load_image(TWO_FACES)
    assert drawn.shape == original.shape and not np.array_equal(drawn, original)
    assert binding.face_labels(2, ["/x/left.wav", None], [0, 1]) == ["#1 <- slot 1: left.wav",
                                                                     "#2 <- slot 2: (empty)"]


def test_tiny_images_are_enlarged_for_drawing_and_a_faceless_image_has_no_faces():
    grey = np.full((64, 128, 3), 128, np.uint8)
    assert binding.draw(grey, [FaceBox(0, 0, 32, 32)]).shape == (512, 1024, 3)
    found = binding.detect(grey)
    assert found.boxes == () and found.source == "none" and "dlib: 0 faces" in found.summary
    with pytest.raises(BindingError, match="no face in the image"):
        binding.bind([], ["a.wav"], [None])


def test_reassigning_swaps_which_track_drives_which_face():
    left, right = FaceBox(10, 10, 50, 50), FaceBox(100, 10, 140, 50)
    assignment = binding.default_assignment(2, 2)
    assert assignment == [0, 1]
    swapped = binding.reassign(assignment, 0, binding.face_index("face #2"))
    assert swapped == [1, 0]  # slot 2 took slot 1's old face: no two slots share one
    bound = binding.bind([left, right], ["a.wav", "b.wav"], swapped)
    assert bound.tracks == ("a.wav", "b.wav") and bound.boxes == (right, left)
    task = binding.to_task("t", "image.png", bound, "two talk", "concat", binding.parse_offsets("0, 2.5"))
    assert task.audio == ["a.wav", "b.wav"] and task.bboxes == ["100,10,140,50", "10,10,50,50"]
    assert task.offsets_s == [0.0, 2.5] and task.audio_mode == "concat"
    assert binding.face_labels(2, ["/t/a.wav", "/t/b.wav"], swapped) == ["#1 <- slot 2: b.wav",
                                                                         "#2 <- slot 1: a.wav"]
    # A new face count keeps a binding that still covers every face, else starts over in order.
    assert binding.valid_assignment(swapped, 2, 2) == [1, 0]
    assert binding.valid_assignment(swapped, 3, 3) == [0, 1, 2]
    assert binding.valid_assignment([1, 0], 3, 2) == [1, 0, None]


def test_a_hand_entered_box_overrides_detection(tracks):
    _need_examples()
    typed = binding.parse_boxes("900 250 1300 600\n300,200,640,540\n", (1024, 1536))
    assert typed == [FaceBox(900, 250, 1300, 600), FaceBox(300, 200, 640, 540)]
    prepared = runner.prepare(binding.to_task("t", str(TWO_FACES), binding.bind(typed, tracks, [0, 1])))
    assert prepared.faces_from == "user"
    assert prepared.boxes == [square_box(box, (1024, 1536)) for box in typed]
    with pytest.raises(BindingError, match=r"box line 2 \(face #2\): bbox .*x1 \(5\) must be greater"):
        binding.parse_boxes("1,1,9,9\n10,1,5,9")
    with pytest.raises(BindingError, match="outside the 1536x1024"):
        binding.parse_boxes("0,0,2000,100", (1024, 1536))


def test_more_tracks_than_faces_and_other_slot_errors_are_named():
    one = [FaceBox(10, 10, 50, 50)]
    with pytest.raises(BindingError, match="2 audio tracks but 1 face: remove a track, or add a box"):
        binding.bind(one, ["a.wav", "b.wav"], [0, None])
    two = one + [FaceBox(100, 10, 140, 50)]
    with pytest.raises(BindingError, match=r"audio slot 2 \(face #2\) has no track"):
        binding.bind(two, ["a.wav", None], [0, 1])
    with pytest.raises(BindingError, match="no audio track"):
        binding.bind(two, [None, None], [0, 1])
    with pytest.raises(BindingError, match="audio slots 1 and 2 both drive face #1"):
        binding.bind(two, ["a.wav", "b.wav"], [0, 0])
    assert binding.slot_count(2, ["a.wav", None, "c.wav"]) == 3  # a track never hides
    with pytest.raises(BindingError, match="offsets 'soon'"):
        binding.parse_offsets("soon")


def test_app_command_defaults_to_the_bundled_model_on_localhost():
    args = build_parser().parse_args(["app"])
    assert (args.model, args.host, args.port, args.order) == ("puppets-tiny", "127.0.0.1", 7860, "left-to-right")
    assert build_parser().parse_args(["app", "--model", "random-tiny", "--port", "9000"]).port == 9000


# ----------------------------------------------------------------------------------------------
# The page in a real browser
# ----------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`anytalker app` (bundled puppets-tiny) on a free 127.0.0.1 port: (url, out_dir)."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'anytalker[app]')")
    folder = tmp_path_factory.mktemp("app")
    port, out_dir, log = _free_port(), folder / "out", folder / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2"}
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "anytalker.cli", "app", "--port", str(port),
                                 "--out-dir", str(out_dir)], stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"anytalker app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"anytalker app did not answer on {url} within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, out_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(server[0])
    page.wait_for_selector("#image input[type=file]", state="attached")
    yield page
    context.close()


def _artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("ANYTALKER_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait_status(page, pattern: str, timeout_ms: int = 30_000) -> str:
    page.wait_for_function("p => new RegExp(p).test(document.querySelector('#status').innerText)", arg=pattern,
                           timeout=timeout_ms)
    return page.locator("#status").inner_text()


def test_browser_binds_two_faces_swaps_and_generates(page, server, tracks, tmp_path):
    _need_examples()
    page.locator("#image input[type=file]").set_input_files(str(TWO_FACES))
    assert "2 faces found" in _wait_status(page, "faces found")
    assert len(page.locator("#boxes textarea").input_value().splitlines()) == 2  # two numbered boxes
    page.wait_for_selector("#annotated img")
    assert page.locator("#slot-0").is_visible() and page.locator("#slot-1").is_visible()
    assert not page.locator("#slot-2").is_visible()
    for slot, track in enumerate(tracks):
        page.locator(f"#slot-audio-{slot} input[type=file]").set_input_files(track)
        page.wait_for_selector(f"#slot-audio-{slot} audio, #slot-audio-{slot} [data-testid=waveform-x]",
                               state="attached")
    # Swap: slot 1 (left.wav) drives face #2; slot 2 follows to face #1.
    page.locator("#slot-face-0 input").click()
    page.get_by_role("option", name="face #2").click()
    page.wait_for_function("document.querySelector('#slot-face-1 input').value === 'face #1'", timeout=15_000)
    assert page.locator("#slot-face-0 input").input_value() == "face #2"
    page.locator("#advanced").click()
    page.locator("#steps input").fill("2")
    page.locator("#size textarea, #size input").first.fill("64x96")
    page.locator("#generate").click()
    status = _wait_status(page, "Wrote|Error", timeout_ms=150_000)
    assert status.startswith("Wrote"), status
    page.wait_for_function("() => { const v = document.querySelector('#video video');"
                           " return v && v.readyState >= 1 && v.duration > 0 }", timeout=30_000)
    source = page.evaluate("document.querySelector('#video video').src")
    assert page.request.get(source).body()[4:8] == b"ftyp"  # an mp4
    assert page.locator("#files").get_by_text(".json").count() == 1
    sidecar = json.loads(next(server[1].glob("*.json")).read_text())
    left_face, right_face = (binding.parse_bbox(text) for text in sidecar["task"]["bboxes"])
    assert left_face.x0 > right_face.x0  # left.wav drives the right-hand face, as swapped
    assert sidecar["task"]["audio"][0].endswith("left.wav") and sidecar["height"] == 64
    shot = _artifacts(tmp_path) / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, LEAD_SCREENSHOT)
    print(f"screenshot: {shot} (copied to {LEAD_SCREENSHOT})")


def test_browser_reports_an_image_without_faces_and_takes_a_box_by_hand(page, tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(grey)
    page.locator("#image input[type=file]").set_input_files(str(grey))
    assert "no face found in the image" in _wait_status(page, "Error")
    assert not page.locator("#slot-0").is_visible()
    page.locator("#generate").click()
    assert "no face in the image" in _wait_status(page, "no face in the image")
    page.screenshot(path=str(_artifacts(tmp_path) / "app-no-face.png"), full_page=True)
    page.locator("#boxes textarea").fill("100,60,200,160")
    page.locator("#redraw").click()
    assert "1 face box applied" in _wait_status(page, "applied")
    page.locator("#slot-0").wait_for(state="visible", timeout=15_000)


def test_browser_example_scene_fills_the_page_and_cancel_stops(page):
    page.locator("#example").click()
    _wait_status(page, "Example puppet scene")
    assert len(page.locator("#boxes textarea").input_value().splitlines()) == 2
    assert page.locator("#prompt textarea").input_value().startswith("Two cartoon puppets")
    page.locator("#slot-1").wait_for(state="visible", timeout=15_000)
    page.locator("#advanced").click()
    assert page.locator("#size textarea, #size input").first.input_value() == "64x128"
    page.locator("#steps input").fill("200")  # long enough to be cancelled
    page.locator("#generate").click()
    page.wait_for_selector("#video .progress-text, #video .meta-text, #video .progress-level", timeout=60_000)
    page.locator("#cancel").click()
    assert "Cancelled" in _wait_status(page, "Cancelled|Wrote|Error", timeout_ms=60_000)
