"""Real-photo capture pairs (bg, fg_bg, mask) under the imperfect conditions of real shooting.

The model is trained on renders; this builds the check on real photographs (README "Real captures"): each
scene is a photo shipped inside an installed package, each subject a procedural object unlike the
training sprites (random star/blob outlines with feathered alpha, textured with a crop of another
photo or a colour gradient) or a user's RGBA cut-out. For every object, all conditions start from
the SAME clean composite, so a score difference between conditions is the perturbation's alone:

- clean:       bg and fg_bg identical outside the object;
- shift:       tripod nudge, the bg shot ≤ 1.5 px and ≤ 0.5° off (sub-pixel resampling of the photo);
- photometric: each shot its own exposure, gamma, white balance, offset, sensor noise and JPEG quality;
- shadow:      the object casts a soft shadow on the scene in fg_bg (not part of the mask);
- tripod:      shift + photometric + shadow, with the same draws as the three conditions alone;
- handheld:    the bg shot 10–20 px and 2–4° off plus ≤ 1° pan/tilt (a homography), mild
               photometric; meant to be registered with fgbg.align before the model;
- light:       the light on the scene changed unevenly between the shots (a cloud's edge, the sun
               or a lamp, a phone's local tone mapping): the bg under a smooth gain field, ±10–25 %;
- motion:      parts of the scene moved on their own between the shots (leaves in the wind,
               ripples on water): the bg displaced by a smooth flow of ≤ 1–4 px in one or two
               soft regions, still elsewhere.

fg_bg and mask always stay on the photo's grid; only the bg is re-shot from the moved camera. The
scene is cut from the photo with a margin, so even a handheld bg has real content to its borders.

Deliberately independent of the training augmentation (fgbg.augment): NumPy/OpenCV on the CPU,
its own formulas and its own RNG streams `np.random.default_rng([seed, photo, object, stream])`,
so the check is not the training distribution grading itself. Every pair is reproducible alone.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from fgbg.images import MASK_THRESHOLD, contact_sheet, resize_rgba

CONDITIONS = ("clean", "shift", "photometric", "shadow", "tripod", "handheld", "light", "motion")

# Camera motion of the bg shot relative to the fg_bg shot.
TRIPOD_SHIFT_PX, TRIPOD_ROT_DEG = 1.5, 0.5
HANDHELD_SHIFT_PX, HANDHELD_ROT_DEG, HANDHELD_TILT_DEG = (10.0, 20.0), (2.0, 4.0), 1.0
FOCAL = 1.0  # focal length in units of the frame side (a ~53° field of view) for pan/tilt
OBJECT_AREA = (0.11, 0.28)  # fraction of the frame; rasterised coverage lands within 10–30 %
LOWER_HALF = 0.8  # share of objects centred in the lower half of the frame (the rest anywhere)
SHADOW_DARKEN = (0.2, 0.4)
PSF_PX = 0.6  # Gaussian sigma (frame px) of the simulated lens + sensor blur
LIGHT_CHANGE = (0.10, 0.25)  # largest |log gain| of the uneven light change across the frame
SCENE_MOTION_PX = (1.0, 4.0)  # largest displacement (frame px) of the parts of the scene that moved
SCENE_MOTION_CELLS = 12  # the flow varies over ~1/12 of the frame: leaves and ripples, not the whole view

# Stream ids: one generator per kind of draw, so changing one condition never moves another.
_SHAPE, _PLACE, _SHIFT, _PHOTO_BG, _PHOTO_FG, _SHADOW, _HAND, _HAND_BG, _HAND_FG, _LIGHT, _MOTION = range(11)
_NOISE = 100  # + a camera's stream: that shot's sensor noise


@dataclass
class CapturePair:
    """One test pair. `true_matrix` maps bg pixel coordinates to fg_bg pixel coordinates (3×3;
    identity when the camera did not move), the same convention as fgbg.align.Alignment.matrix."""

    name: str  # "<photo>_o<k>": the same name in every condition of one composite
    condition: str
    bg: np.ndarray  # RGB uint8 size×size×3
    fg_bg: np.ndarray
    mask: np.ndarray  # uint8 {0,255}: the object only, never its shadow
    true_matrix: np.ndarray
    info: dict = field(default_factory=dict)  # the draws (gains, shadow strength, ...) for reports
    alpha: np.ndarray | None = None  # float32 size×size on [0, 1]: the matte the object was pasted with


# ---------------------------------------------------------------- photos


def real_photos() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) for the real photographs shipped inside installed packages.

    scikit-learn's china.jpg and flower.jpg (427×640) and matplotlib's grace_hopper.jpg (512×600);
    matplotlib's other sample data are plots, clip art and data files, not photographs.
    """
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as e:
        raise ImportError("real_photos() needs scikit-learn for china.jpg/flower.jpg: pip install scikit-learn") from e
    try:
        from matplotlib import cbook
    except ImportError as e:
        raise ImportError("real_photos() needs matplotlib for grace_hopper.jpg: pip install matplotlib") from e
    from PIL import Image

    photos = [(name, np.ascontiguousarray(load_sample_image(f"{name}.jpg"))) for name in ("china", "flower")]
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        photos.append(("grace_hopper", np.asarray(im.convert("RGB")).copy()))
    return photos


