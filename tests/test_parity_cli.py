"""`anytalker parity`: every golden case family of ../shared/parity, through the shared comparisons."""

import re

from conftest import require_parity_dir

from anytalker.cli import main

FAMILIES = ("dit_af_tiny", "dit_legacy_tiny", "vae_tiny", "t5_tiny", "clip_vision_tiny", "wav2vec_tiny")
ROW = re.compile(r"^(?P<case>(?P<family>\w+)\.case_\w+\.safetensors):(?P<output>\S+)\s+max\|diff\| (?P<diff>\S+)\s+ok$")


def test_parity_cli_covers_every_family(monkeypatch, capsys):
    root = require_parity_dir()
    monkeypatch.setenv("ANYTALKER_PARITY_DIR", str(root))  # the directory the tests found, as the default
    assert main(["parity", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [ROW.match(line) for line in lines[:-1]]
    assert all(rows), [line for line, row in zip(lines, rows) if not row]
    assert {row["family"] for row in rows} >= set(FAMILIES)
    # every case file of every family is reported
    cases = {path.name for family in FAMILIES for path in root.glob(f"{family}.case_*.safetensors")}
    assert {row["case"] for row in rows} >= cases
    assert re.fullmatch(rf"{len(rows)} passed, 0 failed \(tolerance 0\.0001, float32\)", lines[-1]), lines[-1]


def test_parity_cli_empty_dir_is_an_error(tmp_path, capsys):
    assert main(["parity", "--quiet", "--parity-dir", str(tmp_path)]) == 2
    assert "no golden case files" in capsys.readouterr().err
