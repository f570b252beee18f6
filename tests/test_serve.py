"""`anytalker serve` live: uvicorn on 127.0.0.1 in a subprocess with `random-tiny`, driven with httpx.

Jobs use the real example inputs cut short, at 32x48 with 1 step (~1 s a job); the long jobs
that must still be running when they are cancelled or killed use the full 2p-1 tracks (two
windows) at 200 steps (~3 s). Every wait is a bounded poll. The job store is tested without a
server at the end.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import REPO_ROOT, run_cli
from test_generate import AUDIOS, BOXES_2P1, IMAGES, _grey_png, _silent_wav, _text_as, assert_video, cut

from anytalker.serving.store import JobStore

pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"real example inputs not found at {IMAGES}")

TOKEN = "s3cret-test-token"
BOXES = json.dumps([[int(v) for v in box.split(",")] for box in BOXES_2P1])
QUICK = {"steps": 1, "size": [32, 48]}
LONG = {"steps": 200, "size": [32, 48]}  # with the full tracks: ~3 s idle (UniPC fails above ~400 steps)
START_S, JOB_S = 90, 60  # bounds of the waits (a start imports torch: ~10 s on 2 busy cores)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`anytalker serve --model random-tiny` in a subprocess on 127.0.0.1."""

    def __init__(self, data_dir, *flags, env=None):
        self.data_dir, self.flags, self.env = data_dir, [str(f) for f in flags], env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self) -> "Server":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src"), **self.env}
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "anytalker.cli", "serve", "--model", "random-tiny", "--data-dir",
                 str(self.data_dir), "--port", str(self.port), "--log-level", "warning", *self.flags],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"the server did not answer in {START_S} s:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


def client(server: Server, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def submit(http: httpx.Client, image, tracks, settings=None, boxes=None, prompt="two people talk", raw=None):
    """POST /v1/videos; `raw` replaces the form fields (for bad requests)."""
    files = [("image", (image.name, image.read_bytes()))] if image else []
    files += [("audio", (track.name, track.read_bytes())) for track in tracks]
    data = {"prompt": prompt}
    if settings is not None:
        data["settings"] = settings if isinstance(settings, str) else json.dumps(settings)
    if boxes is not None:
        data["boxes"] = boxes
    data.update(raw or {})
    return http.post("/v1/videos", files=files, data=data)


def wait_for(http: httpx.Client, job_id: str, states, timeout=JOB_S, progress=None) -> dict:
    """The job once its state is in `states` (and, with `progress`, it has passed it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/videos/{job_id}").json()
        if job["state"] in states and (progress is None or job["progress"] > progress):
            return job
        assert job["state"] not in {"done", "failed", "cancelled"} - set(states), job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} not {states} after {timeout} s: {job}")


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    """Short speech cuts: 2p-1 left 0.5 s and right 0.75 s, 1p-0 0.5 s; and the full 2p-1 tracks."""
    folder = tmp_path_factory.mktemp("tracks")
    return {"left": cut(AUDIOS / "2p-1-left.wav", 0.25, 0.5, folder / "left.wav"),
            "right": cut(AUDIOS / "2p-1-right.wav", 3.0, 0.75, folder / "right.wav"),
            "one": cut(AUDIOS / "1p-0.wav", 0.5, 0.5, folder / "one.wav"),
            "full": [AUDIOS / "2p-1-left.wav", AUDIOS / "2p-1-right.wav"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for most tests: 2 workers, a token, a 3 MB upload limit."""
    data = tmp_path_factory.mktemp("serve") / "data"
    running = Server(data, "--workers", 2, "--token", TOKEN, "--max-upload-mb", 3).start()
    yield running
    running.stop()


@pytest.fixture
def http(server):
    with client(server, TOKEN) as session:
        yield session


# ------------------------------------------------------------------------------------------------
# 1. concurrent jobs
# ------------------------------------------------------------------------------------------------

def test_concurrent_jobs_all_finish(server, http, tracks, tmp_path):
    two = [tracks["left"], tracks["right"]]
    # (image, tracks, settings, boxes, video duration): pad, concat, detected faces, one person.
    kinds = [(IMAGES / "2p-1.png", two, QUICK, BOXES, 0.75),
             (IMAGES / "2p-1.png", two, {**QUICK, "audio_mode": "concat"}, BOXES, 1.25),
             (IMAGES / "2p-1.png", two, {**QUICK, "seed": 3}, None, 0.75),
             (IMAGES / "1p-0.png", [tracks["one"]], {**QUICK, "fps": 25}, None, 0.5)]
    requests = [kinds[i % len(kinds)] for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda r: submit(http, r[0], r[1], r[2], r[3]), requests))
    assert [a.status_code for a in answers] == [202] * 6, [a.text for a in answers]
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 6
    for job_id, (image, audio, settings, boxes, duration) in zip(ids, requests):
        job = wait_for(http, job_id, {"done"})
        assert job["progress"] == 1 and job["attempts"] == 1 and job["error"] is None
        assert job["seconds"] > 0 and job["created_at"] <= job["started_at"] <= job["finished_at"]
        video = http.get(job["links"]["video"])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        mp4 = tmp_path / f"{job_id}.mp4"
        mp4.write_bytes(video.content)
        assert_video(mp4, duration, fps=settings.get("fps", 24))
        sidecar = http.get(job["links"]["sidecar"]).json()
        assert sidecar["job"] == {"id": job_id, "attempt": 1, "worker": job["worker"]}
        assert sidecar["task"]["image"] == image.name and sidecar["task"]["audio"] == [a.name for a in audio]
        assert (sidecar["faces"]["source"] == "user") == (boxes is not None)
        assert len(sidecar["faces"]["boxes"]) == len(audio)
        assert sidecar["num_inference_steps"] == 1
    assert {job["worker"] for job in http.get("/v1/videos").json()["videos"]} <= {"worker-0", "worker-1"}
    assert files_under(server.data_dir / "uploads") == []  # inputs go once a job ends