# ---------------------------------------------------------------- the generator


def capture_pairs(
    photos: Sequence[tuple[str, np.ndarray]],
    *,
    per_photo: int,
    size: int,
    seed: int,
    objects: Sequence[np.ndarray] | None = None,
    conditions: Sequence[str] = CONDITIONS,
) -> Iterator[CapturePair]:
    """Pairs of size×size shots: for each photo, `per_photo` objects, each in every condition.

    `objects` (RGBA uint8 cut-outs) replace the procedural objects when given, used in turn. The
    frame is the photo's centre square (use a multiple of 32 for `size`, as the U-Net needs).
    """
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}; choose from {CONDITIONS}")
    if size < 64:
        raise ValueError(f"size {size} is too small for a capture pair (>= 64)")
    if not photos:
        raise ValueError("no photos given")
    for name, photo in photos:
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise ValueError(f"photo {name!r} must be RGB uint8 H×W×3, got {photo.dtype} {photo.shape}")
    for i, obj in enumerate(objects or ()):
        if obj.dtype != np.uint8 or obj.ndim != 3 or obj.shape[2] != 4:
            raise ValueError(f"object {i} must be RGBA uint8 H×W×4, got {obj.dtype} {obj.shape}")
        if obj[..., 3].max() < MASK_THRESHOLD:
            raise ValueError(f"object {i} has no opaque pixels (alpha < {MASK_THRESHOLD} everywhere)")

    margin = _margin(size)
    for p, (name, photo) in enumerate(photos):
        camera = _Camera(photo, size, margin)
        others = [ph for j, (_, ph) in enumerate(photos) if j != p]
        photo_id = zlib.crc32(name.encode())
        for k in range(per_photo):
            rng = _Streams(seed, photo_id, k)
            if objects:
                rgba = _fit_user_object(objects[(p * per_photo + k) % len(objects)], size, rng(_SHAPE))
            else:
                rgba = _procedural_object(size, rng(_SHAPE), others)
            x, y = _place(rgba[..., 3], size, rng(_PLACE))
            alpha = np.zeros((size, size), np.float32)
            colour = np.zeros((size, size, 3), np.float32)
            h, w = rgba.shape[:2]
            alpha[y : y + h, x : x + w] = rgba[..., 3] / 255.0
            colour[y : y + h, x : x + w] = rgba[..., :3]
            mask = np.where(np.round(alpha * 255) >= MASK_THRESHOLD, np.uint8(255), np.uint8(0))
            yield from _conditions(f"{name}_o{k}", camera, alpha, colour, mask, rng, conditions)


