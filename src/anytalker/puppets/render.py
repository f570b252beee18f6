"""Drawing puppets with OpenCV: polygons at SUPERSAMPLE x the size, then an area-average downscale.

Area averaging of an N x supersampled drawing is exact box filtering: a frame pixel's colour is the
mean over its N x N sub-pixels, i.e. edge pixels hold the true coverage-weighted blend, which is
what lets measure.py read sub-pixel mouth heights and landmark positions (see appearance.py).

Every shape is a float polygon drawn with `cv2.fillPoly(..., shift=4)` (1/16 sub-pixel precision
at the supersampled size), so the analytic geometry in appearance.geometry is what is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import cv2
import numpy as np

from .appearance import (
    WHITE,
    Appearance,
    Background,
    Geometry,
    Pose,
    geometry,
    head_outline,
    tile_center,
)

SUPERSAMPLE = 4
_SHIFT = 4  # fixed-point bits for cv2 coordinates
# cv2's antialiased fill also paints the pixels the outline passes through: a filled shape comes
# out this much larger on every side (0.16-0.19 px measured on ellipses of 0.3-3 px radius).
# Measured parts (eyes, pupils, mouth, brows) are drawn this much smaller, so their pixels match
# their geometry (and the ground truth) to a few hundredths of a pixel.
INFLATION = 0.17


def _fixed(points: np.ndarray) -> np.ndarray:
    """Frame coordinates (pixel centres at integers) -> supersampled fixed-point int32 [n, 2]."""
    ss = (np.asarray(points, dtype=np.float64) + 0.5) * SUPERSAMPLE - 0.5
    return np.round(ss * (1 << _SHIFT)).astype(np.int32).reshape(-1, 2)


def _poly(img: np.ndarray, points, color) -> None:
    cv2.fillPoly(img, [_fixed(points)], tuple(int(c) for c in color), cv2.LINE_AA, _SHIFT)


def _line(img: np.ndarray, points, color, width: float, closed: bool = False) -> None:
    thickness = max(1, round(width * SUPERSAMPLE))
    cv2.polylines(img, [_fixed(points)], closed, tuple(int(c) for c in color), thickness, cv2.LINE_AA, _SHIFT)


@cache
def _unit_arc(n: int, start: float, end: float) -> np.ndarray:
    t = np.linspace(start, end, n, endpoint=abs(end - start) < 2 * np.pi - 1e-9)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _ellipse(cx, cy, rx, ry, n: int = 40, start: float = 0.0, end: float = 2 * np.pi) -> np.ndarray:
    return _unit_arc(n, start, end) * (rx, ry) + (cx, cy)


def _region_above(outline: np.ndarray, cut, grow: float = 1.0) -> np.ndarray:
    """The part of a closed outline (grown about its centre) above the curve y = cut(x)."""
    centre = outline.mean(axis=0)
    pts = centre + (outline - centre) * grow
    d = pts[:, 1] - cut(pts[:, 0])  # < 0: above the cut
    above = d < 0
    if above.all():
        return pts
    if not above.any():
        return np.zeros((0, 2))
    # Rotate so the arc above the cut is contiguous and first, then add the two crossing points.
    start = int(np.flatnonzero(above & ~np.roll(above, 1))[0])
    pts, d, above = np.roll(pts, -start, 0), np.roll(d, -start), np.roll(above, -start)
    n = int(np.argmin(above))  # points above the cut: pts[:n]

    def crossing(i, j):
        f = d[i] / (d[i] - d[j])
        return pts[i] + f * (pts[j] - pts[i])

    return np.concatenate([[crossing(len(pts) - 1, 0)], pts[:n], [crossing(n - 1, n)]])


def draw_background(background: Background, width: int, height: int) -> np.ndarray:
    """Supersampled static background [height*S, width*S, 3] for the whole scene."""
    S = SUPERSAMPLE
    img = np.empty((height * S, width * S, 3), np.uint8)
    img[:] = background.wall
    wall, second = np.array(background.wall, float), np.array(background.second, float)
    unit = height * S
    if background.pattern == "gradient":
        ramp = np.linspace(0, 1, height * S)[:, None, None]
        img[:] = np.round(wall * (1 - ramp) + second * ramp).astype(np.uint8)
    elif background.pattern == "stripes":
        period = unit // 4
        cols = (np.arange(width * S) // (period // 2)) % 2 == 1
        img[:, cols] = background.second
    elif background.pattern == "dots":
        step = unit // 5
        for y in range(step // 2, height * S, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, width * S, step):
                cv2.circle(img, (x, y), step // 6, tuple(int(c) for c in background.second), -1, cv2.LINE_AA)
    elif background.pattern == "checks":
        step = unit // 4
        yy, xx = np.mgrid[0:height * S, 0:width * S]
        img[((yy // step + xx // step) % 2) == 1] = background.second
    elif background.pattern == "panels":
        step = unit // 2
        for x in range(step // 2, width * S, step):
            cv2.rectangle(img, (x - step // 3, unit // 10), (x + step // 3, unit * 7 // 10),
                          tuple(int(c) for c in background.second), max(2, S // 2), cv2.LINE_AA)
    img[int(0.9 * unit):] = background.floor
    return img


def draw_body(img: np.ndarray, app: Appearance, tile: int, index: int) -> None:
    """Shoulders (static): drawn into the background layer once per clip."""
    cx = tile_center(index, tile, app)
    _poly(img, _ellipse(cx, 1.14 * tile, 0.42 * tile * app.scale, 0.3 * tile, 48), app.shirt)


def draw_puppet(img: np.ndarray, app: Appearance, tile: int, index: int, pose: Pose) -> Geometry:
    """Draws one puppet (everything but the shoulders) into a supersampled canvas; returns its geometry."""
    g = geometry(app, tile, index, pose)
    H, W, top = g.H, g.W, g.top
    ocx = g.outline_cx
    neck_top, neck_bottom = top + 0.7 * H, 1.0 * tile
    _poly(img, [[ocx - 0.17 * W, neck_top], [ocx + 0.17 * W, neck_top], [ocx + 0.19 * W, neck_bottom],
                [ocx - 0.19 * W, neck_bottom]], app.skin)
    _draw_neckwear(img, app, g, tile)
    _draw_back_hair(img, app, g)
    ear_y = top + app.eye_y * H + 0.04 * H
    for side in (-1, 1):
        _poly(img, _ellipse(ocx + side * 0.47 * W, ear_y, 0.09 * W, 0.11 * H, 24), app.skin)
        if app.earrings:
            _poly(img, _ellipse(ocx + side * 0.5 * W, ear_y + 0.14 * H, 0.035 * W, 0.035 * W, 12), app.earrings)
    outline = head_outline(app, ocx, top, H, W)
    _poly(img, outline, app.skin)

    fx = g.feature_cx
    if app.blush:
        for side in (-1, 1):
            _poly(img, _ellipse(fx + side * 0.27 * W, top + 0.66 * H, 0.08 * W, 0.045 * H, 20), app.blush)
    ny = top + 0.6 * H
    if app.nose_style == "button":
        _poly(img, _ellipse(fx, ny, 0.065 * W, 0.045 * H, 20), app.nose)
    elif app.nose_style == "triangle":
        _poly(img, [[fx, ny - 0.08 * H], [fx + 0.06 * W, ny + 0.035 * H], [fx - 0.06 * W, ny + 0.035 * H]], app.nose)
    else:
        _poly(img, _ellipse(fx, ny - 0.03 * H, 0.04 * W, 0.085 * H, 20), app.nose)

    d = INFLATION
    mx, my, mw, mh = g.mouth
    _poly(img, _ellipse(mx, my, mw - d, max(mh - d, 0.01), 48), app.cavity)
    for (ex, ey, ea, eb), (px, py, pr, pry) in zip(g.eyes, g.pupils):
        _poly(img, _ellipse(ex, ey, ea - d, max(eb - d, 0.01), 40), WHITE)
        _poly(img, _ellipse(px, py, pr - d, max(pry - d, 0.01), 24), app.pupil)
        if app.glint and pry > 0.6 * pr:
            _poly(img, _ellipse(px - 0.35 * pr, py - 0.35 * pry, 0.3 * pr, 0.3 * pr, 12), WHITE)
    if app.glasses:  # before the brows: a frame crossing a brow must not hide part of it
        _draw_glasses(img, app, g)
    half_t = g.brow_thickness / 2 - d
    for line in g.brow_lines:
        # A band of constant *vertical* thickness with vertical ends: every column holds the same
        # amount of brow, so the measurement's column centroids land on the centreline.
        xs = line[:, 0] + d * -np.linspace(-1, 1, len(line))  # ends pulled in by d
        upper = np.stack([xs, line[:, 1] - half_t], 1)
        lower = np.stack([xs, line[:, 1] + half_t], 1)[::-1]
        _poly(img, np.concatenate([upper, lower]), app.brow)
    _draw_front_hair(img, app, g, outline)
    if app.hat:
        _draw_hat(img, app, g)
    return g


def _draw_neckwear(img, app: Appearance, g: Geometry, tile: int) -> None:
    cx, W = g.outline_cx, g.W
    base = g.top + g.H + 0.06 * tile
    if app.neckwear == "collar":
        for side in (-1, 1):
            _poly(img, [[cx + side * 0.05 * W, base], [cx + side * 0.3 * W, base - 0.03 * tile],
                        [cx + side * 0.25 * W, base + 0.07 * tile]], WHITE if app.shirt != WHITE else app.accent)
    elif app.neckwear == "bow tie":
        for side in (-1, 1):
            _poly(img, [[cx, base + 0.02 * tile], [cx + side * 0.2 * W, base - 0.02 * tile],
                        [cx + side * 0.2 * W, base + 0.06 * tile]], app.accent)
    elif app.neckwear == "necklace":
        _line(img, _ellipse(cx, base - 0.06 * tile, 0.2 * W, 0.06 * tile, 16, 0.2, np.pi - 0.2), app.accent, 0.7)


def _draw_back_hair(img, app: Appearance, g: Geometry) -> None:
    H, W, top, cx = g.H, g.W, g.top, g.outline_cx
    style = app.hair_style
    if style in ("bob", "long"):
        bottom = top + (0.72 if style == "bob" else 1.1) * H
        points = np.concatenate([_ellipse(cx, top + 0.42 * H, 0.6 * W, 0.47 * H, 32, np.pi, 2 * np.pi),
                                 [[cx + 0.6 * W, bottom], [cx - 0.6 * W, bottom]]])
        _poly(img, points, app.hair)
    elif style == "bun":
        _poly(img, _ellipse(cx, top - 0.06 * H, 0.2 * W, 0.14 * H, 24), app.hair)
    elif style == "curly":
        for angle in np.linspace(np.pi * 1.05, np.pi * 1.95, 7):
            _poly(img, _ellipse(cx + 0.5 * W * np.cos(angle), top + 0.5 * H + 0.5 * H * np.sin(angle),
                                0.14 * W, 0.11 * H, 16), app.hair)


def _draw_front_hair(img, app: Appearance, g: Geometry, outline: np.ndarray) -> None:
    """Hair over the head: always above the hairline (top + hairline * H), clear of the brows."""
    if app.hair_style == "bald":
        return
    H, W, top, cx = g.H, g.W, g.top, g.outline_cx
    line = top + app.hairline * H
    if app.hair_style == "side part":
        # Higher on one side: a diagonal fringe (never below the hairline).
        def cut(x):
            return line - 0.09 * H * np.clip((x - (cx - W / 2)) / W, 0, 1)
    elif app.hair_style in ("curly", "spiky"):
        def cut(x):
            return line - 0.03 * H * (1 + np.cos((x - cx) / (0.12 * W) * np.pi)) / 2
    elif app.hair_style == "mohawk":
        def cut(x):
            return np.full_like(x, top + 0.05 * H)
    else:
        def cut(x):
            return np.full_like(x, line)
    cap = _region_above(outline, cut, 1.0 if app.hair_style == "mohawk" else 1.05)
    if len(cap) >= 3:
        _poly(img, cap, app.hair)
    if app.hair_style == "spiky":
        for k in np.linspace(-0.3, 0.3, 5):
            base_y = top + 0.04 * H
            _poly(img, [[cx + (k - 0.09) * W, base_y], [cx + (k + 0.09) * W, base_y],
                        [cx + k * 1.2 * W, top - 0.13 * H]], app.hair)
    elif app.hair_style == "mohawk":
        _poly(img, _ellipse(cx, top + 0.02 * H, 0.09 * W, 0.16 * H, 24, np.pi, 2 * np.pi), app.hair)


def _draw_glasses(img, app: Appearance, g: Geometry) -> None:
    width = max(0.6, 0.022 * g.H)
    eb0 = app.eye_b * g.H
    inner = []
    for ex, ey, ea, _ in g.eyes:
        rx, ry = ea + 0.07 * g.W, eb0 + 0.06 * g.H
        if app.glasses == "round":
            _line(img, _ellipse(ex, ey, rx, ry, 32), app.glasses_color, width, closed=True)
        else:
            _line(img, [[ex - rx, ey - ry], [ex + rx, ey - ry], [ex + rx, ey + ry], [ex - rx, ey + ry]],
                  app.glasses_color, width, closed=True)
        inner.append((ex, ey, rx, ry))
    (lx, ly, lrx, _), (rx_, ry_, rrx, _) = inner
    _line(img, [[lx + lrx, ly], [rx_ - rrx, ry_]], app.glasses_color, width)


def _draw_hat(img, app: Appearance, g: Geometry) -> None:
    """Hats sit above the hairline (their lowest point is top + 0.13 H)."""
    H, W, top, cx = g.H, g.W, g.top, g.outline_cx
    c = app.hat_color
    if app.hat == "cap":
        _poly(img, _ellipse(cx, top + 0.13 * H, 0.52 * W, 0.2 * H, 32, np.pi, 2 * np.pi), c)
        _poly(img, [[cx - 0.1 * W, top + 0.13 * H], [cx + 0.75 * W, top + 0.13 * H],
                    [cx + 0.7 * W, top + 0.07 * H], [cx - 0.1 * W, top + 0.06 * H]], c)
    elif app.hat == "beanie":
        _poly(img, _ellipse(cx, top + 0.12 * H, 0.53 * W, 0.26 * H, 32, np.pi, 2 * np.pi), c)
        _poly(img, _ellipse(cx, top - 0.16 * H, 0.09 * W, 0.07 * H, 16), app.accent)
    elif app.hat == "top hat":
        _poly(img, [[cx - 0.32 * W, top - 0.3 * H], [cx + 0.32 * W, top - 0.3 * H], [cx + 0.32 * W, top + 0.1 * H],
                    [cx - 0.32 * W, top + 0.1 * H]], c)
        _poly(img, _ellipse(cx, top + 0.09 * H, 0.6 * W, 0.04 * H, 24), c)
    elif app.hat == "bow":
        bx, by = cx + 0.3 * W, top + 0.02 * H
        for side in (-1, 1):
            _poly(img, [[bx, by], [bx + side * 0.16 * W, by - 0.08 * H], [bx + side * 0.16 * W, by + 0.08 * H]], c)
        _poly(img, _ellipse(bx, by, 0.04 * W, 0.04 * W, 12), c)


def downsample(canvas: np.ndarray) -> np.ndarray:
    h, w = canvas.shape[0] // SUPERSAMPLE, canvas.shape[1] // SUPERSAMPLE
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)


def render_frame(static: np.ndarray, appearances: Sequence[Appearance], tile: int, poses: Sequence[Pose]):
    """One frame: uint8 [T, N*T, 3] and the geometry of each puppet."""
    canvas = static.copy()
    geometries = [draw_puppet(canvas, app, tile, i, pose) for i, (app, pose) in enumerate(zip(appearances, poses))]
    return downsample(canvas), geometries


def static_layer(background: Background, appearances: Sequence[Appearance], tile: int) -> np.ndarray:
    img = draw_background(background, tile * len(appearances), tile)
    for i, app in enumerate(appearances):
        draw_body(img, app, tile, i)
    return img
