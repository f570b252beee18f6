import os
from pathlib import Path

import pytest

# Never let a test reach for a model hub: a failed lookup otherwise retries for ~46 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def parity_dir() -> Path | None:
    """Golden vectors from the official release (see ../shared/parity/README.md)."""
    path = Path(os.environ.get("ANYTALKER_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))
    return path if path.is_dir() else None


def parity_cases(prefix: str) -> list[Path]:
    """Every `<prefix>.case_*.safetensors` file; an empty list when the directory is absent."""
    root = parity_dir()
    return sorted(root.glob(f"{prefix}.case_*.safetensors")) if root else []


def require_parity_dir() -> Path:
    root = parity_dir()
    if root is None:
        pytest.skip(
            "parity vectors not found: expected ../shared/parity next to the repo or $ANYTALKER_PARITY_DIR"
        )
    return root


def parity_params(prefix: str) -> list:
    """pytest params for every golden case of a model; one skipped param when none are found."""
    cases = parity_cases(prefix)
    if cases:
        return [pytest.param(path, id=path.name.split(".")[1]) for path in cases]
    reason = f"no {prefix}.case_*.safetensors: parity vectors absent (../shared/parity or $ANYTALKER_PARITY_DIR)"
    return [pytest.param(None, id="absent", marks=pytest.mark.skip(reason=reason))]


def make_tiny_tokenizer(path):
    """The `random-tiny` word-level tokenizer (umT5's pad 0 and </s> 1), saved as a tokenizer folder."""
    from anytalker.pipeline.tiny import tiny_tokenizer

    tiny_tokenizer().save_pretrained(path)
    return path


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `anytalker ARGV`, run in-process through the real parser."""
    import contextlib
    import io

    from anytalker.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


from anytalker.parity import load_case  # noqa: E402,F401  (re-exported for the tests)
