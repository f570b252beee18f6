"""The transformer's conditions, built from a generation's or a training example's inputs.

One home for every condition, called by `AnyTalkerPipeline`, the trainer's `ConditionEncoder`
(anytalker.training.examples) and the puppets prepare cache, so generation and training see the
same numbers:

    frames uint8 [.., H, W, 3]  -> pixels in [-1, 1]                        `pixels`
    known frames + zeros        -> reference latent [B, 16, T, h, w]         `reference_latents`
    face regions + reference    -> y = 4 mask channels + latent [B, 20, ...]  `condition_latents`
    face boxes                  -> expanded masks [H, W] (face regions)      `face_regions`
    face regions                -> token masks [N, h/2, w/2]                 `face_token_masks`
    image / face crops          -> CLIP tokens [B, 257, D] / [N, 257, D]     `clip_image_tokens` / `clip_face_tokens`
    aligned 16 kHz tracks       -> wav2vec2 windows [N, F, 5, layers, C]     `audio_windows`
    prompts                     -> umT5 features, padded [B, L, D]           `text_features` / `pad_text`

Boxes are `FaceBox`es or (x0, y0, x1, y1) sequences in image pixels (exclusive ends).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..encoders.image import encode_clip_image
from ..encoders.text import encode_prompts
from ..encoders.vae import encode_video
from ..encoders.wav2vec import AudioFeatureEncoder
from ..faces.detection import FaceBox
from ..faces.masks import box_mask, expand_mask, mask_channels, token_mask

__all__ = [
    "audio_windows", "box_coords", "clip_face_tokens", "clip_image_tokens", "condition_latents", "face_crops",
    "face_regions", "face_token_masks", "pad_text", "pixels", "reference_latents", "resize_pixels",
    "text_features",
]

Box = FaceBox | Sequence[float]


def box_coords(box: Box) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a FaceBox or a 4-sequence."""
    x0, y0, x1, y1 = box.as_tuple() if isinstance(box, FaceBox) else box
    return x0, y0, x1, y1


# ------------------------------------------------------------------------------------ pixels

def pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames -> float32 in [-1, 1], channels first with a batch axis:
    an image [H, W, 3] -> [1, 3, H, W], a clip [F, H, W, 3] -> [1, 3, F, H, W]. The input is copied."""
    return torch.tensor(np.asarray(frames)).movedim(-1, 0)[None].float() / 127.5 - 1.0


def resize_pixels(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, 3, height, width] (bicubic, clamped): the reference frame at
    the generation size."""
    return F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)


# ----------------------------------------------------------------------- the I2V condition y

def reference_latents(vae, known_frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The I2V condition latent: VAE encoding of the known frames [B, 3, k, H, W] in [-1, 1]
    followed by zeros up to `num_frames` (the release's reference frame + zeros)."""
    batch, channels, known, height, width = known_frames.shape
    video = known_frames.new_zeros(batch, channels, num_frames, height, width)
    video[:, :, :known] = known_frames
    return encode_video(vae, video)


def face_regions(boxes: Sequence[Box], height: int, width: int) -> list[torch.Tensor]:
    """Each face box -> the region its audio drives: the release's expanded mask, float32 [H, W]."""
    return [expand_mask(box_mask(box_coords(box), height, width)) for box in boxes]


def condition_latents(regions: Sequence[torch.Tensor], reference: torch.Tensor, num_frames: int,
                      known_frames: int = 1) -> torch.Tensor:
    """y: the 4 mask channels (`faces.masks.mask_channels`) then the reference latent, along the
    channel axis. `reference` [16, T, h, w] -> [20, T, h, w], or [B, 16, ...] -> [B, 20, ...]
    (the same masks for every batch entry); `num_frames` video frames (4(T-1)+1)."""
    masks = mask_channels(regions, num_frames, *reference.shape[-2:], known_frames=known_frames)
    masks = masks.to(reference.device, reference.dtype)
    if reference.ndim == 5:
        masks = masks[None].expand(reference.shape[0], -1, -1, -1, -1)
    return torch.cat([masks, reference], dim=-4)


def face_token_masks(regions: Sequence[torch.Tensor], latent_h: int, latent_w: int,
                     patch: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """[N, latent_h / patch_h, latent_w / patch_w]: each face region on the transformer's token grid."""
    return torch.stack([token_mask(m, latent_h // patch[0], latent_w // patch[1]) for m in regions])


# --------------------------------------------------------------------------------------- CLIP

def face_crops(image: torch.Tensor, boxes: Sequence[Box]) -> list[torch.Tensor]:
    """The face crops [1, 3, h, w] of an image [1, 3, H, W]: rows int(y0)..int(y1), columns
    int(x0)..int(x1), at least one pixel (a box thinner than a pixel keeps its first row/column)."""
    crops = []
    for box in boxes:
        x0, y0, x1, y1 = (int(v) for v in box_coords(box))
        crops.append(image[:, :, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)])
    return crops


def clip_image_tokens(image_encoder, image: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> CLIP tokens [B, 257, D] of the whole image."""
    return encode_clip_image(image_encoder, image)


def clip_face_tokens(image_encoder, image: torch.Tensor, boxes: Sequence[Box]) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1] -> CLIP tokens [N, 257, D] of each face crop, in box order."""
    return torch.cat([encode_clip_image(image_encoder, crop) for crop in face_crops(image, boxes)])


# -------------------------------------------------------------------------------------- audio

def audio_windows(encoder: AudioFeatureEncoder, tracks: Sequence, fps: int, num_frames: int) -> torch.Tensor:
    """Aligned 16 kHz tracks (one per person) -> windowed wav2vec2 features [N, F, 5, layers, C]."""
    return torch.stack([encoder(np.asarray(track, dtype=np.float32), fps=fps, num_frames=num_frames)
                        for track in tracks])


# --------------------------------------------------------------------------------------- text

def text_features(text_encoder, tokenizer, prompts: Sequence[str], max_length: int) -> list[torch.Tensor]:
    """umT5 features [L_i, D] of each prompt (its real length; see `encoders.text.encode_prompts`)."""
    return encode_prompts(text_encoder, tokenizer, list(prompts), max_length=max_length)


def pad_text(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """[L_i, D] features -> [B, L, D], zero-padded to the longest (the transformer zero-pads to
    text_len anyway, so padding changes nothing)."""
    length = max(f.shape[0] for f in features)
    return torch.stack([F.pad(f, (0, 0, 0, length - f.shape[0])) for f in features])
