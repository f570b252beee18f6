"""Runs the golden vectors of the official release (`../shared/parity`) through this implementation.

The vectors were produced by the official code in float32; matching them within 1e-4 shows that
the same functions are computed (see the parity README). Used by the tests and by
`anytalker parity`, so a user can check an installation on their own machine: `run_all` yields one
row per compared output (a family that cannot load, or a case that cannot run, becomes a failure row
with its reason) and `format_report` turns the rows into the lines the command prints.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

TOLERANCE = 1e-4  # float32 noise is ~3e-6; a semantic error is >= 0.38 (parity README, section 2)


def default_parity_dir() -> Path:
    return Path(os.environ.get("ANYTALKER_PARITY_DIR", Path(__file__).resolve().parents[3] / "shared" / "parity"))


def load_case(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a golden case; floating tensors upcast to float32 as the README asks."""
    tensors = {}
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
        for key in handle.keys():
            value = handle.get_tensor(key)
            tensors[key] = value.float() if value.is_floating_point() else value
    return tensors, meta


def load_release_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Release-named weights; big matrices are stored as exact f16 low-rank factors A @ B."""
    try:
        raw = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - safetensors' own message does not name the file
        raise ValueError(f"{Path(path).name} could not be read ({type(error).__name__}: {error})") from error
    state = {}
    for key, value in raw.items():
        if key.endswith("::lowrank_a"):
            name = key.removesuffix("::lowrank_a")
            state[name] = value.float() @ raw[name + "::lowrank_b"].float()
        elif not key.endswith("::lowrank_b"):
            state[key] = value
    return state


def max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs difference in float32; inf when the shapes differ (fails any tolerance)."""
    if tuple(actual.shape) != tuple(expected.shape):
        return float("inf")
    if actual.numel() == 0:
        return 0.0
    return (actual.float() - expected.float()).abs().max().item()


def _diffs(outputs: dict[str, torch.Tensor], case: dict, golden: dict[str, Callable] | None = None) -> dict[str, float]:
    """Each computed output against its golden tensor: `case[name]`, or `golden[name](case)` if given."""
    golden = golden or {}
    return {name: max_abs_diff(value, golden[name](case) if name in golden else case[name])
            for name, value in outputs.items()}


def family_files(parity_dir: Path, name: str) -> tuple[Path, Path]:
    """(`<name>.config.json`, `<name>.weights.safetensors`); FileNotFoundError naming what is absent."""
    paths = Path(parity_dir) / f"{name}.config.json", Path(parity_dir) / f"{name}.weights.safetensors"
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{' and '.join(missing)} not found in {parity_dir}")
    return paths


def _config(parity_dir: Path, name: str) -> dict:
    path = family_files(parity_dir, name)[0]
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path.name} is not valid JSON ({error})") from error


def load_release_transformer(parity_dir: Path, name: str):
    from .models import AnyTalkerTransformer

    config = _config(parity_dir, name)
    weights = load_release_weights(family_files(parity_dir, name)[1])
    return AnyTalkerTransformer.from_official(weights, config).float().eval()


def transformer_inputs(case: dict, context_key: str = "context", zero_audio: bool = False) -> dict:
    """The release's forward call of a DiT case (batch 1, N identities) in AnyTalkerTransformer's terms."""
    num_ids = sum(1 for key in case if key.startswith("audio."))
    audio = torch.stack([case[f"audio.{i}"] for i in range(num_ids)])[None]
    return dict(
        hidden_states=torch.cat([case["x"], case["y"]])[None],
        timestep=case["t"],
        encoder_hidden_states=case[context_key][None],
        encoder_hidden_states_image=case["clip_fea"],
        face_embeds=torch.cat([case[f"ref_face.{i}"] for i in range(num_ids)])[None],
        audio_embeds=torch.zeros_like(audio) if zero_audio else audio,
        face_token_masks=torch.cat([case[f"face_mask.{i}"][0] for i in range(num_ids)])[None],
    )