# ------------------------------------------------------------------------------------------------
# 2. bad requests: the right 4xx, a message that names the problem, nothing queued or kept
# ------------------------------------------------------------------------------------------------

def _bad_requests(tmp, t):
    two, one, i2, i1 = [t["left"], t["right"]], [t["one"]], IMAGES / "2p-1.png", IMAGES / "1p-0.png"
    big = tmp / "big.png"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 100_000))
    # name: (image, tracks, form fields, status, message)
    return {
        "no-image": (None, one, {}, 422, "image: Field required"),
        "no-audio": (i1, [], {}, 422, "audio: Field required"),
        "settings-not-json": (i1, one, {"settings": '{"steps": 2'}, 422, "settings is not valid JSON"),
        "settings-not-object": (i1, one, {"settings": "[1, 2]"}, 422, "settings must be a JSON object"),
        "unknown-key": (i1, one, {"settings": '{"stepz": 2}'}, 422, "unknown settings key 'stepz'"),
        "wrong-type": (i1, one, {"settings": '{"steps": "2"}'}, 422, 'settings.steps must be a whole number, got "2"'),
        "size-not-16": (i1, one, {"settings": '{"size": [33, 48]}'}, 422, "settings.size 33x48: height and width"),
        "size-garbled": (i1, one, {"settings": '{"size": "big"}'}, 422, "settings.size 'big': expected HxW"),
        "window": (i1, one, {"settings": '{"max_frames_per_window": 80}'}, 422,
                   "settings.max_frames_per_window must be 4n+1"),
        "audio-mode": (i1, one, {"settings": '{"audio_mode": "both"}'}, 422, "settings.audio_mode 'both': choose"),
        "order": (i1, one, {"settings": '{"order": "random"}'}, 422, "settings.order 'random': choose"),
        "boxes-shape": (i2, two, {"boxes": "[[1, 2, 3]]"}, 422, "boxes[0] must be [x0, y0, x1, y1]"),
        "boxes-count": (i2, two, {"boxes": json.dumps([[312, 206, 634, 528]])}, 422, "1 boxes for 2 audio tracks"),
        "box-outside": (i2, two, {"boxes": "[[312, 206, 634, 528], [973, 290, 1242, 5590]]"}, 422,
                        "outside the 1536x1024"),
        "offsets-count": (i2, two, {"boxes": BOXES, "settings": '{"audio_mode": "concat", "offsets": [0]}'}, 422,
                          "offsets_s has 1 entries for 2 tracks"),
        "more-tracks-than-faces": (i2, [*two, t["one"]], {}, 422, "3 audio tracks but 2 faces detected"),
        "no-face": (_grey_png(tmp), one, {}, 422, "1 audio track but 0 faces detected"),
        "silent-track": (i1, [_silent_wav(tmp)], {}, 422, "is silent"),
        "unreadable-audio": (i1, [_text_as(tmp, "speech.wav")], {}, 422, "not a readable audio file"),
        "unreadable-image": (_text_as(tmp, "face.png"), one, {}, 422, "not a readable image: 'face.png'"),
        "too-large": (big, one, {}, 413, "upload too large: a request may hold at most 3 MB"),
    }


