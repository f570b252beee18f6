"""What a puppet looks like (sampled from a seed) and where its parts are in a given pose.

The colour rules are what makes `measure.py` simple and robust; every drawn colour obeys them:

- luma (BT.709, the luma the H.264 file stores at full resolution; chroma is stored at half
  resolution and smears across these tiny features, so the measurement reads luma only):
  * eye whites are the only near-white inside the face: luma WHITE_LUMA (248);
  * brows, pupils and the mouth cavity are the only dark parts inside the face: luma DARK_LUMA (20);
  * skin has luma in SKIN_LUMA (100..182), so both keys stand 60+ luma steps away from it;
  * everything else drawn on the face (nose, blush, glasses frames) is
    *isoluminant* with the skin: it shows by hue only and is invisible to a luma measurement.
- geometry: hair, hats and ears stay out of the regions where features are searched (hairline
  above the brows' highest reach, side hair drawn behind the head).

Because blends of two colours are linear in RGB and luma is linear in RGB, an antialiased edge
pixel between skin (luma s) and a key (luma k) has luma s + c (k - s) for coverage c: the
measurement recovers sub-pixel coverage exactly ("linear unmixing").

Geometry is in pixels of the rendered frame with pixel centres at integer coordinates (OpenCV's
and dlib's convention): column j covers x in [j - 0.5, j + 0.5).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LUMA_WEIGHTS = np.array([0.2126, 0.7152, 0.0722])  # BT.709, as write_video encodes
WHITE = (248, 248, 248)
WHITE_LUMA = float(LUMA_WEIGHTS @ WHITE)
DARK_LUMA = 20.0
SKIN_LUMA = (100.0, 182.0)

# Layout constants, in head heights (H) / head widths (W) / tile sizes (T). measure.py's search
# regions are sized for these and for the ranges in sample_appearance: change one, rerun the
# measurement tests.
HEAD_TOP = 0.15         # T: head top in the tile (neutral pose, scale 1)
HEAD_HEIGHT = 0.62      # T
HAIRLINE_MAX = 0.14     # H below the head top: the lowest a fringe may reach
YAW_SHIFT = 0.05        # W: feature shift at full yaw (2.5D head turn)
YAW_OUTLINE = 0.012     # W: the outline's shift at full yaw (it turns less than the features)
GAZE_SHIFT = 0.22       # eye half-widths: pupil shift at full gaze
BROW_RAISE = 0.05       # H: brow lift at brow_raise = 1
MOUTH_CLOSED = 0.015    # H: cavity height of a closed mouth (a dark line)
PUPIL_MAX_HEIGHT = 0.45  # eye half-heights: with pupil_r <= 0.4 a and GAZE_SHIFT, a row through a pupil
                         # keeps >= 0.27 a of solid white at both ends (measure.py fills between them)


def luma(rgb) -> float:
    return float(LUMA_WEIGHTS @ np.asarray(rgb, dtype=np.float64))


def with_luma(rgb, target: float) -> tuple[int, int, int]:
    """The colour moved to luma `target` by scaling toward black or blending toward white (hue kept)."""
    c = np.asarray(rgb, dtype=np.float64)
    current = luma(c)
    if current > target:
        c = c * (target / current)  # luma is linear in RGB: exact
    elif current < target:
        c = c + (target - current) / (255.0 - current) * (255.0 - c)
    out = np.clip(np.round(c), 0, 255).astype(int)
    # Rounding moves luma by up to 0.5; nudge green (the heaviest weight) to get back within 0.4.
    error = target - luma(out)
    if abs(error) > 0.4:
        out[1] = int(np.clip(out[1] + round(error / LUMA_WEIGHTS[1]), 0, 255))
    return int(out[0]), int(out[1]), int(out[2])


# Named colours: names feed the captions. Skins and hues get a luma fixed by the rules above.
SKINS = {"pale": (238, 208, 184), "fair": (232, 190, 160), "peach": (245, 180, 140), "tan": (205, 150, 105),
         "olive": (180, 155, 100), "brown": (150, 100, 70), "dark brown": (118, 76, 52), "mint": (150, 215, 175),
         "sky-blue": (150, 195, 240), "lilac": (200, 170, 235), "coral": (250, 145, 125), "lemon": (235, 215, 110)}
HAIRS = {"black": (28, 26, 30), "dark brown": (70, 45, 30), "brown": (125, 82, 45), "auburn": (150, 60, 30),
         "ginger": (215, 110, 40), "blond": (232, 200, 120), "grey": (160, 160, 165), "blue": (60, 90, 200),
         "pink": (235, 110, 170), "green": (70, 160, 90), "purple": (120, 60, 160)}
DARKS = {"black": (20, 20, 22), "brown": (60, 14, 2), "auburn": (75, 6, 10), "navy": (10, 16, 90),
         "green": (5, 25, 15)}  # brows and pupils; all set to DARK_LUMA
CAVITIES = {"maroon": (80, 6, 16), "plum": (60, 8, 60), "black": (20, 20, 20)}
ACCENTS = {"red": (220, 40, 40), "blue": (40, 90, 230), "green": (40, 170, 70), "gold": (220, 170, 30),
           "purple": (150, 60, 200), "teal": (20, 160, 160), "orange": (245, 130, 20)}
CLOTHES = {"red": (200, 50, 50), "blue": (50, 90, 190), "green": (60, 150, 80), "yellow": (235, 200, 60),
           "purple": (130, 70, 170), "grey": (120, 120, 125), "black": (35, 35, 40), "white": (235, 235, 235),
           "orange": (235, 130, 40), "teal": (30, 140, 140), "pink": (235, 140, 180), "navy": (30, 40, 100)}
WALLS = {"cream": (235, 225, 195), "mint": (180, 225, 200), "sky-blue": (170, 205, 235), "peach": (245, 200, 170),
         "lavender": (205, 195, 235), "grey": (165, 165, 170), "sand": (210, 190, 150), "teal": (90, 160, 160),
         "brick": (170, 90, 70), "slate": (100, 115, 135), "olive": (150, 150, 90), "rose": (225, 160, 170)}

HEAD_SHAPES = {"round": (2.0, 0.0), "squircle": (3.2, 0.0), "egg": (2.2, 0.10), "boxy": (4.0, 0.05),
               "pear": (2.4, -0.06)}  # superellipse exponent, taper (+ = wider forehead)
HAIR_STYLES = ("bald", "crop", "spiky", "bob", "bun", "curly", "mohawk", "side part", "long")
HATS = ("cap", "beanie", "top hat", "bow")
NECKWEAR = ("t-shirt", "collar", "bow tie", "necklace")
NOSES = ("button", "triangle", "long")
BACKGROUND_PATTERNS = ("plain", "gradient", "stripes", "dots", "panels", "checks")


@dataclass(frozen=True)
class Appearance:
    """One puppet's look. Lengths: eye/brow/mouth widths in head widths (W), heights in head heights (H)."""

    head_shape: str
    head_exponent: float
    head_taper: float
    head_ratio: float          # W / H
    scale: float               # head size relative to the default
    offset_x: float            # T: placement jitter in the tile
    skin_name: str
    skin: tuple
    hair_style: str
    hair_name: str
    hair: tuple
    hairline: float            # H
    eye_y: float               # H: eye centre below the head top
    eye_spacing: float         # W: eye centre from the face's midline
    eye_a: float               # W: eye half-width
    eye_b: float               # H: eye half-height
    pupil_r: float             # eye half-widths
    pupil_name: str
    pupil: tuple
    glint: bool
    brow_gap: float            # H: between the eye top and the brow's lower edge
    brow_thickness: float      # H
    brow_length: float         # eye half-widths
    brow_arch: float           # H
    brow_tilt: float           # H: inner end lower (+) or higher (-)
    brow_out: float            # eye half-widths: brow centre shifted outward
    brow_name: str
    brow: tuple
    nose_style: str
    nose: tuple
    mouth_y: float             # H: top edge of the mouth
    mouth_w: float             # W
    mouth_h: float             # H: cavity height when fully open
    cavity_name: str
    cavity: tuple
    blush: tuple | None
    glasses: str | None
    glasses_name: str | None
    glasses_color: tuple | None
    hat: str | None
    hat_name: str | None
    hat_color: tuple | None
    earrings: tuple | None
    neckwear: str
    shirt_name: str
    shirt: tuple
    accent: tuple

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Background:
    pattern: str
    wall_name: str
    wall: tuple
    second: tuple   # pattern colour
    floor: tuple

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _pick(rng: np.random.Generator, table: dict):
    name = list(table)[rng.integers(len(table))]
    return name, table[name]