def transformer_case_variants(case: dict) -> dict[str, dict]:
    """Inputs for each stored output of a DiT case (conditional, CFG-unconditional, ablations)."""
    return {
        "out": transformer_inputs(case),
        "out_uncond": transformer_inputs(case, "context_null", zero_audio=True),
        "out_zero_audio": transformer_inputs(case, zero_audio=True),
        "out_no_token_mask": {**transformer_inputs(case), "face_token_masks": None},
    }


@torch.no_grad()
def transformer_case_diffs(model, path: str | os.PathLike) -> dict[str, float]:
    """Max abs difference of every stored output of one DiT case."""
    case, _ = load_case(path)
    return {key: max_abs_diff(model(**inputs).sample[0], case[key])
            for key, inputs in transformer_case_variants(case).items()}



# ---------------------------------------------------------------- Wan2.1 VAE (README: vae_tiny)


def load_release_vae(parity_dir: Path, name: str = "vae_tiny"):
    from .encoders.vae import load_wan_vae

    config = _config(parity_dir, name)
    return load_wan_vae(family_files(parity_dir, name)[1], config=config)


@torch.no_grad()
def decode_latents_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """Normalised latent -> the release's decode before its final clamp (`decoded_unclamped`)."""
    from .encoders.vae import decode_unclamped, denormalize_latents

    return decode_unclamped(vae, denormalize_latents(vae, z))


@torch.no_grad()
def vae_case_outputs(vae, case: dict) -> dict[str, torch.Tensor]:
    """Encoder posterior and normalised mean of `video`; decode (clamped and not) of `z`."""
    from .encoders.vae import decode_latents, encode_video

    posterior = vae.encode(case["video"]).latent_dist
    return {
        "mu": encode_video(vae, case["video"]),
        "mu_raw": posterior.mean,
        # diffusers clamps log_var to [-30, 20]; the golden values lie well inside (checked by the tests).
        "log_var": posterior.logvar,
        "decoded": decode_latents(vae, case["z"]),
        "decoded_unclamped": decode_latents_unclamped(vae, case["z"]),
    }


def vae_case_diffs(vae, path: str | os.PathLike) -> dict[str, float]:
    case, _ = load_case(path)
    return _diffs(vae_case_outputs(vae, case), case)


# ---------------------------------------------------------------- umT5 encoder (README: t5_tiny)


def load_release_t5(parity_dir: Path, name: str = "t5_tiny"):
    from .encoders.text import load_umt5_encoder

    config = _config(parity_dir, name)
    return load_umt5_encoder(family_files(parity_dir, name)[1], dtype=torch.float32, config=config)


@torch.no_grad()
def t5_case_outputs(model, case: dict) -> dict[str, torch.Tensor]:
    """Every position of the padded batch (padded ones are computed, not zeroed, in the release),
    and the per-sequence features trimmed to the mask length, as the pipeline returns them."""
    from .encoders.text import encode_token_ids

    outputs = {"out_full": model(input_ids=case["ids"], attention_mask=case["mask"]).last_hidden_state}
    for b, features in enumerate(encode_token_ids(model, case["ids"], case["mask"])):
        outputs[f"out_trimmed.{b}"] = features
    return outputs


def t5_case_diffs(model, path: str | os.PathLike) -> dict[str, float]:
    case, _ = load_case(path)
    return _diffs(t5_case_outputs(model, case), case)


# ---------------------------------------------------------------- CLIP vision tower (README: clip_vision_tiny)


def load_release_clip_vision(parity_dir: Path, name: str = "clip_vision_tiny"):
    """float32 model; its preprocessing mean / std are the release's `CLIP_MEAN` / `CLIP_STD`."""
    from .encoders.image import load_clip_vision

    config = _config(parity_dir, name)
    return load_clip_vision(family_files(parity_dir, name)[1], dtype=torch.float32, config=config)


