"""wav2vec2 audio features exactly as the official AnyTalker release computes them.

The release runs a transformers `Wav2Vec2Model` with two changes to the standard forward: the CNN
features are linearly resampled to one frame per video frame *before* the feature projection and
the transformer, and every transformer layer's output is kept. Each video frame then gets a ±2
frame window of those states. The DiT's audio projector was trained on exactly these features, so
every step below (including the padding quirk) is reproduced, and checked against the golden
vectors in tests/test_wav2vec.py (shared/parity/README.md §5).

Only transformers' own modules are used (`feature_extractor`, `feature_projection`, `encoder`);
the per-layer states are collected with forward hooks because transformers 5.x no longer returns
`hidden_states` when `encoder` is called directly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Model

from anytalker.audio.io import SAMPLE_RATE, validate_waveform
from anytalker.utils.checkpoints import CheckpointError

__all__ = [
    "WAV2VEC_SAMPLE_RATE",
    "AudioFeatureEncoder",
    "AudioFeatureTrace",
    "audio_frame_count",
    "load_wav2vec2",
    "normalize_waveform",
    "video_frame_count",
    "window_features",
]

WAV2VEC_SAMPLE_RATE = SAMPLE_RATE
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or value != int(value):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def audio_frame_count(num_samples: int, sample_rate: int = WAV2VEC_SAMPLE_RATE, fps: int = 24) -> int:
    """ceil(duration * fps): the release's `audio_length`, one feature frame per video frame."""
    sample_rate, fps = _positive_int(sample_rate, "sample_rate"), _positive_int(fps, "fps")
    # Same float expression as the release (duration first, then * fps), so rounding agrees too.
    return math.ceil(int(num_samples) / sample_rate * fps)


