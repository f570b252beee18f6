"""Reading mouth opening and the 22 eye/brow landmarks back from puppet video pixels.

Given a clip's frames and each puppet's whole-clip face box, using luma only (see appearance.py
for why), per frame:

1. skin luma s = median luma of the box's central region (skin covers most of it);
2. eyes: white coverage Wc = (Y - s - NOISE) / (WHITE_LUMA - s - NOISE), clipped to 0..1, in the
   box's eye band, left and right of the box centre. Dark pupils inside the whites are filled per
   row (a pixel with strong white on both sides in its row is eye). The filled blob's moments give
   the eye ellipse: centre = centroid, half-width a = 2 std_x (Sheppard-corrected for the pixel
   grid; one median per clip, see measure_frames), half-height b = area / (pi a), which stays
   right down to a closing blink;
3. brows: dark coverage Dc = (s - NOISE - Y) / (s - NOISE - DARK_LUMA), clipped, above each eye
   (stopping above the pupil). The brow is a band of constant vertical thickness, so its column
   masses are uniform: length = sqrt(12 var_x), and the five landmarks sit at evenly spaced x on
   the column centroids;
4. mouth: dark coverage in an ellipse below the eyes; width = 4 std_x, height = area / (pi w / 4).

Coverages come from linear unmixing (an edge pixel's luma is a coverage-weighted mean), so every
quantity is sub-pixel and nearly linear in the true one. Eye/brow landmarks follow dlib-68's
layout (indices 17-26, 36-47) as the Interactivity metric uses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .appearance import DARK_LUMA, LUMA_WEIGHTS, WHITE_LUMA

# Search regions in fractions of the face box (height Hb, width Wb); see appearance.py's layout.
EYE_BAND = (0.3, 0.72)        # rows of the box searched for eye whites ...
EYE_REGION = 0.8              # ... inside the box's inscribed ellipse scaled by this
BROW_REACH = 0.265            # Hb above the eye centre
BROW_SPAN = 1.7               # eye half-widths either side of the eye centre
BROW_BAND = 0.055             # Hb: rows kept either side of the brow's height (thickness + arch + tilt)
MOUTH_CENTRE = 0.27           # Hb below the eyes
MOUTH_RADII = (0.26, 0.16)    # (Wb, Hb)
# Video coding leaves a few luma steps of ringing around sharp features (H.264 at crf 18: up to
# ~10 next to an eye). Deviations from the skin below this are not counted: it costs a little
# coverage at every edge, a near-constant offset. Measured on 18 clips through crf-18 mp4s: with
# 0 the worst puppet's landmark correlation was 0.61, with 4 / 6 / 8 / 10 it was 0.95 / 0.95 /
# 0.94 / 0.93 and the mean error 0.13 / 0.14 / 0.14 / 0.16 px (rendered frames: >= 0.98 with 6).
NOISE = 6.0
MIN_EYE_AREA = 0.3            # px^2: less is a closed (or missing) eye


@dataclass(frozen=True)
class Measurement:
    """Per puppet and frame, in frame pixels (landmarks: pixel centres at integer coordinates)."""

    mouth_height: np.ndarray   # [N, F]
    mouth_width: np.ndarray    # [N, F]
    landmarks: np.ndarray      # [N, F, 22, 2]
    eyes: np.ndarray           # [N, F, 2, 4] cx, cy, a, b of the left and right eye
    skin_luma: np.ndarray      # [N, F]


def frame_luma(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> float32 BT.709 luma [...]."""
    return (np.asarray(frames, np.float32) @ LUMA_WEIGHTS.astype(np.float32)).astype(np.float32)


def _white(Y: np.ndarray, skin: float) -> np.ndarray:
    """Eye-white coverage of each pixel; luma within NOISE of the skin counts as none."""
    return np.clip((Y - skin - NOISE) / (WHITE_LUMA - skin - NOISE), 0, 1)


def _dark(Y: np.ndarray, skin: float) -> np.ndarray:
    """Brow / pupil / mouth coverage of each pixel; luma within NOISE of the skin counts as none."""
    return np.clip((skin - NOISE - Y) / (skin - NOISE - DARK_LUMA), 0, 1)