@torch.no_grad()
def clip_vision_case_outputs(model, case: dict) -> dict[str, torch.Tensor]:
    """Preprocessing of `image`; the tower on the golden `pixel_values` (so each stage is checked on
    its own); and the pipeline's `encode_clip_image` from the raw image. `out.*` all compare to `out`."""
    from .encoders.image import (
        clip_penultimate_features,
        encode_clip_image,
        preprocess_clip_image,
    )

    image, pixel_values = case["image"][None], case["pixel_values"]
    hidden = model(pixel_values, output_hidden_states=True)
    return {
        "pixel_values": preprocess_clip_image(image, size=model.config.image_size),
        "tokens_in": model.pre_layrnorm(model.embeddings(pixel_values)),
        # hidden_states[0] is the pre-norm output, so [-2] is "all blocks but the last" (use_31_block) ...
        "out.hidden_states": hidden.hidden_states[-2],
        "out_all_blocks": hidden.last_hidden_state,
        # ... which is what the pipeline helpers return, from pixel values or from the raw image.
        "out.from_pixel_values": clip_penultimate_features(model, pixel_values),
        "out": encode_clip_image(model, image),
    }


_CLIP_GOLDEN = {name: (lambda case: case["out"]) for name in ("out.hidden_states", "out.from_pixel_values")}


def clip_vision_case_diffs(model, path: str | os.PathLike) -> dict[str, float]:
    case, _ = load_case(path)
    return _diffs(clip_vision_case_outputs(model, case), case, _CLIP_GOLDEN)


# ---------------------------------------------------------------- wav2vec2 features (README: wav2vec_tiny)


def load_release_wav2vec(parity_dir: Path, name: str = "wav2vec_tiny"):
    """`AudioFeatureEncoder` over the tiny model, read through `load_wav2vec2` (a transformers folder)."""
    from transformers.utils import logging as hf_logging

    from .encoders.wav2vec import AudioFeatureEncoder, load_wav2vec2

    parity_dir = Path(parity_dir)
    _config(parity_dir, name)  # both files present and the config readable, else an error naming them
    layout = {f"{name}.config.json": "config.json", f"{name}.weights.safetensors": "model.safetensors"}
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as folder:
        for source, target in layout.items():
            try:
                os.symlink((parity_dir / source).resolve(), Path(folder) / target)
            except OSError:  # no symlinks (e.g. Windows without developer mode)
                shutil.copy(parity_dir / source, Path(folder) / target)
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load would clutter `anytalker parity`
        try:
            model = load_wav2vec2(folder)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        # Materialise every tensor before the folder goes (safetensors may memory-map the file).
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return AudioFeatureEncoder(model)


def wav2vec_case_outputs(encoder, case: dict) -> dict[str, torch.Tensor]:
    """Every intermediate of `AudioFeatureEncoder.trace`, named as in the case file; `F` and
    `audio_length` as one-element tensors. `expected` is what the DiT receives."""
    from .encoders.wav2vec import window_features

    trace = encoder.trace(case["waveform"], fps=int(case["fps"]))
    return {
        "F": torch.tensor([trace.num_frames]),
        "audio_length": torch.tensor([trace.audio_length]),
        "input_values": trace.input_values,
        "input_values_padded": trace.input_values_padded,
        "cnn_features": trace.cnn_features,
        "cnn_features_interp": trace.cnn_features_interp,
        "hidden_states_all": trace.hidden_states,
        "windowed_all": window_features(trace.hidden_states, encoder.window_radius),
        "expected": trace.features,
    }


# The golden hidden_states_all also holds layer 0 (the projected CNN features before the encoder).
_WAV2VEC_GOLDEN = {"hidden_states_all": lambda case: case["hidden_states_all"][:, 1:]}


def wav2vec_case_diffs(encoder, path: str | os.PathLike) -> dict[str, float]:
    case, _ = load_case(path)
    return _diffs(wav2vec_case_outputs(encoder, case), case, _WAV2VEC_GOLDEN)


