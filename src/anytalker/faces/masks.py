"""Face boxes -> the masks the model is conditioned on, exactly as the release builds them.

Parity README section 3.3; every function here reproduces the golden `mask_build.*`, `face_mask.*`
and `y[:4]` tensors bit for bit. All functions are pure (inputs are never modified).

Conventions: boxes are (x0, y0, x1, y1) in pixels with exclusive ends, i.e. the box covers rows
y0..y1-1 and columns x0..x1-1 (`mask[y0:y1, x0:x1]`). Masks are float32 [H, W].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .detection import FaceBox

BoxLike = FaceBox | Sequence[float]

EXPAND_W = 1.2  # the release widens the face box by 20% ...
EXPAND_H = 1.1  # ... and heightens it by 10% before it becomes the region an identity's audio drives


def _int_box(box: BoxLike) -> tuple[int, int, int, int]:
    coords = box.as_tuple() if isinstance(box, FaceBox) else tuple(box)
    if len(coords) != 4:
        raise ValueError(f"a box has 4 coordinates (x0, y0, x1, y1), got {coords}")
    return tuple(int(round(float(v))) for v in coords)


def box_mask(box: BoxLike, height: int, width: int) -> torch.Tensor:
    """0/1 float32 [height, width] mask of a box (rounded to whole pixels, clipped to the image)."""
    x0, y0, x1, y1 = _int_box(box)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box} lies outside the {width}x{height} image")
    mask = torch.zeros(height, width)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def expand_mask_box(box: BoxLike, height: int, width: int,
                    scale_w: float = EXPAND_W, scale_h: float = EXPAND_H) -> tuple[int, int, int, int]:
    """The release's enlarged box: (x0, y0, x1, y1), exclusive ends, clipped to the image.

    The release works on the inclusive pixel extent [min, max] of the mask: the centre is
    (min + max) / 2, the new size int(size * scale) with size = max - min + 1, and the new extent is
    [int(centre - new / 2), int(centre + new / 2)] clipped to [0, dim - 1]. (Python float arithmetic
    here gives the same integers as the release's float32 for every size up to 5000 px.)
    """
    x0, y0, x1, y1 = _int_box(box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box {box}")

    def expand(lo: int, hi_inclusive: int, scale: float, dim: int) -> tuple[int, int]:
        centre = (lo + hi_inclusive) / 2
        size = int((hi_inclusive - lo + 1) * scale)
        return max(0, int(centre - size / 2)), min(dim - 1, int(centre + size / 2)) + 1

    nx0, nx1 = expand(x0, x1 - 1, scale_w, width)
    ny0, ny1 = expand(y0, y1 - 1, scale_h, height)
    return nx0, ny0, nx1, ny1


def expand_mask(mask: torch.Tensor, scale_w: float = EXPAND_W, scale_h: float = EXPAND_H) -> torch.Tensor:
    """The release's mask expansion: the mask's bounding region, bilinearly resized into the enlarged box.

    Resizing (rather than filling ones) is what the release does, and it is why a few pixels of the
    golden expanded masks hold 0.99999994 instead of 1: bilinear weights that do not sum to exactly 1
    in float32. Reproducing it keeps the masks bit-identical.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a [H, W] mask, got shape {list(mask.shape)}")
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("cannot expand an empty mask")
    y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    nx0, ny0, nx1, ny1 = expand_mask_box((x0, y0, x1, y1), *mask.shape, scale_w=scale_w, scale_h=scale_h)
    region = mask[y0:y1, x0:x1].float()[None, None]
    expanded = torch.zeros(mask.shape, dtype=torch.float32)
    expanded[ny0:ny1, nx0:nx1] = F.interpolate(region, size=(ny1 - ny0, nx1 - nx0), mode="bilinear",
                                               align_corners=False)[0, 0]
    return expanded


def token_mask(mask: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """[H, W] image mask -> [grid_h, grid_w] soft token mask.

    Bilinear, align_corners=False and no antialiasing, as the release: values stay mostly 0/1 and
    fractions appear only where a box edge falls between the sampled pixels.
    """
    return _resize(mask, grid_h, grid_w)


def mask_channels(expanded_masks: Sequence[torch.Tensor], num_frames: int,
                  latent_h: int, latent_w: int, known_frames: int = 1) -> torch.Tensor:
    """The 4 mask channels of the image-to-video condition `y`: [4, T, latent_h, latent_w].

    Unlike plain Wan I2V (frame 0 ones, the rest zeros), AnyTalker marks the face regions in the
    later frames: video frame 0 is all ones and frames 1..F-1 are M, the sum of the expanded masks
    resized to the latent size (overlapping faces add up past 1, as in the release). Frame 0 is
    repeated 4 times and the F + 3 frames are folded as [T, 4, h, w] -> [4, T, h, w], so channel c of
    latent frame j holds video frame 4j + c - 3 (frame 0 for j = 0).
    `known_frames` > 1 marks more leading frames as given (all ones): the motion frames carried
    into a long video's later windows.
    """
    if (num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 4k + 1 (the VAE's temporal stride), got {num_frames}")
    if not expanded_masks:
        raise ValueError("need at least one face mask")
    if not 1 <= known_frames <= num_frames:
        raise ValueError(f"known_frames must be in 1..{num_frames}, got {known_frames}")
    combined = _resize(torch.stack(list(expanded_masks)).sum(0), latent_h, latent_w)
    frames = torch.cat([torch.ones(3 + known_frames, latent_h, latent_w),
                        combined.expand(num_frames - known_frames, -1, -1)])
    return frames.view(-1, 4, latent_h, latent_w).transpose(0, 1).contiguous()


def build_face_masks(boxes: Sequence[BoxLike], image_hw: tuple[int, int], num_frames: int,
                     latent_hw: tuple[int, int], patch_hw: tuple[int, int] = (2, 2)
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """All masks of one sample from its (square) face boxes, in identity order.

    Returns (token_masks [N, latent_h / patch_h, latent_w / patch_w], y_mask [4, T, latent_h, latent_w]).
    The token masks are the same for every latent frame; the transformer accepts them as
    [B, N, grid_h, grid_w] (the release repeats them over T: `face_mask.{i}` of the golden files).
    """
    height, width = image_hw
    latent_h, latent_w = latent_hw
    if latent_h % patch_hw[0] or latent_w % patch_hw[1]:
        raise ValueError(f"latent size {latent_hw} is not a multiple of the patch size {patch_hw}")
    expanded = [expand_mask(box_mask(box, height, width)) for box in boxes]
    grid_h, grid_w = latent_h // patch_hw[0], latent_w // patch_hw[1]
    tokens = torch.stack([token_mask(mask, grid_h, grid_w) for mask in expanded])
    return tokens, mask_channels(expanded, num_frames, latent_h, latent_w)


def _resize(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if mask.ndim != 2:
        raise ValueError(f"expected a [H, W] mask, got shape {list(mask.shape)}")
    return F.interpolate(mask.float()[None, None], size=(height, width), mode="bilinear",
                         align_corners=False, antialias=False)[0, 0]