class _Streams:
    """Independent generators for one composite: rng(stream) = default_rng([seed, photo, object, stream])."""

    def __init__(self, seed: int, photo_id: int, k: int):
        self.key = [seed, photo_id, k]

    def __call__(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([*self.key, stream])


def _conditions(
    name: str,
    camera: _Camera,
    alpha: np.ndarray,
    colour: np.ndarray,
    mask: np.ndarray,
    rng: _Streams,
    conditions: Sequence[str],
) -> Iterator[CapturePair]:
    """Every requested condition of one composite; each draw comes from its own stream."""
    size = alpha.shape[0]
    identity = np.eye(3)
    view = camera.shot(identity)
    clean = _composite(view, colour, alpha)
    tripod_m, tripod_info = _tripod_motion(size, rng(_SHIFT))
    hand_m, hand_info = _handheld_motion(size, rng(_HAND))
    cam_bg, cam_fg = _draw_camera(rng(_PHOTO_BG)), _draw_camera(rng(_PHOTO_FG))
    shade, shadow_info = _shadow(alpha, rng(_SHADOW))
    info = {"object_fraction": float(mask.mean() / 255)}

    def photometric(img: np.ndarray, cam: dict, stream: int) -> np.ndarray:
        return _develop(img, cam, rng(stream + _NOISE))

    for condition in conditions:
        if condition == "clean":
            bg, fg_bg, matrix, extra = view, clean, identity, {}
        elif condition == "shift":
            bg, fg_bg, matrix, extra = camera.shot(tripod_m), clean, tripod_m, tripod_info
        elif condition == "photometric":
            bg = photometric(view, cam_bg, _PHOTO_BG)
            fg_bg = photometric(clean, cam_fg, _PHOTO_FG)
            matrix, extra = identity, {"camera_bg": cam_bg, "camera_fg_bg": cam_fg}
        elif condition == "shadow":
            bg, fg_bg, matrix, extra = view, _composite(view * shade, colour, alpha), identity, shadow_info
        elif condition == "tripod":
            bg = photometric(camera.shot(tripod_m), cam_bg, _PHOTO_BG)
            fg_bg = photometric(_composite(view * shade, colour, alpha), cam_fg, _PHOTO_FG)
            matrix = tripod_m
            extra = {**tripod_info, **shadow_info, "camera_bg": cam_bg, "camera_fg_bg": cam_fg}
        elif condition == "handheld":
            mild_bg, mild_fg = _draw_camera(rng(_HAND_BG), mild=True), _draw_camera(rng(_HAND_FG), mild=True)
            bg = photometric(camera.shot(hand_m), mild_bg, _HAND_BG)
            fg_bg = photometric(clean, mild_fg, _HAND_FG)
            matrix, extra = hand_m, {**hand_info, "camera_bg": mild_bg, "camera_fg_bg": mild_fg}
        elif condition == "light":
            field, extra = _light_field(size, rng(_LIGHT))
            bg, fg_bg, matrix = view * field[..., None], clean, identity
        elif condition == "motion":
            flow, extra = _scene_motion(size, rng(_MOTION))
            bg, fg_bg, matrix = _move_scene(view, flow), clean, identity
        yield CapturePair(
            name, condition, _to_u8(bg), _to_u8(fg_bg), mask.copy(), matrix.copy(), {**info, **extra}, alpha.copy()
        )


def pairs_sheet(pairs: Sequence[CapturePair]) -> np.ndarray:
    """A contact sheet, one row per pair: bg, fg_bg, mask, |fg_bg − bg| ×4 (what a model must ignore)."""
    rows = []
    for pair in pairs:
        diff = np.abs(pair.fg_bg.astype(np.int16) - pair.bg.astype(np.int16)).max(axis=2)
        rows.append([pair.bg, pair.fg_bg, pair.mask, np.clip(diff * 4, 0, 255).astype(np.uint8)])
    return contact_sheet(rows)


# ---------------------------------------------------------------- the scene and its cameras


class _Camera:
    """Shoots size×size views of a photo; `shot(M)` is the view of a camera moved by M (bg → fg_bg).

    Both shots resample the same anti-aliased photo with the same bicubic kernel, so an unmoved
    shot equals the reference view exactly and a moved one differs only by the motion.
    """

    def __init__(self, photo: np.ndarray, size: int, margin: int):
        ph, pw = photo.shape[:2]
        self.size = size
        self.scale = (size + 2 * margin) / min(ph, pw)  # frame px per photo px
        # A camera's optics and sensor blur by ~PSF px; the photo brings ~0.5 of its own px already.
        # Without it, the two shots alias fine detail differently, unlike any real pair of shots.
        sigma = math.sqrt(max(0.0, (PSF_PX / self.scale) ** 2 - 0.5**2))
        img = photo.astype(np.float32)
        self.photo = cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0.1 else img
        # frame pixel (x, y) → photo pixel: the frame is centred on the photo
        s = 1.0 / self.scale
        cx, cy = (pw - 1) / 2 - s * (size - 1) / 2, (ph - 1) / 2 - s * (size - 1) / 2
        self.to_photo = np.array([[s, 0, cx], [0, s, cy], [0, 0, 1]])
        self.photo_size = (pw, ph)

    def shot(self, matrix: np.ndarray) -> np.ndarray:
        """float32 view whose pixel q shows the scene point the reference view has at matrix·q."""
        remap = self.to_photo @ matrix
        corners = np.array([[-2, -2], [self.size + 1, -2], [self.size + 1, self.size + 1], [-2, self.size + 1]])
        src = cv2.perspectiveTransform(corners[None].astype(np.float64), remap)[0]
        pw, ph = self.photo_size
        if src.min() < 0 or src[:, 0].max() > pw - 1 or src[:, 1].max() > ph - 1:
            raise RuntimeError("camera motion exceeds the scene margin")  # a bug in _margin, never the user's
        flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        out = cv2.warpPerspective(self.photo, remap, (self.size, self.size), flags=flags, borderMode=cv2.BORDER_REFLECT)
        return np.clip(out, 0, 255)


def _rotation_about_centre(size: int, degrees: float, dx: float, dy: float) -> np.ndarray:
    c = (size - 1) / 2
    m = np.vstack([cv2.getRotationMatrix2D((c, c), degrees, 1.0), [0, 0, 1]])
    m[0, 2] += dx
    m[1, 2] += dy
    return m


def _tripod_motion(size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A nudge of the tripod: translation ≤ 1.5 px in any direction, rotation ≤ 0.5°."""
    r, phi = TRIPOD_SHIFT_PX * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
    deg = rng.uniform(-TRIPOD_ROT_DEG, TRIPOD_ROT_DEG)
    dx, dy = r * math.cos(phi), r * math.sin(phi)
    return _rotation_about_centre(size, deg, dx, dy), {"shift_px": (dx, dy), "rotation_deg": deg}


def _handheld_motion(size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A second handheld shot: 10–20 px, 2–4° roll, and pan/tilt ≤ 1° (perspective, a homography)."""
    r, phi = rng.uniform(*HANDHELD_SHIFT_PX), rng.uniform(0, 2 * math.pi)
    deg = rng.uniform(*HANDHELD_ROT_DEG) * rng.choice([-1.0, 1.0])
    pan, tilt = rng.uniform(-HANDHELD_TILT_DEG, HANDHELD_TILT_DEG, 2)
    dx, dy = r * math.cos(phi), r * math.sin(phi)
    m = _rotation_about_centre(size, deg, dx, dy) @ _pan_tilt(size, pan, tilt)
    return m / m[2, 2], {"shift_px": (dx, dy), "rotation_deg": deg, "pan_deg": pan, "tilt_deg": tilt}


def _pan_tilt(size: int, pan: float, tilt: float) -> np.ndarray:
    """The image homography K·R·K⁻¹ of a camera turned by `pan` about y and `tilt` about x."""
    f, c = FOCAL * size, (size - 1) / 2
    k = np.array([[f, 0, c], [0, f, c], [0, 0, 1]])
    a, b = math.radians(pan), math.radians(tilt)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return k @ ry @ rx @ np.linalg.inv(k)


def _margin(size: int) -> int:
    """Scene border (frame px) that the largest handheld motion can bring into view, plus slack."""
    worst = 0.0
    corners = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], np.float64)
    for deg in (-HANDHELD_ROT_DEG[1], HANDHELD_ROT_DEG[1]):
        for pan in (-HANDHELD_TILT_DEG, HANDHELD_TILT_DEG):
            for tilt in (-HANDHELD_TILT_DEG, HANDHELD_TILT_DEG):
                m = _rotation_about_centre(size, deg, 0, 0) @ _pan_tilt(size, pan, tilt)
                moved = cv2.perspectiveTransform(corners[None], m)[0]
                worst = max(worst, float(np.abs(moved - corners).max()))
    return math.ceil(worst + HANDHELD_SHIFT_PX[1] + 4)


