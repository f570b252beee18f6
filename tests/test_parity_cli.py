"""`anytalker parity` and `parity.run_all` / `parity.format_report`: every golden family of a parity
directory, failures reported as rows, and the parity test modules on a directory of other cases."""

import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from conftest import REPO_ROOT, parity_file, require_parity_dir, run_cli
from safetensors import safe_open
from safetensors.torch import save_file

from anytalker.parity import FAMILIES, TOLERANCE, format_report, run_all

ROW = re.compile(r"^(?P<case>(?P<family>\w+)\.case_\w+\.safetensors):(?P<output>\S+)\s+max\|diff\| (?P<diff>\S+)\s+ok$")
FAIL_ROW = re.compile(r"^(?P<case>(?P<family>\w+)\.case_\w+\.safetensors):(?P<output>\S+)\s+FAIL  (?P<reason>.+)$")
SUMMARY = re.compile(r"^(?P<passed>\d+) passed, (?P<failed>\d+) failed \(tolerance 0\.0001, float32\)$")


def _case_files(root: Path) -> dict[str, list[str]]:
    """{family: its case file names} for the families of `root` this implementation covers."""
    found = {family: sorted(p.name for p in root.glob(f"{family}.case_*.safetensors")) for family in FAMILIES}
    return {family: names for family, names in found.items() if names}


def _link(source: Path, target: Path) -> None:
    try:
        os.symlink(source.resolve(), target)
    except OSError:  # no symlinks: copy
        target.write_bytes(source.read_bytes())


@pytest.fixture(scope="module")
def golden_rows():
    return list(run_all(require_parity_dir()))


# ---------------------------------------------------------------- the golden directory


def test_run_all_covers_every_family(golden_rows):
    root = require_parity_dir()
    families = _case_files(root)
    assert families, f"no case files of {sorted(FAMILIES)} in {root}"
    assert all(len(row) == 4 for row in golden_rows)
    failed = [row for row in golden_rows if row[3] is not None or not row[2] <= TOLERANCE]
    assert not failed, failed
    assert {case for case, *_ in golden_rows} == {name for names in families.values() for name in names}

    lines, failures = format_report(golden_rows)
    assert failures == 0 and len(lines) == len(golden_rows) + 1
    rows = [ROW.match(line) for line in lines[:-1]]
    assert all(rows), [line for line, row in zip(lines, rows) if not row]
    assert {row["family"] for row in rows} == set(families)
    assert SUMMARY.match(lines[-1])["passed"] == str(len(golden_rows)), lines[-1]


def test_cli_prints_the_report(golden_rows, monkeypatch):
    root = require_parity_dir()
    monkeypatch.setenv("ANYTALKER_PARITY_DIR", str(root))  # the directory the tests found, as the default
    code, out, _ = run_cli(["parity", "--quiet"])
    assert code == 0
    lines = out.splitlines()
    assert [ROW.match(line)["case"] + ":" + ROW.match(line)["output"] for line in lines[:-1]] \
        == [f"{case}:{output}" for case, output, _, _ in golden_rows]
    assert re.fullmatch(rf"{len(golden_rows)} passed, 0 failed \(tolerance 0\.0001, float32\)", lines[-1]), lines[-1]


def test_parity_cli_empty_dir_is_an_error(tmp_path):
    code, _, err = run_cli(["parity", "--quiet", "--parity-dir", str(tmp_path)])
    assert code == 2 and "no golden case files" in err


# ---------------------------------------------------------------- the report