def _moments(mass: np.ndarray, ys: np.ndarray, xs: np.ndarray):
    total = float(mass.sum())
    if total <= 0:
        return total, np.nan, np.nan, np.nan
    cx = float((mass.sum(axis=0) * xs).sum() / total)
    cy = float((mass.sum(axis=1) * ys).sum() / total)
    var_x = float((mass.sum(axis=0) * (xs - cx) ** 2).sum() / total) - 1.0 / 12  # Sheppard's correction
    return total, cx, cy, max(var_x, 0.0)


def _eye_coverage(white: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Eye coverage: the whites plus the pupil between them.

    A pixel with strong white (> 0.5) somewhere to its left *and* to its right in its row lies
    inside the (convex) eye: it counts as much as the row's whitest pixel (the row's vertical
    coverage), whatever mix of pupil and white it shows. In a nearly closed eye no pixel is half
    white: there the pupil's dark coverage inside the white span is added instead.
    """
    strong = white > 0.5
    left = np.zeros_like(strong)
    left[:, 1:] = np.logical_or.accumulate(strong, axis=1)[:, :-1]
    right = np.zeros_like(strong)
    right[:, :-1] = np.logical_or.accumulate(strong[:, ::-1], axis=1)[:, ::-1][:, 1:]
    inside = left & right
    span = np.minimum(np.maximum.accumulate(white, axis=1), np.maximum.accumulate(white[:, ::-1], axis=1)[:, ::-1])
    row_peak = white.max(axis=1, keepdims=True)
    return np.where(inside, np.maximum(white, row_peak), white + dark * (span > 0.02))


def _eye(Y: np.ndarray, skin: float, rows: slice, cols: slice, region: np.ndarray):
    """(area, cx, cy, half-width) of the eye blob in a search region, or None when closed."""
    patch = Y[rows, cols]
    white = _white(patch, skin) * region
    dark = _dark(patch, skin) * region
    area, cx, cy, var_x = _moments(_eye_coverage(white, dark), np.arange(rows.start, rows.stop),
                                   np.arange(cols.start, cols.stop))
    if area < MIN_EYE_AREA:
        return None
    return area, cx, cy, 2 * np.sqrt(var_x)


def _eye_area(Y: np.ndarray, skin: float, cx: float, cy: float, a: float, b: float) -> float:
    """Eye area in a window around a known eye (half-width a, open half-height b)."""
    r0, r1 = max(0, int(np.floor(cy - 0.6 * b - 1))), min(Y.shape[0], int(np.ceil(cy + 0.6 * b + 1)) + 1)
    c0, c1 = max(0, int(np.floor(cx - 1.3 * a))), min(Y.shape[1], int(np.ceil(cx + 1.3 * a)) + 1)
    patch = Y[r0:r1, c0:c1]
    return float(_eye_coverage(_white(patch, skin), _dark(patch, skin)).sum())


def _brow(Y: np.ndarray, skin: float, eye, box_h: float) -> np.ndarray:
    cx, cy, a, b = eye
    r0 = max(0, int(np.ceil(cy - BROW_REACH * box_h)))
    r1 = int(np.floor(cy - 0.6 * b - 0.75)) + 1  # stops above the pupil
    c0, c1 = max(0, int(np.floor(cx - BROW_SPAN * a))), min(Y.shape[1], int(np.ceil(cx + BROW_SPAN * a)) + 1)
    dark = _dark(Y[r0:r1, c0:c1], skin)
    ys, xs = np.arange(r0, r1), np.arange(c0, c1)
    # The window's outer top corner can reach past the head (hair, background). The brow's height
    # is first taken over the central columns, which are always on the face, and the window is
    # narrowed to a band around it.
    central = np.abs(xs - cx) <= 0.8 * a
    profile = dark[:, central].sum(axis=1)
    if profile.sum() <= 0:
        return np.full((5, 2), np.nan)
    level = float((profile * ys).sum() / profile.sum())
    dark = dark * (np.abs(ys - level) <= BROW_BAND * box_h + 0.5)[:, None]
    column = dark.sum(axis=0)
    total, mean_x, _, var_x = _moments(dark, ys, xs)
    if total <= 0:
        return np.full((5, 2), np.nan)
    length = np.sqrt(12 * var_x)
    px = mean_x + (np.arange(5) / 4 - 0.5) * length
    solid = column > 0.25 * column.max()
    centroids = (dark[:, solid] * ys[:, None]).sum(axis=0) / column[solid]
    return np.stack([px, np.interp(px, xs[solid], centroids)], axis=1)


def _mouth(Y: np.ndarray, skin: float, centre_x: float, centre_y: float, box_w: float, box_h: float):
    rx, ry = MOUTH_RADII[0] * box_w, MOUTH_RADII[1] * box_h
    r0, r1 = max(0, int(np.ceil(centre_y - ry))), min(Y.shape[0], int(np.floor(centre_y + ry)) + 1)
    c0, c1 = max(0, int(np.ceil(centre_x - rx))), min(Y.shape[1], int(np.floor(centre_x + rx)) + 1)
    ys, xs = np.arange(r0, r1), np.arange(c0, c1)
    inside = ((xs[None, :] - centre_x) / rx) ** 2 + ((ys[:, None] - centre_y) / ry) ** 2 <= 1
    dark = _dark(Y[r0:r1, c0:c1], skin) * inside
    area, _, _, var_x = _moments(dark, ys, xs)
    if area <= 0:
        return 0.0, 0.0
    width = 4 * np.sqrt(var_x)
    return area / (np.pi * max(width, 1e-6) / 4), width


def _eye_landmarks(cx, cy, a, b) -> np.ndarray:
    s = np.sqrt(3) / 2
    return np.array([[cx - a, cy], [cx - a / 2, cy - b * s], [cx + a / 2, cy - b * s],
                     [cx + a, cy], [cx + a / 2, cy + b * s], [cx - a / 2, cy + b * s]])


def _fill_missing(values: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames where a value is NaN (closed eyes), per trailing index."""
    out = values.copy()
    flat = out.reshape(out.shape[0], -1)
    frames = np.arange(out.shape[0])
    for k in range(flat.shape[1]):
        ok = np.isfinite(flat[:, k])
        if ok.any() and not ok.all():
            flat[:, k] = np.interp(frames, frames[ok], flat[ok, k])
    return out