def _jitter(rng, rgb, amount=12):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def sample_appearance(rng: np.random.Generator) -> Appearance:
    shape = list(HEAD_SHAPES)[rng.integers(len(HEAD_SHAPES))]
    exponent, taper = HEAD_SHAPES[shape]
    skin_name, skin = _pick(rng, SKINS)
    skin = _jitter(rng, skin)
    skin = with_luma(skin, float(np.clip(luma(skin) + rng.uniform(-8, 8), *SKIN_LUMA)))
    skin_y = luma(skin)
    hair_style = HAIR_STYLES[rng.integers(len(HAIR_STYLES))]
    hair_name, hair = _pick(rng, HAIRS)
    pupil_name, pupil = _pick(rng, DARKS)
    brow_name, brow = _pick(rng, DARKS)
    cavity_name, cavity = _pick(rng, CAVITIES)
    # The nose is a redder, isoluminant version of the skin: visible, yet absent from luma.
    nose = with_luma(np.asarray(skin) * 0.7 + np.array([255, 90, 90]) * 0.3, skin_y)
    blush = with_luma((255, 120, 150), skin_y) if rng.random() < 0.35 else None
    glasses = ("round", "square")[rng.integers(2)] if rng.random() < 0.3 else None
    glasses_name, glasses_color = _pick(rng, ACCENTS) if glasses else (None, None)
    hat = HATS[rng.integers(len(HATS))] if rng.random() < 0.25 else None
    hat_name, hat_color = _pick(rng, CLOTHES) if hat else (None, None)
    if hat == "bow":
        hat_name, hat_color = _pick(rng, ACCENTS)
    earrings = ACCENTS["gold"] if rng.random() < 0.2 else None
    shirt_name, shirt = _pick(rng, CLOTHES)
    _, accent = _pick(rng, ACCENTS)
    return Appearance(
        head_shape=shape, head_exponent=exponent, head_taper=taper,
        head_ratio=float(rng.uniform(0.78, 0.98)), scale=float(rng.uniform(0.92, 1.04)),
        offset_x=float(rng.uniform(-0.03, 0.03)),
        skin_name=skin_name, skin=skin, hair_style=hair_style, hair_name=hair_name, hair=_jitter(rng, hair, 10),
        hairline=float(rng.uniform(0.09, HAIRLINE_MAX)),
        eye_y=float(rng.uniform(0.465, 0.50)), eye_spacing=float(rng.uniform(0.18, 0.20)),
        eye_a=float(rng.uniform(0.085, 0.105)), eye_b=float(rng.uniform(0.05, 0.068)),
        pupil_r=float(rng.uniform(0.32, 0.40)), pupil_name=pupil_name, pupil=with_luma(pupil, DARK_LUMA),
        glint=bool(rng.random() < 0.5),
        brow_gap=float(rng.uniform(0.035, 0.055)), brow_thickness=float(rng.uniform(0.035, 0.045)),
        brow_length=float(rng.uniform(1.9, 2.4)), brow_arch=float(rng.uniform(0.0, 0.02)),
        brow_tilt=float(rng.uniform(-0.015, 0.015)), brow_out=float(rng.uniform(0.0, 0.15)),
        brow_name=brow_name, brow=with_luma(brow, DARK_LUMA),
        nose_style=NOSES[rng.integers(len(NOSES))], nose=nose,
        mouth_y=float(rng.uniform(0.70, 0.72)), mouth_w=float(rng.uniform(0.28, 0.38)),
        mouth_h=float(rng.uniform(0.12, 0.15)), cavity_name=cavity_name, cavity=with_luma(cavity, DARK_LUMA),
        blush=blush, glasses=glasses, glasses_name=glasses_name,
        glasses_color=with_luma(glasses_color, skin_y) if glasses else None,
        hat=hat, hat_name=hat_name, hat_color=hat_color, earrings=earrings,
        neckwear=NECKWEAR[rng.integers(len(NECKWEAR))], shirt_name=shirt_name, shirt=_jitter(rng, shirt, 10),
        accent=accent,
    )


