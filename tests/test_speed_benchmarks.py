"""benchmarks/gpu_speed.py: without a GPU it says so and exits 2; `--smoke` runs its code paths
(build, every setting, timing, table, JSON) on the CPU with a tiny config."""

import importlib.util
import json

import pytest
import torch
from conftest import REPO_ROOT


def _module():
    spec = importlib.util.spec_from_file_location("gpu_speed", REPO_ROOT / "benchmarks" / "gpu_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_speed_exits_clearly_without_a_gpu(capsys):
    assert _module().main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_gpu_speed_smoke_runs_every_setting(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "gpu.json"
        assert _module().main(["--smoke", "--models", "1.3B", "--repeats", "1.3B:1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())["models"]["1.3B"]
    names = [row["setting"] for row in rows]
    assert names[0] == "plain bf16 (SDPA)" and "regional compile" in names and names[-1].startswith("group offload")
    assert all(row["seconds_per_step"] > 0 for row in rows if "skipped" not in row)
    assert "| 1.3B | fp8 storage |" in capsys.readouterr().out