def test_bad_requests_are_refused_and_leave_nothing(server, http, tracks, tmp_path):
    before_jobs = len(http.get("/v1/videos").json()["videos"])
    before_files = files_under(server.data_dir)
    for name, (image, audio, fields, status, message) in _bad_requests(tmp_path, tracks).items():
        answer = submit(http, image, audio, raw=fields)
        assert answer.status_code == status, (name, answer.text)
        body = answer.json()
        assert message in body["error"], (name, body)
        assert str(server.data_dir) not in body["error"], (name, body)  # no server paths in messages
    # A chunked upload (no Content-Length) is cut off once it passes the limit.
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        yield from (os.urandom(1024 * 1024) for _ in range(4))
        yield b"\r\n--b--\r\n"

    answer = http.post("/v1/videos", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413 and "upload too large" in answer.json()["error"]
    assert len(http.get("/v1/videos").json()["videos"]) == before_jobs
    assert http.get("/healthz").json()["jobs"]["queued"] == 0
    assert files_under(server.data_dir) == before_files  # no upload, incoming folder or output left


def test_unknown_and_unfinished_jobs(server, http, tracks):
    assert http.get("/v1/videos/nope").status_code == 404
    assert "no video job 'nope'" in http.get("/v1/videos/nope/video").json()["error"]
    assert http.delete("/v1/videos/nope").status_code == 404
    assert http.get("/v1/videos", params={"state": "sleeping"}).status_code == 422
    openapi = httpx.get(server.url + "/openapi.json").json()  # docs stay open
    assert {"/v1/videos", "/v1/videos/{job_id}", "/v1/videos/{job_id}/video", "/healthz"} <= set(openapi["paths"])
    assert httpx.get(server.url + "/docs").status_code == 200


# ------------------------------------------------------------------------------------------------
# 3. token
# ------------------------------------------------------------------------------------------------

def test_token_is_required_on_v1_only(server):
    assert httpx.get(server.url + "/v1/videos").status_code == 401
    wrong = httpx.get(server.url + "/v1/videos", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "bearer token" in wrong.json()["error"]
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.post(server.url + "/v1/videos", files={"image": b"x"}).status_code == 401  # before any upload
    assert httpx.get(server.url + "/v1/videos", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    health = httpx.get(server.url + "/healthz")
    assert health.status_code == 200 and health.json()["model"] == "random-tiny"


def test_public_address_without_token_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("ANYTALKER_TOKEN", raising=False)
    port = free_port()
    code, _, err = run_cli(["serve", "--model", "random-tiny", "--host", "0.0.0.0", "--port", str(port),
                            "--data-dir", str(tmp_path / "data")])
    assert code == 2
    assert "--host 0.0.0.0 is not a loopback address: set --token" in err and "ANYTALKER_TOKEN" in err
    assert not (tmp_path / "data").exists()  # refused before anything was made, loaded or bound
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_one_server_per_data_dir(server):
    code, _, err = run_cli(["serve", "--model", "random-tiny", "--data-dir", str(server.data_dir)])
    assert code == 2 and f"another server is using --data-dir {server.data_dir}" in err


# ------------------------------------------------------------------------------------------------
# 4. cancel
# ------------------------------------------------------------------------------------------------

def test_cancel_queued_and_running(server, http, tracks):
    image = IMAGES / "2p-1.png"
    running = [submit(http, image, tracks["full"], LONG, BOXES).json()["id"] for _ in range(2)]  # both workers
    for job_id in running:
        wait_for(http, job_id, {"running"})
    queued = submit(http, image, [tracks["left"], tracks["right"]], QUICK, BOXES).json()["id"]
    answer = http.delete(f"/v1/videos/{queued}")
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    for job_id in running:
        answer = http.delete(f"/v1/videos/{job_id}")
        assert answer.status_code == 202 and answer.json()["cancel_requested"], answer.text
    for job_id in running:
        job = wait_for(http, job_id, {"cancelled"}, timeout=10)
        assert job["progress"] < 1
    job = http.get(f"/v1/videos/{queued}").json()
    assert job["state"] == "cancelled" and job["attempts"] == 0 and job["started_at"] is None  # never ran
    for job_id in [*running, queued]:
        assert http.get(f"/v1/videos/{job_id}/video").status_code == 409
        assert not (server.data_dir / "outputs" / f"{job_id}.mp4").exists()
        assert not (server.data_dir / "uploads" / job_id).exists()
    assert http.delete(f"/v1/videos/{queued}").status_code == 409  # already cancelled


# ------------------------------------------------------------------------------------------------
# 5. kill -9 mid-job, restart: every job done exactly once
# ------------------------------------------------------------------------------------------------

def test_kill_9_and_restart_finishes_every_job_once(tmp_path, tracks):
    data = tmp_path / "data"
    env = {"ANYTALKER_TOKEN": TOKEN}  # the token from the environment
    first = Server(data, env=env).start()
    with client(first, TOKEN) as http:
        long_id = submit(http, IMAGES / "2p-1.png", tracks["full"], LONG, BOXES).json()["id"]
        short_ids = [submit(http, IMAGES / "2p-1.png", [tracks["left"], tracks["right"]], QUICK, BOXES).json()["id"]
                     for _ in range(2)]
        wait_for(http, long_id, {"running"}, progress=0.05)
        first.kill9()
    second = Server(data, env=env).start()  # the same data folder
    try:
        with client(second, TOKEN) as http:
            assert f"recovered after a stop: requeued {long_id}" in second.log.read_text()
            jobs = {job_id: wait_for(http, job_id, {"done"}) for job_id in [long_id, *short_ids]}
            listed = [job["id"] for job in http.get("/v1/videos").json()["videos"]]
            sidecars = {job_id: http.get(f"/v1/videos/{job_id}/sidecar").json() for job_id in jobs}
    finally:
        second.stop()
    assert sorted(listed) == sorted(jobs)  # each id once
    assert jobs[long_id]["attempts"] == 2 and sidecars[long_id]["job"]["attempt"] == 2
    assert all(jobs[job_id]["attempts"] == 1 for job_id in short_ids)
    assert files_under(data / "outputs") == sorted(f"{i}.{s}" for i in jobs for s in ("json", "mp4"))  # no temp files
    assert files_under(data / "uploads") == []


# ------------------------------------------------------------------------------------------------
# 6. the job store, no server
# ------------------------------------------------------------------------------------------------

def _request(i: int) -> dict:
    return {"id": f"job-{i:03d}", "image": "image.png", "audio": ["audio-1.wav"], "settings": {}}


def test_claim_never_hands_one_job_out_twice(tmp_path):
    stores = [JobStore(tmp_path), JobStore(tmp_path)]  # two connections, as two processes would have
    for i in range(120):
        stores[0].create(f"job-{i:03d}", _request(i))
    claimed = [[], [], [], []]
    start = threading.Barrier(4)

    def claim_all(index):
        start.wait()
        while (job := stores[index % 2].claim(f"w{index}")) is not None:
            claimed[index].append(job.id)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    everything = [job_id for ids in claimed for job_id in ids]
    assert sorted(everything) == [f"job-{i:03d}" for i in range(120)]  # each exactly once
    assert stores[0].counts()["running"] == 120
    assert all(job.attempts == 1 for job in stores[1].list(limit=200))
    for store in stores:
        store.close()


def test_recovery_requeues_then_fails_after_max_attempts(tmp_path):
    store = JobStore(tmp_path, max_attempts=2)
    for i in range(4):
        store.create(f"job-{i:03d}", _request(i))
    interrupted, written, cancelled = store.claim("w"), store.claim("w"), store.claim("w")
    store.cancel(cancelled.id)
    for path in (store.output_path(written.id), store.sidecar_path(written.id)):  # written, not yet marked done
        path.write_text("x")
    store.output_path(interrupted.id).write_text("half")  # a video without its sidecar
    (store.outputs / ".clip.1a2b.tmp.mp4").write_text("temp")  # what a kill leaves of atomic_write
    (store.uploads / "orphan").mkdir()  # moved in place, never inserted
    store.close()

    store = JobStore(tmp_path, max_attempts=2)  # the restart
    outcome = store.recover()
    assert outcome == {"done": [written.id], "requeued": [interrupted.id], "failed": [], "cancelled": [cancelled.id]}
    assert store.get(written.id).state == "done" and store.get(interrupted.id).state == "queued"
    assert store.get("job-003").state == "queued"  # never claimed: untouched
    assert files_under(store.outputs) == [f"{written.id}.json", f"{written.id}.mp4"]
    assert files_under(store.uploads) == []

    assert store.claim("w").id == interrupted.id  # the oldest queued job first
    again = JobStore(tmp_path, max_attempts=2)  # killed again during its second attempt
    assert again.recover()["failed"] == [interrupted.id]
    failed = again.get(interrupted.id)
    assert failed.state == "failed" and failed.attempts == 2
    assert "interrupted 2 times" in failed.error and "--max-attempts 2" in failed.error
    store.close()
    again.close()