# ---------------------------------------------------------------- objects


def _procedural_object(size: int, rng: np.random.Generator, others: Sequence[np.ndarray]) -> np.ndarray:
    """An RGBA star or blob covering 11–28 % of the frame: feathered edge, photo or gradient texture."""
    target = rng.uniform(*OBJECT_AREA) * size * size
    for _ in range(20):  # a thin star of a large area may not fit the frame: draw another outline
        outline = _outline(rng)
        unit_area = _rasterise(outline, 100.0, rng).sum() / 255.0 / 100.0**2
        scale = math.sqrt(target / unit_area)
        if np.ptp(outline, axis=0).max() * scale + 10 < size:
            break
    else:
        scale = (size - 10) / np.ptp(outline, axis=0).max()
    alpha = _rasterise(outline, scale, rng, feather=True)
    h, w = alpha.shape
    if others and rng.uniform() < 0.6:
        texture = _photo_texture(others[int(rng.integers(len(others)))], w, h, rng)
    else:
        texture = _gradient_texture(w, h, rng)
    light = np.linspace(1.0 + rng.uniform(0, 0.15), 1.0 - rng.uniform(0.1, 0.3), h, dtype=np.float32)
    texture = np.clip(texture * light[:, None, None], 0, 255)  # lit from above, like the scenes
    return np.dstack([np.round(texture).astype(np.uint8), alpha])