def sample_background(rng: np.random.Generator) -> Background:
    pattern = BACKGROUND_PATTERNS[rng.integers(len(BACKGROUND_PATTERNS))]
    wall_name, wall = _pick(rng, WALLS)
    wall = _jitter(rng, wall, 10)
    y = luma(wall)
    second = with_luma(wall, y + (-28 if y > 140 else 28))
    floor = with_luma(_pick(rng, WALLS)[1], max(60.0, y - 45))
    return Background(pattern, wall_name, wall, second, floor)


@dataclass(frozen=True)
class Pose:
    """One frame of one puppet. dx, dy in pixels; the rest dimensionless (see behaviour.py)."""

    dx: float = 0.0
    dy: float = 0.0
    yaw: float = 0.0         # -1 (looks to the image's left) .. 1 (right)
    gaze: float = 0.0        # pupils, same sign convention
    eye_open: float = 1.0    # 1 neutral, ~0.08 closed (blink), up to ~1.2 wide
    brow_raise: float = 0.0  # 0 neutral .. 1 raised
    mouth_open: float = 0.0  # 0 closed .. 1 fully open


NEUTRAL = Pose()


@dataclass(frozen=True)
class Geometry:
    """Where everything is for one puppet in one pose (frame pixels, pixel centres at integers)."""

    H: float
    W: float
    cx: float               # head outline centre
    top: float              # head top
    outline_cx: float
    feature_cx: float       # face midline (shifted by yaw)
    eyes: np.ndarray        # [2, 4]: cx, cy, half-width, half-height (left eye in the image first)
    pupils: np.ndarray      # [2, 4]: cx, cy, rx, ry
    brow_lines: np.ndarray  # [2, 17, 2]: dense brow centrelines, left to right; every 4th is a landmark
    brow_thickness: float
    mouth: np.ndarray       # [4]: cx, cy, half-width, half-height
    box: np.ndarray         # [4]: head outline extents x0, y0, x1, y1

    def landmarks(self) -> np.ndarray:
        """[22, 2] in the dlib-68 order of indices 17-26 (brows) then 36-47 (eyes)."""
        points = [self.brow_lines[0, ::4], self.brow_lines[1, ::4]]
        s = np.sqrt(3) / 2
        for cx, cy, a, b in self.eyes:  # corner, upper x2, corner, lower x2: dlib's clockwise order
            points.append(np.array([[cx - a, cy], [cx - a / 2, cy - b * s], [cx + a / 2, cy - b * s],
                                    [cx + a, cy], [cx + a / 2, cy + b * s], [cx - a / 2, cy + b * s]]))
        return np.concatenate(points).astype(np.float64)


