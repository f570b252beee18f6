"""`anytalker bench` over 2 processes (torchrun's environment: RANK / WORLD_SIZE / MASTER_*; gloo).

A folder of 6 single-person clips; generation is replaced by the reference image held still (as in
test_eval_bench's clips test), one clip has no soundtrack (an input failure) and one generation
raises (a generation failure), both on rank 1. Case i belongs to rank i mod 2: every video is
written once, by its owner (its sidecar says so), the failures reach rank 0's tables, the tables
are written once (by rank 0); a rerun generates only the failed case again.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_context_parallel import free_port
from test_eval_bench import IMAGE, needs_image, read_csv, speech

TIMEOUT = 300
RATE = 16000
CASES = [f"talk_{i}" for i in range(1, 7)]  # rank 0: talk_1, 3, 5; rank 1: talk_2, 4, 6
SILENT, BOOM = "talk_4", "talk_6"

DRIVER = textwrap.dedent('''
    """`anytalker bench ARGS` with generation faked (the reference held still, 12 frames at 25 fps;
    case talk_6 raises); prints GENERATE <case> <rank> and TABLES <rank> lines."""
    import os, sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from anytalker import cli
    from anytalker.evaluation.bench import run as bench_run
    from anytalker.pipeline import runner

    rank = os.environ["RANK"]

    def render(loaded, prepared, sampling, **kwargs):
        print(f"GENERATE {prepared.task.name} {rank}", flush=True)
        if prepared.task.name == "talk_6":
            raise RuntimeError("out of memory (faked)")
        info = {"model": loaded.settings.model, "seed": sampling.seed, "num_inference_steps": sampling.steps,
                "fps": 25, "guidance_scale": sampling.guidance_scale,
                "audio_guidance_scale": sampling.audio_guidance_scale}
        return runner.GenerationResult(np.repeat(prepared.image[None], 12, axis=0), info)

    tables = bench_run.write_tables

    def write_tables(*args, **kwargs):
        print(f"TABLES {rank}", flush=True)
        return tables(*args, **kwargs)

    runner.load_pipeline = lambda settings, **kwargs: runner.wrap_pipeline(None, settings)
    runner.generate = render
    bench_run.write_tables = write_tables
    sys.exit(cli.main(["bench", *sys.argv[1:]]))
''')


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    import cv2

    from anytalker.faces import load_image
    from anytalker.video import write_video

    folder = tmp_path_factory.mktemp("bench")
    face = cv2.resize(load_image(IMAGE)[40:440, 0:420], (256, 240))  # the left person of the two-person image
    frames = np.repeat(face[None], 12, axis=0)
    (folder / "clips").mkdir()
    for name in CASES:
        audio = {} if name == SILENT else {"audio": speech(0.48, 0.0, 0.48), "sample_rate": RATE}
        write_video(folder / "clips" / f"{name}.mp4", frames, 25, **audio)
    (folder / "driver.py").write_text(DRIVER)
    return folder


def launch(folder, out, world=2):
    """The driver as ranks 0..world-1 at once; [(returncode, stdout lines)] per rank."""
    port = str(free_port())
    argv = ["--model", "random-tiny", "--benchmark", folder / "clips", "--out", out, "--fps", 25,
            "--id-stride", 5, "--quiet"]
    processes = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, str(folder / "driver.py"), *map(str, argv)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
        results.append((process.returncode, stdout.splitlines(), stderr))
    return results


def lines(results, word):
    return sorted(tuple(line.split()[1:]) for _, rank_lines, _ in results for line in rank_lines
                  if line.startswith(word + " "))


def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir()) if p.is_file()}


@needs_image
def test_bench_cases_are_shared_over_ranks_and_rank_0_tabulates(clips, tmp_path):
    out = tmp_path / "out"
    first = launch(clips, out)
    assert [code for code, _, _ in first] == [0, 0], [err[-3000:] for _, _, err in first]
    owner = {name: str(i % 2) for i, name in enumerate(CASES)}
    # Every case with audio generated once, by its owner; the silent one never reached generation.
    assert lines(first, "GENERATE") == sorted((n, owner[n]) for n in CASES if n != SILENT)
    assert lines(first, "TABLES") == [("0",)]  # the tables once, on rank 0
    written = sorted(p.stem for p in (out / "videos").glob("*.mp4"))
    assert written == sorted(set(CASES) - {SILENT, BOOM})
    for name in written:
        sidecar = json.loads((out / "videos" / f"{name}.json").read_text())
        assert (sidecar["rank"], sidecar["world_size"], sidecar["benchmark_case"]) == (int(owner[name]), 2, name)
    assert sorted(p.stem for p in (out / "references").glob("*.png")) == CASES  # each written by its owner

    rows = {row["case"]: row for row in read_csv(out / "results.csv")}
    assert list(rows) == CASES
    assert all(rows[n]["status"] == "ok" for n in written)
    assert rows[SILENT]["failure"] == "input: invalid_input" and "no audio stream" in rows[SILENT]["message"]
    assert rows[BOOM]["failure"] == "generation: generation_error" and "out of memory" in rows[BOOM]["message"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["cases"], summary["scored"], summary["failed"]) == (6, 4, 2)
    record = json.loads((out / "metrics" / f"{BOOM}.json").read_text())
    assert record["stage"] == "generation"

    # Rerun: the kept videos are skipped by whoever owns them; only the failed generation is retried.
    videos = mtimes(out / "videos")
    again = launch(clips, out)
    assert [code for code, _, _ in again] == [0, 0], [err[-3000:] for _, _, err in again]
    assert lines(again, "GENERATE") == [(BOOM, owner[BOOM])]
    assert lines(again, "TABLES") == [("0",)]
    assert mtimes(out / "videos") == videos
    assert {row["case"]: row for row in read_csv(out / "results.csv")} == rows