def _outline(rng: np.random.Generator) -> np.ndarray:
    """Closed outline, unit-ish radius, as polar samples: a spiky star or a smooth lumpy blob."""
    t = np.linspace(0, 2 * math.pi, 360, endpoint=False)
    if rng.uniform() < 0.5:  # star: alternating tips and notches, jittered
        tips = int(rng.integers(4, 9))
        depth = rng.uniform(0.35, 0.6)
        phase = (t * tips / (2 * math.pi) + rng.uniform()) % 1.0
        r = 1.0 - depth * (1.0 - np.abs(2.0 * phase - 1.0))
        r *= 1.0 + 0.1 * np.interp(t, np.linspace(0, 2 * math.pi, tips * 2 + 1), rng.uniform(-1, 1, tips * 2 + 1))
    else:  # blob: a few low harmonics
        r = np.ones_like(t)
        for n in range(2, 6):
            r += rng.uniform(0, 0.25 / n**0.5) * np.cos(n * t + rng.uniform(0, 2 * math.pi))
    sx, sy = rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.3)  # squash: not every object is round
    return np.stack([r * np.cos(t) * sx, r * np.sin(t) * sy], axis=1)


def _rasterise(outline: np.ndarray, scale: float, rng: np.random.Generator, feather: bool = False) -> np.ndarray:
    """Alpha (uint8) of the outline scaled to `scale` px per unit: 4× supersampled, optionally feathered."""
    pts = outline * scale
    pad = 4
    lo = pts.min(axis=0) - pad
    w, h = (np.ceil(pts.max(axis=0) - lo) + pad).astype(int)
    big = np.zeros((4 * h, 4 * w), np.uint8)
    poly = np.round((pts - lo) * 4 * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(big, [poly], 255, cv2.LINE_AA, shift=4)
    alpha = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
    if feather:  # 1–2 px soft edge, like a real cut-out's motion blur and defocus
        alpha = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.5, 1.0))
    return alpha