def measure_frames(frames: np.ndarray, boxes) -> Measurement:
    """frames uint8 [F, H, W, 3] RGB; boxes: one (x0, y0, x1, y1) per puppet (FaceBox or sequence).

    The boxes are whole-clip face boxes (as in meta.json): the head must stay inside its box.
    An eye's width is the same in every frame (puppets blink by closing vertically), so it is
    taken once per clip (median over frames) and each frame's eye height is its area over that
    width: a blinking eye, whose thin sliver gives a poor width of its own, keeps a true height.
    """
    luma = frame_luma(frames)
    boxes = [tuple(float(v) for v in (b.as_tuple() if hasattr(b, "as_tuple") else b)) for b in boxes]
    n, f = len(boxes), luma.shape[0]
    mouth_h, mouth_w, skin_out = (np.zeros((n, f)) for _ in range(3))
    eyes = np.full((n, f, 2, 4), np.nan)
    landmarks = np.full((n, f, 22, 2), np.nan)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        bw, bh = x1 - x0, y1 - y0
        skin_rows = slice(int(y0 + 0.2 * bh), int(y0 + 0.95 * bh))
        skin_cols = slice(int(x0 + 0.2 * bw), int(np.ceil(x1 - 0.2 * bw)))
        rows = slice(max(0, round(y0 + EYE_BAND[0] * bh)), min(luma.shape[1], round(y0 + EYE_BAND[1] * bh)))
        mid = round((x0 + x1) / 2)
        halves = (slice(max(0, int(x0)), mid), slice(mid, min(luma.shape[2], int(np.ceil(x1)))))
        # Only inside an ellipse inscribed in the box: its corners show background or hair as the
        # head bobs and turns, and a blinking eye is too faint to outweigh a bright corner.
        ys = (np.arange(rows.start, rows.stop) + 0.5 - (y0 + y1) / 2) / (EYE_REGION * bh / 2)
        regions = [(ys[:, None] ** 2 + ((np.arange(c.start, c.stop) + 0.5 - (x0 + x1) / 2)
                                        / (EYE_REGION * bw / 2))[None, :] ** 2 <= 1) for c in halves]
        blobs = np.full((f, 2, 4), np.nan)  # area, cx, cy, half-width
        for t in range(f):
            skin_out[i, t] = float(np.median(luma[t][skin_rows, skin_cols]))
            for side, cols in enumerate(halves):
                blob = _eye(luma[t], skin_out[i, t], rows, cols, regions[side])
                if blob is not None:
                    blobs[t, side] = blob
        if np.isnan(blobs[..., 0]).all(axis=0).any():
            continue  # an eye never seen: nothing to anchor the face on
        # Width and position from the frames where the eye is well open (area above half its clip
        # maximum). A blinking eye is a faint sliver that coding noise elsewhere in the search
        # region can outweigh: its position comes from the open frames around it (the blink is
        # ~0.2 s, the head moves smoothly), and its area is taken in a small window there.
        area = np.nan_to_num(blobs[..., 0])
        open_ = area > 0.5 * area.max(axis=0, keepdims=True)
        half_width = np.array([np.median(blobs[open_[:, s], s, 3]) for s in range(2)])
        open_height = np.array([np.median(area[open_[:, s], s]) for s in range(2)]) / (np.pi * half_width)
        centres = blobs[..., 1:3].copy()
        centres[~open_] = np.nan
        centres = _fill_missing(centres)
        for t, side in zip(*np.nonzero(~open_)):
            area[t, side] = _eye_area(luma[t], skin_out[i, t], *centres[t, side], half_width[side],
                                      open_height[side])
        eyes[i, ..., :2] = centres
        eyes[i, ..., 2] = half_width
        eyes[i, ..., 3] = area / (np.pi * half_width)
        for t in range(f):
            Y, skin = luma[t], skin_out[i, t]
            left, right = eyes[i, t]
            landmarks[i, t, 0:5] = _brow(Y, skin, left, bh)
            landmarks[i, t, 5:10] = _brow(Y, skin, right, bh)
            landmarks[i, t, 10:16] = _eye_landmarks(*left)
            landmarks[i, t, 16:22] = _eye_landmarks(*right)
            centre_x = (left[0] + right[0]) / 2
            centre_y = (left[1] + right[1]) / 2 + MOUTH_CENTRE * bh
            mouth_h[i, t], mouth_w[i, t] = _mouth(Y, skin, centre_x, centre_y, bw, bh)
    return Measurement(mouth_height=mouth_h, mouth_width=mouth_w, landmarks=landmarks, eyes=eyes, skin_luma=skin_out)