def test_format_report_rows_failures_and_summary():
    rows = [
        ("a.case_1.safetensors", "out", 1.23e-5, None),
        ("a.case_1.safetensors", "out_uncond", 2.5e-4, None),  # computed, above tolerance
        ("a.case_2.safetensors", "out", float("nan"), None),  # computed, NaN: never ok
        ("b.case_1.safetensors", "load", float("nan"), "cannot load b: FileNotFoundError: b.weights.safetensors"),
    ]
    lines, failures = format_report(iter(rows))  # any iterable, e.g. run_all's generator
    width = len("a.case_1.safetensors:out_uncond")
    assert lines == [
        f"{'a.case_1.safetensors:out':<{width}}  max|diff| 1.23e-05  ok",
        f"{'a.case_1.safetensors:out_uncond':<{width}}  max|diff| 2.50e-04  FAIL",
        f"{'a.case_2.safetensors:out':<{width}}  max|diff| nan  FAIL",
        f"{'b.case_1.safetensors:load':<{width}}  FAIL  cannot load b: FileNotFoundError: b.weights.safetensors",
        "1 passed, 3 failed (tolerance 0.0001, float32)",
    ]
    assert failures == 3
    assert format_report([]) == (["0 passed, 0 failed (tolerance 0.0001, float32)"], 0)