# ---------------------------------------------------------------- all families

# family (case-file prefix) -> (loader(parity_dir, family), case_diffs(model, path))
FAMILIES: dict[str, tuple[Callable, Callable]] = {
    "dit_af_tiny": (load_release_transformer, transformer_case_diffs),
    "dit_legacy_tiny": (load_release_transformer, transformer_case_diffs),
    "vae_tiny": (load_release_vae, vae_case_diffs),
    "t5_tiny": (load_release_t5, t5_case_diffs),
    "clip_vision_tiny": (load_release_clip_vision, clip_vision_case_diffs),
    "wav2vec_tiny": (load_release_wav2vec, wav2vec_case_diffs),
}


Row = tuple[str, str, float, str | None]  # (case file, output, max abs diff, failure reason)


def _reason(error: BaseException) -> str:
    """One line: the exception's type and message, whitespace collapsed, at most 400 characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 400 else text[:399] + "…"


def run_all(parity_dir: Path) -> Iterator[Row]:
    """(case file, output, max abs diff, error) for every golden case this implementation covers.

    Each family with `<family>.case_*.safetensors` files is loaded once from `<family>.config.json`
    and `<family>.weights.safetensors`; families without case files are skipped. A computed output
    has `error` None. What cannot be computed becomes a failure row instead of an exception, with
    diff NaN and a one-line `error`, and the run goes on:
    - a family that cannot load (config or weights missing, corrupt, or not matching each other)
      gives one `(case, "load", nan, reason)` row per case file of the family;
    - a case that cannot run (a file that cannot be read, inputs that do not fit the model) gives
      one `(case, "run", nan, reason)` row.
    """
    parity_dir = Path(parity_dir)
    for family, (load, case_diffs) in FAMILIES.items():
        cases = sorted(parity_dir.glob(f"{family}.case_*.safetensors"))
        if not cases:
            continue
        try:
            model = load(parity_dir, family)
        except Exception as error:  # noqa: BLE001 - reported as a failed row, the other families still run
            reason = f"cannot load {family}: {_reason(error)}"
            for path in cases:
                yield path.name, "load", float("nan"), reason
            continue
        for path in cases:
            try:
                _check_case_family(path, family)
                diffs = case_diffs(model, path)
            except Exception as error:  # noqa: BLE001 - as above, per case
                yield path.name, "run", float("nan"), _reason(error)
                continue
            for output, diff in diffs.items():
                yield path.name, output, diff, None
        del model


def _check_case_family(path: Path, family: str) -> None:
    """A case whose metadata names another model (DiT cases record theirs) must not run on this one."""
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
    model = meta.get("model") if isinstance(meta, dict) else None
    if model is not None and model != family:
        raise ValueError(f"the case is for {model}, not {family} (its metadata's 'model')")


def format_report(rows) -> tuple[list[str], int]:
    """(lines to print, number of failures) of `run_all` rows, as `anytalker parity` prints them.

    One line per row, `case:output  max|diff| 1.23e-05  ok` (or `FAIL` past TOLERANCE, NaN
    included) for a computed row and `case:output  FAIL  <reason>` for a failure row, then
    `N passed, M failed (tolerance 0.0001, float32)`.
    """
    rows = list(rows)
    width = max((len(f"{case}:{output}") for case, output, _, _ in rows), default=0)
    lines, failures = [], 0
    for case, output, diff, error in rows:
        name = f"{case + ':' + output:<{width}}"
        if error is not None:
            failures += 1
            lines.append(f"{name}  FAIL  {error}")
            continue
        ok = diff <= TOLERANCE  # False for NaN
        failures += not ok
        lines.append(f"{name}  max|diff| {diff:.2e}  {'ok' if ok else 'FAIL'}")
    lines.append(f"{len(rows) - failures} passed, {failures} failed (tolerance {TOLERANCE:g}, float32)")
    return lines, failures