def tile_center(index: int, tile: int, appearance: Appearance) -> float:
    return index * tile + tile / 2 - 0.5 + appearance.offset_x * tile


def head_size(appearance: Appearance, tile: int) -> tuple[float, float]:
    H = HEAD_HEIGHT * tile * appearance.scale
    return H, H * appearance.head_ratio


def brow_curve(app: Appearance, H: float, side: int, u: np.ndarray) -> np.ndarray:
    """Brow centreline height offset at u in [-1, 1] (left to right in the image), in pixels."""
    inner = -side * u  # +1 at the inner end (toward the midline)
    return -app.brow_arch * H * (1 - u**2) + app.brow_tilt * H * inner / 2


def geometry(app: Appearance, tile: int, index: int, pose: Pose = NEUTRAL) -> Geometry:
    H, W = head_size(app, tile)
    cx = tile_center(index, tile, app) + pose.dx
    top = HEAD_TOP * tile + (1 - app.scale) * 0.5 * HEAD_HEIGHT * tile + pose.dy
    fx = cx + pose.yaw * YAW_SHIFT * W
    eyes, pupils, brows = [], [], []
    ea, eb0 = app.eye_a * W, app.eye_b * H
    eb = eb0 * pose.eye_open
    for side in (-1, 1):
        ex, ey = fx + side * app.eye_spacing * W, top + app.eye_y * H
        eyes.append((ex, ey, ea, eb))
        pr = app.pupil_r * ea
        pupils.append((ex + pose.gaze * GAZE_SHIFT * ea, ey, pr, min(pr, PUPIL_MAX_HEIGHT * eb)))
        t = app.brow_thickness * H
        # Neutral brow: its lower edge sits brow_gap above the (neutral) eye top.
        by = ey - eb0 - app.brow_gap * H - t / 2 - pose.brow_raise * BROW_RAISE * H
        bx = ex + side * app.brow_out * ea
        half = app.brow_length * ea / 2
        u = np.linspace(-1, 1, 17)
        brows.append(np.stack([bx + u * half, by + brow_curve(app, H, side, u)], axis=1))
    mw = app.mouth_w * W / 2
    mh = (MOUTH_CLOSED + pose.mouth_open * (app.mouth_h - MOUTH_CLOSED)) * H / 2
    mouth_top = top + app.mouth_y * H
    ocx = cx + pose.yaw * YAW_OUTLINE * W
    outline = head_outline(app, ocx, top, H, W)
    box = np.array([outline[:, 0].min(), outline[:, 1].min(), outline[:, 0].max(), outline[:, 1].max()])
    return Geometry(H, W, cx, top, ocx, fx, np.array(eyes), np.array(pupils), np.stack(brows),
                    app.brow_thickness * H, np.array([fx, mouth_top + mh, mw, mh]), box)