# ---------------------------------------------------------------- families that cannot load or run


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory):
    """A parity directory where most families are broken in a different way, next to a sound one.

    - dit_af_tiny: config and a case, no weights file;
    - dit_legacy_tiny: sound model, but its only case is an AF case (its metadata names dit_af_tiny);
    - vae_tiny: corrupt weights file;
    - clip_vision_tiny: a config that does not match the weights (another width);
    - t5_tiny: sound, plus a case whose token ids do not fit the model's vocabulary;
    - wav2vec_tiny: sound (every case must be computed, after the failures).
    """
    root = require_parity_dir()
    needed = ["dit_af_tiny.config.json", "dit_af_tiny.case_1.safetensors", "dit_legacy_tiny.config.json",
              "dit_legacy_tiny.weights.safetensors", "vae_tiny.config.json", "vae_tiny.case_1.safetensors",
              "clip_vision_tiny.config.json", "clip_vision_tiny.weights.safetensors",
              "clip_vision_tiny.case_1.safetensors", "t5_tiny.config.json", "t5_tiny.weights.safetensors",
              "t5_tiny.case_1.safetensors", "wav2vec_tiny.config.json", "wav2vec_tiny.weights.safetensors",
              "wav2vec_tiny.case_1.safetensors"]
    for name in needed:
        parity_file(name)  # skips, naming the file, when one is absent
    folder = tmp_path_factory.mktemp("broken-parity")
    for name in needed:
        if name != "clip_vision_tiny.config.json":
            _link(root / name, folder / name)
    _link(root / "dit_af_tiny.case_1.safetensors", folder / "dit_legacy_tiny.case_5.safetensors")
    (folder / "vae_tiny.weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    clip = json.loads((root / "clip_vision_tiny.config.json").read_text())
    (folder / "clip_vision_tiny.config.json").write_text(json.dumps({**clip, "dim": clip["dim"] + 16}))
    with safe_open(str(root / "t5_tiny.case_1.safetensors"), framework="pt") as handle:
        case = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    case["ids"] = case["ids"].clone()
    case["ids"][0, 0] = json.loads((root / "t5_tiny.config.json").read_text())["vocab"] + 7
    save_file(case, str(folder / "t5_tiny.case_9.safetensors"), metadata=metadata)
    return folder


def test_failures_are_rows_and_the_run_goes_on(broken_dir):
    rows = list(run_all(broken_dir))
    errors = {(case, output): error for case, output, _, error in rows if error is not None}
    assert all(math.isnan(diff) for case, output, diff, error in rows if error is not None)
    assert set(errors) == {
        ("dit_af_tiny.case_1.safetensors", "load"),
        ("dit_legacy_tiny.case_5.safetensors", "run"),
        ("vae_tiny.case_1.safetensors", "load"),
        ("clip_vision_tiny.case_1.safetensors", "load"),
        ("t5_tiny.case_9.safetensors", "run"),
    }
    assert all("\n" not in error for error in errors.values())
    assert errors["dit_af_tiny.case_1.safetensors", "load"].startswith("cannot load dit_af_tiny: FileNotFoundError: ")
    assert "dit_af_tiny.weights.safetensors not found in" in errors["dit_af_tiny.case_1.safetensors", "load"]
    assert "is for dit_af_tiny, not dit_legacy_tiny" in errors["dit_legacy_tiny.case_5.safetensors", "run"]
    assert "vae_tiny.weights.safetensors" in errors["vae_tiny.case_1.safetensors", "load"]
    assert "could not be read" in errors["vae_tiny.case_1.safetensors", "load"]
    assert "clip_vision_tiny.weights.safetensors" in errors["clip_vision_tiny.case_1.safetensors", "load"]
    assert "IndexError" in errors["t5_tiny.case_9.safetensors", "run"]
    # the sound families and cases were all computed, after (and despite) the failures
    computed = {case for case, _, diff, error in rows if error is None and diff <= TOLERANCE}
    assert computed == {"t5_tiny.case_1.safetensors", "wav2vec_tiny.case_1.safetensors"}
    assert all(error is None for case, _, _, error in rows if case in computed)

    lines, failures = format_report(rows)
    assert failures == len(errors)
    fails = [FAIL_ROW.match(line) for line in lines if "  FAIL  " in line]
    assert {(m["case"], m["output"]) for m in fails} == set(errors)
    assert SUMMARY.match(lines[-1]).groupdict() == {"passed": str(len(rows) - len(errors)), "failed": str(len(errors))}


def test_cli_reports_failures_without_a_traceback(broken_dir):
    code, out, err = run_cli(["parity", "--quiet", "--parity-dir", str(broken_dir)])
    assert code == 1
    assert "Traceback" not in out + err
    lines = out.splitlines()
    assert sum(1 for line in lines if FAIL_ROW.match(line)) == 5
    assert SUMMARY.match(lines[-1])["failed"] == "5"


# ---------------------------------------------------------------- the parity test modules on other cases

PARITY_MODULES = ["tests/test_transformer_parity.py", "tests/test_vae.py", "tests/test_text_encoder.py",
                  "tests/test_image_encoder.py", "tests/test_wav2vec.py", "tests/test_parity_cli.py"]
SELF = "tests/test_parity_cli.py::test_parity_modules_on_a_directory_of_other_cases"
SKIP_REASON = re.compile(r"parity file (?P<file>\S+) not found in (?P<dir>\S+)"
                         r"|no (?P<pattern>\S+\.case_\*\.safetensors)(?: [^/]*)? in (?P<dir2>\S+)")


def _outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """{nodeid: (outcome, skip reason)} from a junit XML report."""
    outcomes = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        module = case.get("classname").replace(".", "/") + ".py"
        nodeid = f"{module}::{case.get('name')}"
        skipped = case.find("skipped")
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        if failed is not None:
            outcomes[nodeid] = ("failed", failed.get("message", ""))
        elif skipped is not None:
            outcomes[nodeid] = ("skipped", skipped.get("message", ""))
        else:
            outcomes[nodeid] = ("passed", "")
    return outcomes


def test_parity_modules_on_a_directory_of_other_cases(tmp_path):
    """One DiT family whose only case is a renamed copy (case_2 as case_7), a T5 config without weights
    or cases, no VAE, CLIP, wav2vec or manifests: every parity test must pass or skip naming the file."""
    root = require_parity_dir()
    needed = ["dit_af_tiny.config.json", "dit_af_tiny.weights.safetensors", "dit_af_tiny.case_2.safetensors",
              "t5_tiny.config.json"]
    for name in needed:
        parity_file(name)
    other = tmp_path / "other-cases"
    other.mkdir()
    for name in needed[:2] + needed[3:]:
        _link(root / name, other / name)
    _link(root / "dit_af_tiny.case_2.safetensors", other / "dit_af_tiny.case_7.safetensors")

    junit = tmp_path / "junit.xml"
    env = {**os.environ, "ANYTALKER_PARITY_DIR": str(other)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}",
         "--deselect", SELF, *PARITY_MODULES],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    outcomes = _outcomes(junit)
    counts = {kind: sum(1 for outcome, _ in outcomes.values() if outcome == kind) for kind in ("passed", "skipped")}
    assert counts["passed"] + counts["skipped"] == len(outcomes)
    summary = output.strip().splitlines()[-1]
    assert re.search(rf"\b{counts['passed']} passed\b", summary) and re.search(rf"\b{counts['skipped']} skipped\b",
                                                                                summary), summary
    assert "failed" not in summary and "error" not in summary, summary

    # the renamed case ran, against the family's config and weights
    for test in ("test_outputs_match_release", "test_dense_temporal_mask_matches_release"):
        assert outcomes[f"tests/test_transformer_parity.py::{test}[dit_af_tiny.case_7]"] == ("passed", "")
    # every skip names a file (or a case pattern) that is indeed absent from the directory
    for nodeid, (outcome, reason) in outcomes.items():
        if outcome != "skipped":
            continue
        match = SKIP_REASON.search(reason)
        assert match, f"{nodeid}: skip reason names no file: {reason!r}"
        assert (match["dir"] or match["dir2"]) == str(other), (nodeid, reason)
        if match["file"]:
            assert not (other / match["file"]).exists(), (nodeid, reason)
        else:
            assert not list(other.glob(match["pattern"])), (nodeid, reason)
    skipped = {nodeid: reason for nodeid, (outcome, reason) in outcomes.items() if outcome == "skipped"}
    expected = {
        "tests/test_transformer_parity.py::test_outputs_match_release[dit_legacy_tiny-absent]":
            "no dit_legacy_tiny.case_*.safetensors in",
        "tests/test_transformer_parity.py::test_full_size_manifest_maps_onto_meta_model[manifest_dit_af_1.3B.json]":
            "parity file manifest_dit_af_1.3B.json not found",
        "tests/test_vae.py::test_parity[vae_tiny-absent]": "no vae_tiny.case_*.safetensors in",
        "tests/test_vae.py::test_pth_and_dtype": "parity file vae_tiny.config.json not found",
        "tests/test_vae.py::test_latent_stats": "parity file vae_latent_stats.json not found",
        "tests/test_text_encoder.py::test_parity[t5_tiny-absent]": "no t5_tiny.case_*.safetensors in",
        "tests/test_text_encoder.py::test_default_load_is_bf16_and_tied": "parity file t5_tiny.weights.safetensors",
        "tests/test_image_encoder.py::test_default_load_is_fp16": "parity file clip_vision_tiny.config.json",
        "tests/test_wav2vec.py::test_padding_quirk_matters[wav2vec_tiny-absent]":
            "no wav2vec_tiny.case_*.safetensors needing padding in",
        "tests/test_wav2vec.py::test_load_dtype": "parity file wav2vec_tiny.config.json not found",
        "tests/test_parity_cli.py::test_failures_are_rows_and_the_run_goes_on":
            "parity file dit_af_tiny.case_1.safetensors not found",
    }
    for nodeid, reason in expected.items():
        assert nodeid in skipped and reason in skipped[nodeid], (nodeid, outcomes.get(nodeid))
    # golden-free tests still run, e.g. the other VAE layouts
    assert outcomes["tests/test_vae.py::test_other_layout_loads_bit_exact[res3]"] == ("passed", "")
    # the parity CLI tests ran on the other directory: every case there, and only those
    assert outcomes["tests/test_parity_cli.py::test_run_all_covers_every_family"] == ("passed", "")
    assert outcomes["tests/test_parity_cli.py::test_cli_prints_the_report"] == ("passed", "")

    # `anytalker parity --parity-dir` on it: the one case, its four outputs
    code, out, err = run_cli(["parity", "--quiet", "--parity-dir", str(other)])
    assert code == 0, err
    lines = out.splitlines()
    assert [ROW.match(line)["case"] for line in lines[:-1]] == ["dit_af_tiny.case_7.safetensors"] * 4
    assert lines[-1] == "4 passed, 0 failed (tolerance 0.0001, float32)"