def _photo_texture(photo: np.ndarray, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A randomly rotated and scaled crop of another photo: real-world texture and colour."""
    ph, pw = photo.shape[:2]
    diagonal = math.hypot(w, h)  # any rotation of the crop must stay inside the photo
    zoom = max(rng.uniform(0.4, 1.2), diagonal / (min(ph, pw) - 2))  # object px per photo px
    half = diagonal / zoom / 2
    cx, cy = rng.uniform(half, pw - 1 - half), rng.uniform(half, ph - 1 - half)
    m = cv2.getRotationMatrix2D((cx, cy), rng.uniform(0, 360), zoom)
    m[:, 2] += ((w - 1) / 2 - cx, (h - 1) / 2 - cy)
    return cv2.warpAffine(photo.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _gradient_texture(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A linear or radial blend of two random colours with a little grain (plastic, paint)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.uniform() < 0.5:
        a = rng.uniform(0, 2 * math.pi)
        u = xs * math.cos(a) + ys * math.sin(a)
    else:
        u = np.hypot(xs - rng.uniform(0, w), ys - rng.uniform(0, h))
    u = (u - u.min()) / max(float(np.ptp(u)), 1e-6)
    tex = c0 + (c1 - c0) * u[..., None]
    return tex + rng.normal(0, 4, tex.shape)


def _fit_user_object(rgba: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A user's cut-out trimmed to its alpha and scaled to cover 11–28 % of the frame, fully inside."""
    ys, xs = np.nonzero(rgba[..., 3])
    rgba = rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = rgba.shape[:2]
    coverage = (rgba[..., 3] >= MASK_THRESHOLD).sum()
    scale = math.sqrt(rng.uniform(*OBJECT_AREA) * size * size / coverage)
    scale = min(scale, (size - 4) / max(h, w))  # must fit inside the frame
    return resize_rgba(rgba, max(1, round(w * scale)), max(1, round(h * scale)))


def _place(alpha: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner: fully inside with a 1 px border; mostly (LOWER_HALF) centred in the lower half."""
    h, w = alpha.shape
    x = int(rng.integers(1, max(2, size - w)))
    y_lo, y_hi = 1, max(2, size - h)
    if rng.uniform() < LOWER_HALF:
        y_lo = min(max(1, (size - h + 1) // 2), y_hi - 1)  # box centre at or below the frame's middle
    return x, int(rng.integers(y_lo, y_hi))


def _composite(view: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return colour * a + view * (1.0 - a)


# ---------------------------------------------------------------- shadow


def _shadow(alpha: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A multiplicative shade map (≤ 1) cast on the ground by the object, plus a contact shadow.

    The cast shadow is the object's alpha laid on the ground: mirrored or squashed about its base
    line, sheared and offset by the light's direction, blurred (a soft light); the contact shadow
    is a dark blurred band where the object touches the ground.
    """
    size = alpha.shape[0]
    rows = np.flatnonzero(alpha.max(axis=1) > 0.5)
    base = float(rows[-1]) if rows.size else size - 1.0
    squash = rng.uniform(0.3, 0.7) * rng.choice([-1.0, 1.0])  # < 0: falls towards the camera, > 0: behind
    shear = rng.uniform(-1.0, 1.0)  # the light's side
    ox = rng.uniform(0.02, 0.08) * size * rng.choice([-1.0, 1.0])
    oy = rng.uniform(0.0, 0.04) * size
    # object point (x, y) → ground point: squashed about the base line, sheared, offset
    m = np.array([[1.0, shear * squash, ox - shear * squash * base], [0.0, squash, oy + base * (1 - squash)]])
    cast = cv2.warpAffine(alpha, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    cast = cv2.GaussianBlur(cast, (0, 0), rng.uniform(1.5, 4.0) * size / 192)
    cols = np.flatnonzero(alpha.max(axis=0) > 0.5)
    contact = np.zeros_like(alpha)
    if rows.size and cols.size:
        centre = (int(round((cols[0] + cols[-1]) / 2)), int(round(base)))
        axes = (max(2, int((cols[-1] - cols[0]) * 0.45)), max(1, int(size * 0.015)))
        cv2.ellipse(contact, centre, axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
        contact = cv2.GaussianBlur(contact, (0, 0), max(1.0, size / 96))
    strength = rng.uniform(*SHADOW_DARKEN)
    tint = 1.0 + rng.uniform(-0.05, 0.05, 3)  # sky-lit shadows are a little bluish, or warm indoors
    amount = np.clip(np.maximum(cast, 1.3 * contact), 0, 1)[..., None]
    shade = 1.0 - np.clip(strength * tint, 0, 0.95) * amount
    info = {"shadow_strength": float(strength), "shadow_squash": float(squash), "shadow_shear": float(shear)}
    info["shadow_offset_px"] = (float(ox), float(oy))
    return shade.astype(np.float32), info


# ---------------------------------------------------------------- light


def _frame_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of each pixel centre in frame units, −0.5 … 0.5: fields drawn at any pair size alike."""
    return (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size - 0.5


def _soft_spot(yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, radius: float) -> np.ndarray:
    """A Gaussian bump (peak 1) of σ `radius` at (cx, cy), in frame units."""
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))


def _light_field(size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A smooth gain field (≥ 0) for a light that changed unevenly: a ramp in a random direction
    (the sun or a lamp moved) plus one soft bright or dark patch (a cloud, a light switched), scaled
    so that its largest |log gain| is drawn from LIGHT_CHANGE."""
    yy, xx = _frame_grid(size)
    theta = rng.uniform(0.0, 2 * math.pi)
    ramp = (xx * math.cos(theta) + yy * math.sin(theta)) * rng.uniform(0.3, 1.0)
    cx, cy = rng.uniform(-0.5, 0.5, 2)
    radius = rng.uniform(0.15, 0.4)
    patch = _soft_spot(yy, xx, cx, cy, radius) * rng.choice([-1.0, 1.0])
    log_gain = ramp + patch
    log_gain -= log_gain.mean()  # an uneven change, not an exposure change (photometric has those)
    amount = rng.uniform(*LIGHT_CHANGE)
    field = np.exp(log_gain * (amount / np.abs(log_gain).max()))
    info = {"light_change": float(amount), "light_direction_deg": float(math.degrees(theta))}
    return field.astype(np.float32), info


# ---------------------------------------------------------------- scene motion


def _scene_motion(size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A displacement field (size×size×2, frame px) for parts of the scene that moved on their own
    between the shots: a smooth random flow varying over ~1/SCENE_MOTION_CELLS of the frame, inside
    one or two soft regions (a tree, a stretch of water) and exactly zero outside them, scaled so
    that its largest displacement is drawn from SCENE_MOTION_PX."""
    cells = SCENE_MOTION_CELLS
    flow = np.stack(
        [cv2.resize(rng.standard_normal((cells, cells)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
         for _ in range(2)], axis=-1,
    )  # fmt: skip
    yy, xx = _frame_grid(size)
    region = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(-0.5, 0.5, 2)
        radius = rng.uniform(0.1, 0.25)
        bump = _soft_spot(yy, xx, cx, cy, radius)
        region = np.maximum(region, np.clip((bump - 0.05) / 0.95, 0.0, 1.0))  # zero beyond ~2.4 radii
    flow *= region[..., None]
    amount = rng.uniform(*SCENE_MOTION_PX)
    flow *= amount / max(float(np.hypot(flow[..., 0], flow[..., 1]).max()), 1e-6)
    info = {"motion_px": float(amount), "moving_fraction": float((region > 0).mean())}
    return flow.astype(np.float32), info


def _move_scene(view: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The view with each pixel q showing what the reference view has at q + flow(q) (bicubic; where
    the flow is zero the kernel picks the pixel itself, so the still scene stays exact)."""
    size = view.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    map_x = np.ascontiguousarray(xx + flow[..., 0], np.float32)
    map_y = np.ascontiguousarray(yy + flow[..., 1], np.float32)
    moved = cv2.remap(view, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return np.clip(moved, 0, 255)


# ---------------------------------------------------------------- photometric


def _draw_camera(rng: np.random.Generator, mild: bool = False) -> dict:
    """One shot's camera response: exposure gain, gamma, white balance, offset, noise and JPEG quality."""
    k = 0.4 if mild else 1.0
    return {
        "gain": float(math.exp(rng.uniform(-0.25, 0.25) * k)),
        "gamma": float(math.exp(rng.uniform(-0.15, 0.15) * k)),
        "white_balance": [float(math.exp(v * k)) for v in rng.uniform(-0.08, 0.08, 3)],
        "offset": float(rng.uniform(-8, 8) * k),
        "noise": float(rng.uniform(1.0, 4.0) * (0.6 if mild else 1.0)),
        "jpeg": int(rng.integers(75, 96)),
    }


def _develop(img: np.ndarray, cam: dict, rng: np.random.Generator) -> np.ndarray:
    """Apply a camera response to a float image in 0..255, then noise, 8-bit rounding and JPEG."""
    x = np.clip(img, 0, 255) / 255.0
    x = x ** cam["gamma"] * cam["gain"] * np.asarray(cam["white_balance"], np.float32)
    x = x * 255.0 + cam["offset"]
    sigma = np.sqrt(cam["noise"] ** 2 + 0.02 * np.clip(x, 0, 255))  # read noise + shot noise
    x = x + rng.standard_normal(x.shape).astype(np.float32) * sigma
    u8 = _to_u8(x)
    ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, cam["jpeg"]])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.round(img), 0, 255).astype(np.uint8))
