"""Training examples: single clips, side-by-side pairs (stage 1) and their encoding into model inputs.

The conditioning is built by `anytalker.pipeline.conditioning`, the functions the pipeline calls
(masks, reference latent, CLIP, wav2vec2 windows, text), so training and generation see the same inputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from ..encoders.vae import encode_video
from ..encoders.wav2vec import AudioFeatureEncoder
from ..pipeline import conditioning
from .shards import Sample

PAIR_PROMPT = "Two people are talking to each other."


@dataclass
class Example:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    audio: list[np.ndarray]  # per identity, 16 kHz
    boxes: list[list[float]]  # per identity, [x0, y0, x1, y1] in example pixels
    caption: str
    cache: dict[str, torch.Tensor] = field(default_factory=dict)  # encodings valid for these frames
    source: str = ""


def single_example(sample: Sample, view: str = "full") -> Example:
    """One clip as it is; `view="half"` takes a single-person clip's face-centred half view (the
    geometry each half of a side-by-side pair has), when the clip has one."""
    if view == "half" and sample.half_frames is not None:
        cache = {k.removeprefix("half."): v for k, v in sample.cache.items()
                 if k.startswith("half.") or k.startswith(("audio.", "clip_face.", "text"))}
        return Example(sample.half_frames, sample.audio, [list(sample.meta["half_box"])],
                       sample.meta.get("caption", ""), cache, sample.key)
    return Example(sample.frames, sample.audio, [p["box"] for p in sample.meta["persons"]],
                   sample.meta.get("caption", ""), dict(sample.cache), sample.key)


def pair_example(left: Sample, right: Sample, prompt: str = PAIR_PROMPT) -> Example:
    """Two single-person clips joined side by side, each half keeping its own track, face and mask.

    Each half is the clip's face-centred half view; cached half-view latents are joined along the
    width (the VAE is convolutional, so this matches encoding the joined video except within its
    receptive field of the seam).
    """
    for sample in (left, right):
        if sample.half_frames is None or len(sample.audio) != 1:
            raise ValueError(f"{sample.key} is not a single-person sample with a half view")
    half_w = left.half_frames.shape[2]
    rb = right.meta["half_box"]
    cache = {}
    if "half.latents" in left.cache and "half.latents" in right.cache:
        for name in ("latents", "ref_latents"):
            cache[name] = torch.cat([left.cache[f"half.{name}"], right.cache[f"half.{name}"]], dim=-1)
        cache["audio.0"], cache["audio.1"] = left.cache["audio.0"], right.cache["audio.0"]
        cache["clip_face.0"], cache["clip_face.1"] = left.cache["clip_face.0"], right.cache["clip_face.0"]
    return Example(np.concatenate([left.half_frames, right.half_frames], axis=2), [left.audio[0], right.audio[0]],
                   [list(left.meta["half_box"]), [rb[0] + half_w, rb[1], rb[2] + half_w, rb[3]]], prompt, cache,
                   f"{left.key}+{right.key}")


def enlarge_box(box: list[float], factor: float, height: int, width: int) -> list[float]:
    """The box scaled about its centre (clipped): random mask enlargement during training, so the
    model does not rely on the exact mask edge (inference boxes come from other detectors)."""
    cx, cy, hw, hh = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) * factor / 2, \
        (box[3] - box[1]) * factor / 2
    return [max(cx - hw, 0), max(cy - hh, 0), min(cx + hw, width), min(cy + hh, height)]


class ConditionEncoder:
    """Frozen encoders (a pipeline's components) -> the transformer's inputs for one example.

    `pixels` arguments are clips [1, 3, F, H, W] in [-1, 1] (`conditioning.pixels` of uint8 frames);
    every result is float32 without a batch axis.
    """

    def __init__(self, vae, text_encoder, tokenizer, image_encoder, audio_encoder, text_len: int, fps: int = 24):
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.image_encoder, self.text_len, self.fps = image_encoder, text_len, fps
        self.audio = AudioFeatureEncoder(audio_encoder)
        self._text_cache: dict[str, torch.Tensor] = {}

    def text(self, caption: str) -> torch.Tensor:
        """[L, D] umT5 features of a caption (computed once per caption)."""
        if caption not in self._text_cache:
            self._text_cache[caption] = conditioning.text_features(self.text_encoder, self.tokenizer, [caption],
                                                                   self.text_len)[0].float()
        return self._text_cache[caption]

    def track_audio(self, wave: np.ndarray, num_frames: int) -> torch.Tensor:
        """[F, 5, layers, C] wav2vec2 windows of one 16 kHz track."""
        return conditioning.audio_windows(self.audio, [wave], self.fps, num_frames)[0]

    def video_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """[16, T, h, w]: the clip's latent (what the model learns to generate)."""
        return encode_video(self.vae, pixels)[0].float()

    def reference_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """[16, T, h, w]: the clip's first frame followed by zeros, encoded (the I2V condition)."""
        return conditioning.reference_latents(self.vae, pixels[:, :, :1], pixels.shape[2])[0].float()

    def clip_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[257, D] CLIP tokens of frame 0."""
        return conditioning.clip_image_tokens(self.image_encoder, pixels[:, :, 0])[0].float()

    def clip_faces(self, pixels: torch.Tensor, boxes) -> torch.Tensor:
        """[N, 257, D] CLIP tokens of each face crop of frame 0."""
        return conditioning.clip_face_tokens(self.image_encoder, pixels[:, :, 0], boxes).float()

    @torch.no_grad()
    def cache_entries(self, sample: Sample) -> dict[str, torch.Tensor]:
        """Everything `encode` can reuse for the sample, for its full view and (if any) half view."""
        pixels = conditioning.pixels(sample.frames)
        num_frames = pixels.shape[2]
        cache = {"text": self.text(sample.meta.get("caption", "")), "latents": self.video_latents(pixels),
                 "ref_latents": self.reference_latents(pixels), "clip_image": self.clip_image(pixels)}
        for i, face in enumerate(self.clip_faces(pixels, [p["box"] for p in sample.meta["persons"]])):
            cache[f"clip_face.{i}"] = face
        for i, wave in enumerate(sample.audio):
            cache[f"audio.{i}"] = self.track_audio(wave, num_frames)
        if sample.half_frames is not None:
            half = conditioning.pixels(sample.half_frames)
            cache["half.latents"], cache["half.ref_latents"] = self.video_latents(half), self.reference_latents(half)
        return cache

    @torch.no_grad()
    def encode(self, example: Example, mask_enlarge: float = 1.0) -> dict[str, torch.Tensor]:
        """Model inputs (no batch axis): latents [16, T, h, w], y [20, T, h, w], text [L, D],
        clip_image [257, D], faces [N, 257, D], audio [N, F, 5, layers, C], token_masks [N, h/2, w/2]."""
        cache = example.cache
        pixels = conditioning.pixels(example.frames)
        _, _, num_frames, height, width = pixels.shape
        latents = cache["latents"] if "latents" in cache else self.video_latents(pixels)
        ref = cache["ref_latents"] if "ref_latents" in cache else self.reference_latents(pixels)
        latent_h, latent_w = latents.shape[-2:]
        regions = conditioning.face_regions([enlarge_box(b, mask_enlarge, height, width) for b in example.boxes],
                                            height, width)
        num_ids = len(example.audio)
        faces = torch.stack([cache[f"clip_face.{i}"] for i in range(num_ids)]) if "clip_face.0" in cache \
            else self.clip_faces(pixels, example.boxes)
        audio = torch.stack([cache[f"audio.{i}"] if f"audio.{i}" in cache else self.track_audio(w, num_frames)
                             for i, w in enumerate(example.audio)])
        return {"latents": latents, "y": conditioning.condition_latents(regions, ref, num_frames),
                "text": cache["text"] if "text" in cache else self.text(example.caption),
                "clip_image": cache["clip_image"] if "clip_image" in cache else self.clip_image(pixels),
                "faces": faces, "audio": audio,
                "token_masks": conditioning.face_token_masks(regions, latent_h, latent_w)}


def collate(encoded: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch of encoded examples. Identities are padded to the batch's largest N with zero masks,
    which is exact: a zero mask removes that identity's contribution."""
    num_ids = max(e["faces"].shape[0] for e in encoded)

    def pad_ids(tensor):
        return torch.cat([tensor, tensor.new_zeros(num_ids - tensor.shape[0], *tensor.shape[1:])])

    return {
        "latents": torch.stack([e["latents"] for e in encoded]),
        "y": torch.stack([e["y"] for e in encoded]),
        "text": conditioning.pad_text([e["text"] for e in encoded]),
        "clip_image": torch.stack([e["clip_image"] for e in encoded]),
        "faces": torch.stack([pad_ids(e["faces"]) for e in encoded]),
        "audio": torch.stack([pad_ids(e["audio"]) for e in encoded]),
        "token_masks": torch.stack([pad_ids(e["token_masks"]) for e in encoded]),
    }


def choose_batch(singles: list[int], pairable: list[int], step: int, batch_size: int,
                 concat_probability: float, seed: int) -> tuple[str, list[int]]:
    """The sample indices of global step `step`: a pure function of (seed, step), so a resumed run
    draws exactly the batches an uninterrupted one would, whatever the number of processes.

    With probability `concat_probability` the batch is made of side-by-side pairs (2 * batch_size
    samples of `pairable`, consecutive ones pair up), otherwise of samples of `singles`. An empty
    `pairable` means no pairs (stage 2 without `pair_shards`).
    """
    rng = random.Random(f"{seed}:{step}")
    paired = len(pairable) >= 2 and rng.random() < concat_probability
    pool = pairable if paired else singles
    needed = batch_size * (2 if paired else 1)
    chosen = rng.sample(pool, needed) if len(pool) >= needed else rng.choices(pool, k=needed)
    return ("pairs" if paired else "singles"), chosen