def video_frame_count(num_samples: int, sample_rate: int = WAV2VEC_SAMPLE_RATE, fps: int = 24) -> int:
    """Number of video frames F for an audio clip: the largest 4n+1 <= ceil(duration * fps).

    The Wan VAE maps 4n+1 video frames to n+1 latent frames, hence the rounding down to 4n+1.
    """
    frames = ((audio_frame_count(num_samples, sample_rate, fps) - 1) // 4) * 4 + 1
    if frames < 1:
        raise ValueError(f"audio too short: {num_samples} samples at {sample_rate} Hz give no video frame at {fps} fps")
    return frames


def window_features(hidden: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """[T, ...] -> [T, 2*radius+1, ...]: frame t gets frames t-radius..t+radius, clamped to [0, T-1].

    Clamping (not zero padding) is what the release does: the first and last frames repeat.
    """
    if hidden.ndim < 1 or hidden.shape[0] < 1:
        raise ValueError(f"hidden must have at least one frame along dim 0, got shape {tuple(hidden.shape)}")
    offsets = torch.arange(-radius, radius + 1, device=hidden.device)
    index = (torch.arange(hidden.shape[0], device=hidden.device)[:, None] + offsets).clamp_(0, hidden.shape[0] - 1)
    return hidden[index]


def normalize_waveform(waveform) -> torch.Tensor:
    """Whole-utterance zero mean / unit variance in float32, as `Wav2Vec2FeatureExtractor(do_normalize=True)`.

    Population variance and eps 1e-7 inside the sqrt, no attention mask: the statistics are taken
    before the padding below, so the appended zeros are not normalised.
    """
    x = torch.from_numpy(validate_waveform(waveform).copy())
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)


def load_wav2vec2(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Wav2Vec2Model:
    """Loads a local transformers-format wav2vec2 folder as a frozen `Wav2Vec2Model` in eval mode.

    Accepts `Wav2Vec2Model`, `Wav2Vec2ForCTC` and `Wav2Vec2ForPreTraining` checkpoints (e.g. a copy
    of facebook/wav2vec2-base-960h): transformers strips the `wav2vec2.` prefix, drops the heads and
    renames old `weight_g`/`weight_v` weight-norm names. Never touches the network.
    """
    path = Path(path)
    expected = (
        "config.json and model.safetensors (or pytorch_model.bin), e.g. a local copy of facebook/wav2vec2-base-960h"
    )
    if not path.is_dir():
        raise CheckpointError(f"wav2vec2 model folder not found: expected a directory at {path} holding {expected}")
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"wav2vec2 config not found: expected {path / 'config.json'} (the folder must hold {expected})"
        )
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise CheckpointError(f"wav2vec2 weights not found in {path}: expected one of {', '.join(_WEIGHT_FILES)}")
    try:
        model, info = Wav2Vec2Model.from_pretrained(path, dtype=dtype, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(
            f"wav2vec2 checkpoint at {path} could not be loaded ({type(error).__name__}: {error})"
        ) from error
    # from_pretrained would silently keep random values for missing weights; masked_spec_embed is
    # only used for SpecAugment during training, so it may be absent.
    missing = sorted(set(info["missing_keys"]) - {"masked_spec_embed"})
    mismatched = sorted(str(item) for item in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise CheckpointError(
            f"wav2vec2 checkpoint at {path} does not fit Wav2Vec2Model: "
            f"missing {missing[:8]}, mismatched {mismatched[:8]}"
        )
    return model.eval().requires_grad_(False)


@dataclass
class AudioFeatureTrace:
    """Every intermediate of one `AudioFeatureEncoder` run (the names of the golden case files)."""

    input_values: torch.Tensor  # [N] normalised waveform
    input_values_padded: torch.Tensor  # [N + pad] what the CNN sees
    cnn_features: torch.Tensor  # [n_cnn, conv_dim], ~50 Hz
    cnn_features_interp: torch.Tensor  # [audio_length, conv_dim], one per video frame
    hidden_states: torch.Tensor  # [audio_length, layers, hidden]: hidden_states[1:], one per layer
    features: torch.Tensor  # [F, 2*radius+1, layers, hidden] float32, what the DiT receives
    num_frames: int  # F
    audio_length: int  # after padding


class AudioFeatureEncoder:
    """Windowed per-layer wav2vec2 features, one [5, layers, hidden] block per video frame.

    `official_padding=True` reproduces the release's padding quirk: when ceil(duration * fps) is
    not a multiple of F, zeros are appended until it is, which usually doubles the clip, and the
    transformer's global attention sees that silence. The released pipeline feeds the DiT these
    features, so the quirk stays on by default; `False` runs the transformer on the real audio only.
    """

    def __init__(self, model: Wav2Vec2Model, window_radius: int = 2, official_padding: bool = True):
        # Dropout, LayerDrop and SpecAugment are all training-only: eval mode disables them.
        self.model = model.eval()
        self.window_radius = window_radius
        self.official_padding = official_padding

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32, **kwargs
    ) -> AudioFeatureEncoder:
        return cls(load_wav2vec2(path, dtype=dtype), **kwargs)

    def __call__(
        self, waveform, fps: int = 24, num_frames: int | None = None, sample_rate: int = WAV2VEC_SAMPLE_RATE
    ) -> torch.Tensor:
        """16 kHz mono float waveform -> float32 [F, 5, layers, hidden]."""
        return self.trace(waveform, fps, num_frames, sample_rate).features

    def _cnn_frames(self, num_samples: int) -> int:
        config = self.model.config
        for kernel, stride in zip(config.conv_kernel, config.conv_stride):
            num_samples = (num_samples - kernel) // stride + 1
        return num_samples

    @torch.no_grad()
    def trace(
        self, waveform, fps: int = 24, num_frames: int | None = None, sample_rate: int = WAV2VEC_SAMPLE_RATE
    ) -> AudioFeatureTrace:
        """Like `__call__`, also returning every intermediate (for parity checks and debugging)."""
        if sample_rate != WAV2VEC_SAMPLE_RATE:
            raise ValueError(f"wav2vec2 needs {WAV2VEC_SAMPLE_RATE} Hz audio, got {sample_rate} Hz: resample first")
        fps = _positive_int(fps, "fps")
        input_values = normalize_waveform(waveform)
        audio_length = audio_frame_count(input_values.numel(), WAV2VEC_SAMPLE_RATE, fps)
        if num_frames is None:
            num_frames = video_frame_count(input_values.numel(), WAV2VEC_SAMPLE_RATE, fps)
        num_frames = _positive_int(num_frames, "num_frames")

        padded = input_values
        if self.official_padding and audio_length % num_frames:
            # The release pads with 16000 // fps samples per missing frame (666 at 24 fps, truncated),
            # so the padded audio is slightly shorter than audio_length frames; the interpolation
            # below stretches it anyway.
            missing = num_frames - audio_length % num_frames
            padded = torch.cat([input_values, input_values.new_zeros(missing * (WAV2VEC_SAMPLE_RATE // fps))])
            audio_length += missing
        elif audio_length < num_frames:
            raise ValueError(f"num_frames={num_frames} exceeds the {audio_length} frames of the audio at {fps} fps")
        if self._cnn_frames(padded.numel()) < 1:
            raise ValueError(
                f"waveform too short for the wav2vec2 CNN: {padded.numel()} samples ({padded.numel() / 16:.1f} ms)"
            )

        model = self.model.eval()  # in case someone switched it to train mode after construction
        param = next(model.parameters())
        cnn = model.feature_extractor(padded.to(param.device, param.dtype)[None])  # [1, C, n_cnn]
        # Resampling the ~50 Hz CNN frames to the video rate before the transformer is the
        # release's change to the standard forward: the transformer then runs at video rate.
        cnn_interp = F.interpolate(cnn, size=audio_length, mode="linear", align_corners=True).transpose(1, 2)
        projected, _ = model.feature_projection(cnn_interp)

        # hidden_states[1:] of transformers 4.x: each layer's output, except that the last one is
        # the encoder's final output (which, in the stable-layer-norm variant, includes the final
        # LayerNorm). Hooks are used because 5.x no longer collects them when calling `encoder`.
        layers = model.encoder.layers
        collected: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_hook(lambda _m, _i, out: collected.append(out[0] if isinstance(out, tuple) else out))
            for layer in layers[:-1]
        ]
        try:
            last = model.encoder(projected).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        if len(collected) != len(layers) - 1:
            raise RuntimeError(f"expected {len(layers) - 1} intermediate encoder outputs, hooks saw {len(collected)}")
        hidden = torch.stack(collected + [last], dim=2)[0].float()  # [audio_length, layers, hidden]

        features = window_features(hidden, self.window_radius)[:num_frames]
        return AudioFeatureTrace(
            input_values=input_values,
            input_values_padded=padded,
            cnn_features=cnn[0].T.float(),
            cnn_features_interp=cnn_interp[0].float(),
            hidden_states=hidden,
            features=features,
            num_frames=num_frames,
            audio_length=audio_length,
        )