def measure_clip(folder: str | Path) -> Measurement:
    """Measures a clip folder's video.mp4 (or any video with the same boxes) with meta.json's boxes."""
    from anytalker.video.io import read_video

    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    video = read_video(folder / meta["files"]["video"])
    return measure_frames(video.frames, meta["face_boxes"])


def correlation(a, b) -> float:
    """Pearson correlation of the pairs where both are finite; NaN when either is constant."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = np.sqrt((a**2).sum() * (b**2).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def agreement(measured: Measurement, ground_truth: dict) -> dict:
    """How well pixels give back the truth: correlations (pooled over puppets) and errors in pixels.

    landmarks_r: correlation of the landmark *motion*: each point's per-puppet mean over the clip is
    removed from both (a constant offset of a point is appearance, not motion), then all x and y
    are pooled. landmarks_mae_px: mean |measured - true| distance per point, offsets included.
    """
    gt_lm = np.asarray(ground_truth["landmarks"], np.float64)
    lm = measured.landmarks
    motion_gt = gt_lm - gt_lm.mean(axis=1, keepdims=True)
    motion_me = lm - np.nanmean(lm, axis=1, keepdims=True)
    gt_h = np.asarray(ground_truth["mouth_height"], np.float64)
    upper, lower = [11, 12, 17, 18], [14, 15, 20, 21]  # eye lid points in the 22-point layout
    eye_h_gt = gt_lm[:, :, lower, 1].mean(axis=2) - gt_lm[:, :, upper, 1].mean(axis=2)
    eye_h_me = lm[:, :, lower, 1].mean(axis=2) - lm[:, :, upper, 1].mean(axis=2)
    return {
        "mouth_r": correlation(measured.mouth_height, gt_h),
        "mouth_r_per_puppet": [correlation(m, g) for m, g in zip(measured.mouth_height, gt_h)],
        "mouth_mae_px": float(np.nanmean(np.abs(measured.mouth_height - gt_h))),
        "landmarks_r": correlation(motion_me, motion_gt),
        "landmarks_r_per_puppet": [correlation(m, g) for m, g in zip(motion_me, motion_gt)],
        "landmarks_mae_px": float(np.nanmean(np.linalg.norm(lm - gt_lm, axis=-1))),
        "eye_height_r": correlation(eye_h_me, eye_h_gt),
        "brow_y_r": correlation(motion_me[:, :, :10, 1], motion_gt[:, :, :10, 1]),
        "missing": float(np.isnan(lm).any(axis=(2, 3)).mean()),
    }
