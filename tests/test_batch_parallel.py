"""Many videos over several processes (random-tiny, 32x48, 1 step, CPU).

- `run_batch` on 2 processes (the environment torchrun gives them: RANK / WORLD_SIZE): the tasks
  are split, every output is written once, a bad task is recorded and the others go on; a re-run
  after one process was killed mid-way makes only the missing videos.
- `anytalker generate --batch` under torchrun with 4 processes = 2 groups x 2-way context
  parallelism: each video once, equal to the one-process video.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_context_parallel import free_port
from test_generate import AUDIOS, IMAGES, cut, needs_examples, write_wav

from anytalker import cli
from anytalker.video.io import read_video

GOOD = [f"t{i}" for i in range(5)]
ORDER = ["t0", "t1", "bad", "t2", "t3", "t4"]  # rank 0: t0, bad, t3; rank 1: t1, t2, t4
TIMEOUT = 300

DRIVER = textwrap.dedent('''
    """run_batch over this process's share; prints one JSON line per event; KILL_AFTER=n: SIGKILL
    itself after its n-th written video (a process lost mid-way)."""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from anytalker.acceleration.parallel import ParallelSettings, start_parallel
    from anytalker.pipeline.batch import run_batch
    from anytalker.pipeline.settings import InputSettings, ModelSettings, SamplingSettings
    from anytalker.pipeline.tasks import GenerationTask

    folder, out_dir = sys.argv[1], sys.argv[2]
    kill_after, written = int(os.environ.get("KILL_AFTER", 0)), []
    tasks = [(GenerationTask(name, f"{folder}/face.png", [f"{folder}/{'nope' if name == 'bad' else 'voice'}.wav"],
                             bboxes=["4,8,36,40"]), f"{out_dir}/{name}.mp4") for name in sys.argv[3].split(",")]

    def on_event(event):
        print(json.dumps({"kind": event.kind, "name": event.name, "rank": os.environ["RANK"]}), flush=True)
        written.extend([event.name] if event.kind == "written" else [])
        if kill_after and len(written) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    run_batch(tasks, ModelSettings("random-tiny"), SamplingSettings(size=(32, 48), steps=1), InputSettings(),
              start_parallel(ParallelSettings()), on_event=on_event, progress=False)
''')

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(folder / "face.png")
    write_wav(folder / "voice.wav", rng.standard_normal(3200).astype(np.float32) * 0.1)  # 0.2 s: 5 frames
    (folder / "driver.py").write_text(DRIVER)
    return folder


def launch(inputs, out_dir, kill_after=None, world=2):
    """Runs the driver as ranks 0..world-1 at once (torchrun's environment, no torchrun: a killed
    rank must not take the others down); [(returncode, events)] per rank."""
    processes = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "KILL_AFTER": str(kill_after.get(rank, 0) if kill_after else 0)}
        processes.append(subprocess.Popen(
            [sys.executable, str(inputs / "driver.py"), str(inputs), str(out_dir), ",".join(ORDER)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        out, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode in (0, -signal.SIGKILL), err[-3000:]
        results.append((process.returncode, [json.loads(line) for line in out.splitlines() if line.startswith("{")]))
    return results


def events(results, kind):
    return sorted(e["name"] for _, rank_events in results for e in rank_events if e["kind"] == kind)


def outputs(out_dir):
    return {p.stem: p.stat().st_mtime_ns for p in out_dir.glob("*.mp4")}


def test_tasks_are_split_over_ranks_and_written_once(inputs, tmp_path):
    out_dir = tmp_path / "videos"
    first = launch(inputs, out_dir)
    assert [code for code, _ in first] == [0, 0]  # the bad task stopped nobody
    assert events(first, "written") == GOOD  # each video once, by one rank
    assert {e["name"] for e in first[0][1] if e["kind"] == "written"} == {"t0", "t3"}
    assert {e["name"] for e in first[1][1] if e["kind"] == "written"} == {"t1", "t2", "t4"}
    assert sorted(outputs(out_dir)) == GOOD and all((out_dir / f"{n}.json").is_file() for n in GOOD)
    record = json.loads((out_dir / "failed" / "bad.json").read_text())
    assert record["task"] == "bad" and "audio file not found" in record["reason"] and record["rank"] == 0

    stamps = outputs(out_dir)
    again = launch(inputs, out_dir)  # nothing left to do but the bad task
    assert events(again, "written") == [] and events(again, "skipped") == GOOD
    assert events(again, "failed") == ["bad"]
    assert outputs(out_dir) == stamps


def test_rerun_after_a_killed_rank_makes_only_the_missing_videos(inputs, tmp_path):
    out_dir = tmp_path / "videos"
    first = launch(inputs, out_dir, kill_after={1: 1})  # rank 1 dies after t1, before t2 and t4
    assert first[1][0] == -signal.SIGKILL and first[0][0] == 0
    stamps = outputs(out_dir)
    assert sorted(stamps) == ["t0", "t1", "t3"]
    assert not list(out_dir.glob(".*"))  # no half-written file where the kill struck

    again = launch(inputs, out_dir)
    assert events(again, "written") == ["t2", "t4"]
    assert events(again, "skipped") == ["t0", "t1", "t3"]
    after = outputs(out_dir)
    assert sorted(after) == GOOD and {n: after[n] for n in stamps} == stamps


@needs_examples
def test_torchrun_groups_with_context_parallelism(tmp_path, capsys):
    """torchrun, 4 processes = 2 groups x 2-way CP over 3 videos; each equals the 1-process video."""
    (tmp_path / "a").mkdir()
    cut(AUDIOS / "1p-0.wav", 0.5, 0.375, tmp_path / "a" / "one.wav")  # 9 frames: 3 latent frames
    batch = {name: {"image_path": str(IMAGES / "1p-0.png"), "caption": "a man talking", "audio_list": ["a/one.wav"]}
             for name in ("v0", "v1", "v2")}
    (tmp_path / "batch.json").write_text(json.dumps(batch))
    flags = ["--model", "random-tiny", "--batch", str(tmp_path / "batch.json"), "--size", "32x48", "--steps", "1",
             "--detector", "opencv"]
    assert cli.main(["generate", *flags, "--out-dir", str(tmp_path / "single"), "--quiet"]) == 0
    capsys.readouterr()

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_port",
               str(free_port()), "-m", "anytalker.cli", "generate", *flags, "--out-dir", str(tmp_path / "cp"),
               "--context-parallel", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    wrote = sorted(line.split()[1] for line in done.stdout.splitlines() if line.startswith("wrote "))
    assert wrote == sorted(str(tmp_path / "cp" / f"{n}.mp4") for n in batch)  # by the 2 writers, once each
    for name in batch:
        meta = json.loads((tmp_path / "cp" / f"{name}.json").read_text())
        assert meta["context_parallel"] == 2
        single, parallel = (read_video(tmp_path / d / f"{name}.mp4").frames.astype(int) for d in ("single", "cp"))
        assert single.shape == parallel.shape == (9, 32, 48, 3)
        # The same uint8 frames up to a rare one-level rounding flip, through the same H.264 encoder.
        print(f"{name}: decoded frames differ at {int((single != parallel).sum())} of {single.size} values, "
              f"by at most {np.abs(single - parallel).max()}")
        assert np.abs(single - parallel).max() <= 2
