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


def _absent_dir_reason() -> str:
    return "parity vectors not found: expected ../shared/parity next to the repo or $ANYTALKER_PARITY_DIR"


def parity_cases(prefix: str) -> list[Path]:
    """Every `<prefix>.case_*.safetensors` file; an empty list when the directory is absent."""
    root = parity_dir()
    return sorted(root.glob(f"{prefix}.case_*.safetensors")) if root else []


def require_parity_dir() -> Path:
    root = parity_dir()
    if root is None:
        pytest.skip(_absent_dir_reason())
    return root


def parity_file(name: str) -> Path:
    """The golden file `name`; the test is skipped, naming the file, when it is absent."""
    root = require_parity_dir()
    path = root / name
    if not path.is_file():
        pytest.skip(f"parity file {name} not found in {root}")
    return path


def parity_json(name: str) -> dict:
    """A golden JSON file (a `<family>.config.json`, a manifest, the latent stats); skipped if absent."""
    import json

    return json.loads(parity_file(name).read_text())


def case_meta(path: Path) -> dict:
    """The `meta` JSON of a case file's safetensors header, without reading a tensor."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads((handle.metadata() or {}).get("meta", "{}"))


def parity_params(prefix: str, select=None, what: str = "") -> list:
    """pytest params for every golden case of a model (ids `<prefix>.case_N`); one skipped param
    naming the missing files when none are found.

    `select(meta) -> bool` keeps only the cases whose metadata qualifies; `what` then says how in
    the skip reason ("needing padding" -> "no wav2vec_tiny.case_*.safetensors needing padding in DIR").
    """
    cases = parity_cases(prefix)
    if select is not None:
        cases = [path for path in cases if select(case_meta(path))]
    if cases:
        return [pytest.param(path, id=path.name.removesuffix(".safetensors")) for path in cases]
    root = parity_dir()
    pattern = f"{prefix}.case_*.safetensors" + (f" {what}" if what else "")
    reason = f"no {pattern} in {root}" if root else f"no {pattern}: {_absent_dir_reason()}"
    return [pytest.param(None, id=f"{prefix}-absent", marks=pytest.mark.skip(reason=reason))]


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Modules of toy models use it (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): they
    gain nothing from a second thread, and on a shared 2-core machine OpenMP threads that wait for
    each other run the VAE's small conv3d calls ~10x slower (measured: one CLI run 2.3 s with 1
    thread, 23 s with 2 while other jobs ran)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_transformer_inputs(transformer, frames: int = 2, latent_hw: tuple[int, int] = (4, 6), identities: int = 2,
                              dtype=None) -> dict:
    """Seeded random keyword inputs for one forward of `transformer` (any config): latent frames
    `frames`, latent size `latent_hw`, `identities` people; cast to `dtype` except the timestep."""
    import torch

    cfg = transformer.config
    height, width = latent_hw
    g = torch.Generator().manual_seed(0)
    x = dict(
        hidden_states=torch.randn(1, cfg.in_channels, frames, height, width, generator=g), timestep=torch.tensor([600.0]),
        encoder_hidden_states=torch.randn(1, 7, cfg.text_dim, generator=g),
        encoder_hidden_states_image=torch.randn(1, 257, cfg.image_dim, generator=g),
        face_embeds=torch.randn(1, identities, 257, cfg.face_dim, generator=g),
        audio_embeds=torch.randn(1, identities, 4 * (frames - 1) + 1, cfg.audio_window, cfg.audio_layers,
                                 cfg.audio_channels, generator=g),
        face_token_masks=torch.rand(1, identities, frames, height // 2, width // 2, generator=g))
    return x if dtype is None else {k: v if k == "timestep" else v.to(dtype) for k, v in x.items()}


from anytalker.parity import load_case  # noqa: E402,F401  (re-exported for the tests)