def head_outline(app: Appearance, cx: float, top: float, H: float, W: float, points: int = 96) -> np.ndarray:
    """[points, 2] polygon: a superellipse, wider at the forehead for taper > 0."""
    theta = np.linspace(0, 2 * np.pi, points, endpoint=False)
    e = 2.0 / app.head_exponent
    c, s = np.cos(theta), np.sin(theta)
    x = np.sign(c) * np.abs(c) ** e
    y = np.sign(s) * np.abs(s) ** e  # +1 at the chin
    x = x * (1 - app.head_taper * y)
    return np.stack([cx + x * W / 2, top + H / 2 + y * H / 2], axis=1)


SHAPE_WORDS = {"round": "round", "squircle": "squarish", "egg": "egg-shaped", "boxy": "boxy", "pear": "pear-shaped"}
HAIR_WORDS = {"crop": "short {} hair", "spiky": "spiky {} hair", "bob": "a {} bob", "bun": "{} hair in a bun",
              "curly": "curly {} hair", "mohawk": "a {} mohawk", "side part": "side-parted {} hair",
              "long": "long {} hair"}


def describe(app: Appearance) -> str:
    """A caption fragment: 'a round mint-skinned puppet with spiky pink hair and red round glasses'."""
    shape = SHAPE_WORDS[app.head_shape]
    hair = "no hair" if app.hair_style == "bald" else HAIR_WORDS[app.hair_style].format(app.hair_name)
    if hair.startswith("a "):
        hair = f"{article(hair[2:])} {hair[2:]}"
    extras = [hair]
    if app.glasses:
        extras.append(f"{app.glasses_name} {app.glasses} glasses")
    if app.hat:
        extras.append(f"{article(app.hat_name)} {app.hat_name} {app.hat}")
    if app.blush:
        extras.append("rosy cheeks")
    if app.earrings:
        extras.append("gold earrings")
    shirt = f"{article(app.shirt_name)} {app.shirt_name}"
    extras.append({"t-shirt": f"{shirt} t-shirt", "collar": f"{shirt} collared shirt",
                   "bow tie": f"{shirt} shirt with a bow tie", "necklace": f"{shirt} top with a necklace"}[app.neckwear])
    return (f"{article(shape)} {shape} {app.skin_name}-skinned puppet with " + ", ".join(extras[:-1])
            + " and " + extras[-1])


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
