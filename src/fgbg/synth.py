"""`synth` stage: the embedded raw set, rendered from a seed — no downloads.

Backgrounds are ray-cast 3D scenes (ground plane with road/grass/water, sky, hills, box
buildings, trees) through a pinhole camera, so every bg comes with its exact z-depth.
Foregrounds are people-, cat- and dog-like RGBA sprites drawn from signed distance fields with
anti-aliased alpha. Everything comes from `np.random.default_rng([seed, kind, index])`, so each
file is reproducible on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from fgbg.config import SynthParams
from fgbg.convention import metric_to_inverse_u16
from fgbg.images import atomic_write_bytes, encode_png

SUPERSAMPLE = 2
SCENES = ("street", "river", "hills")
CREATURES = ("person", "cat", "dog")
_FAR = 1e9

# ---------------------------------------------------------------- backgrounds


def _noise_texture(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Tileable smooth value noise in [-1, 1] (sum of octaves of blurred white noise)."""
    out = np.zeros((size, size), np.float32)
    for octave, weight in ((4, 0.5), (2, 0.3), (1, 0.2)):
        n = rng.standard_normal((size, size)).astype(np.float32)
        pad = 4 * octave  # blur a wrapped copy so the texture tiles seamlessly
        n = cv2.GaussianBlur(np.pad(n, pad, mode="wrap"), (0, 0), octave)[pad:-pad, pad:-pad]
        out += weight * n / (n.std() + 1e-6)
    return np.clip(out / 2.0, -1, 1)


def _sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a tiling texture at float coordinates (texels)."""
    n = tex.shape[0]
    u = np.mod(u, n).astype(np.float32)
    v = np.mod(v, n).astype(np.float32)
    return cv2.remap(tex, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


class _Hits:
    """Nearest hit per pixel: distance, material id, normal and two surface coordinates."""

    def __init__(self, shape: tuple[int, int]):
        self.t = np.full(shape, _FAR, np.float64)
        self.mat = np.zeros(shape, np.int16)  # 0 = sky
        self.normal = np.zeros(shape + (3,), np.float64)
        self.uv = np.zeros(shape + (2,), np.float64)
        self.obj = np.zeros(shape, np.int32)

    def offer(self, t, valid, mat, normal, uv, obj=0):
        win = valid & (t > 1e-6) & (t < self.t)
        self.t[win] = t[win]
        self.mat[win] = mat
        self.normal[win] = normal[win] if np.ndim(normal) == 3 else normal
        self.uv[win] = uv[win]
        self.obj[win] = obj


def _camera_rays(size: int, rng: np.random.Generator):
    fov = np.radians(rng.uniform(55, 70))
    f = size / (2 * np.tan(fov / 2))
    pitch = np.radians(rng.uniform(3, 12))  # looking slightly down
    yaw = np.radians(rng.uniform(-8, 8))
    c = (size - 1) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    d = np.stack([(xs - c) / f, -(ys - c) / f, np.ones_like(xs)], axis=-1)
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    # Camera z is the optical axis and d_cam has z = 1, so the ray parameter t is the z-depth.
    return d @ (ry @ rx).T


def _hit_box(hits, o, d, lo, hi, mat, obj):
    inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
    t0 = (lo - o) * inv
    t1 = (hi - o) * inv
    tmin, tmax = np.minimum(t0, t1), np.maximum(t0, t1)
    t_near, axis = tmin.max(axis=-1), tmin.argmax(axis=-1)
    t_far = tmax.min(axis=-1)
    valid = (t_near <= t_far) & (t_near > 0)
    normal = np.zeros(d.shape)
    sign = -np.sign(np.take_along_axis(d, axis[..., None], -1)[..., 0])
    np.put_along_axis(normal, axis[..., None], sign[..., None], -1)
    p = o + t_near[..., None] * d
    # surface coordinates: horizontal along the face, height up
    uv = np.stack([np.where(axis == 0, p[..., 2], p[..., 0]), p[..., 1]], axis=-1)
    hits.offer(t_near, valid, mat, normal, uv, obj)


def _hit_sphere(hits, o, d, centre, radius, mat, obj):
    oc = o - centre
    a = (d * d).sum(-1)
    b = 2 * (d * oc).sum(-1)
    c = (oc * oc).sum() - radius**2
    disc = b * b - 4 * a * c
    valid = disc > 0
    t = (-b - np.sqrt(np.where(valid, disc, 0))) / (2 * a)
    p = o + t[..., None] * d
    normal = (p - centre) / radius
    uv = np.stack([p[..., 0] + p[..., 2], p[..., 1]], axis=-1)
    hits.offer(t, valid & (p[..., 1] > 0), mat, normal, uv, obj)


# material ids
GROUND, ROAD, WATER, WALL, FOLIAGE, TRUNK, HILL, SIDEWALK = range(1, 9)


def render_background(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One bg: RGB uint8 size×size, metric z-depth (float, sky = inf) and its scene kind."""
    rng = np.random.default_rng([seed, 1, index])
    scene = SCENES[index % len(SCENES)]
    n = size * SUPERSAMPLE
    d = _camera_rays(n, rng)
    cam_h = rng.uniform(1.4, 2.2)
    o = np.array([rng.uniform(-1, 1), cam_h, 0.0])
    hits = _Hits((n, n))

    ground_t = np.where(d[..., 1] < -1e-9, -cam_h / np.minimum(d[..., 1], -1e-9), _FAR)
    gp = o + ground_t[..., None] * d
    hits.offer(ground_t, d[..., 1] < 0, GROUND, np.array([0.0, 1.0, 0.0]), gp[..., [0, 2]])

    obj = 1
    hill_count = rng.integers(2, 5) if scene != "street" else rng.integers(0, 2)
    for _ in range(hill_count):
        r = rng.uniform(25, 70)
        centre = np.array([rng.uniform(-120, 120), -r * rng.uniform(0.3, 0.7), rng.uniform(90, 170)])
        _hit_sphere(hits, o, d, centre, r, HILL, obj)
        obj += 1
    if scene == "street":
        road_half = rng.uniform(3, 5)
        for side in (-1, 1):
            z = rng.uniform(4, 10)
            while z < 120:
                depth_len = rng.uniform(6, 16)
                width = rng.uniform(6, 12)
                x_in = road_half + rng.uniform(2, 4)
                lo = np.array([x_in if side > 0 else -x_in - width, 0.0, z])
                hi = lo + np.array([width, rng.uniform(5, 25), depth_len])
                _hit_box(hits, o, d, lo, hi, WALL, obj)
                obj += 1
                z += depth_len + rng.uniform(0.5, 4)
    tree_count = {"street": rng.integers(0, 4), "river": rng.integers(4, 10), "hills": rng.integers(2, 8)}
    for _ in range(tree_count[scene]):
        x = rng.choice([-1, 1]) * rng.uniform(4, 25)
        z = rng.uniform(8, 70)
        h = rng.uniform(2, 5)
        _hit_box(hits, o, d, np.array([x - 0.2, 0, z - 0.2]), np.array([x + 0.2, h, z + 0.2]), TRUNK, obj)
        _hit_sphere(hits, o, d, np.array([x, h + 1.0, z]), rng.uniform(1.5, 3.0), FOLIAGE, obj)
        obj += 1

    ground = hits.mat == GROUND
    gx, gz = hits.uv[..., 0], hits.uv[..., 1]
    if scene == "street":
        hits.mat[ground & (np.abs(gx) < road_half)] = ROAD
        hits.mat[ground & (np.abs(gx) >= road_half) & (np.abs(gx) < road_half + 2)] = SIDEWALK
    elif scene == "river":
        centre_x = rng.uniform(-4, 4) + np.sin(gz / rng.uniform(15, 40)) * rng.uniform(1, 5)
        hits.mat[ground & (np.abs(gx - centre_x) < rng.uniform(3, 8))] = WATER

    rgb = _shade(hits, d, rng, scene)
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    depth = _pixel_depth(hits.t, size)
    return np.clip(rgb, 0, 255).round().astype(np.uint8), depth, scene


def _pixel_depth(t: np.ndarray, size: int) -> np.ndarray:
    """Metres per output pixel from the supersampled rays, over the same sub-rays its colour
    averages: the mean inverse depth of those that hit something, sky (inf) where most of them do
    not (the rule of fgbg.data.resize_depth). One corner ray per pixel put depth ¼ px off the colour."""
    rays = t.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE)
    hit = rays < _FAR
    inverse = np.where(hit, 1.0 / np.where(hit, rays, 1.0), 0.0).sum(axis=(1, 3))
    hits = hit.sum(axis=(1, 3))
    return np.where(hits * 2 >= SUPERSAMPLE**2, hits / np.maximum(inverse, 1e-300), np.inf)


def _palette(rng: np.random.Generator, base, spread: float = 25.0) -> np.ndarray:
    return np.clip(np.array(base, np.float64) + rng.uniform(-spread, spread, 3), 0, 255)


def _shade(hits: _Hits, d: np.ndarray, rng: np.random.Generator, scene: str) -> np.ndarray:
    n = hits.t.shape[0]
    tex = _noise_texture(rng)
    u, v = hits.uv[..., 0], hits.uv[..., 1]
    fine = _sample(tex, u * 12, v * 12)[..., None]
    coarse = _sample(tex, u * 1.5 + 40, v * 1.5 + 17)[..., None]
    colours = {
        GROUND: _palette(rng, (70, 130, 50)),
        ROAD: _palette(rng, (75, 75, 80), 10),
        SIDEWALK: _palette(rng, (150, 145, 135), 15),
        WATER: _palette(rng, (40, 90, 140), 20),
        WALL: _palette(rng, (150, 120, 100), 50),
        FOLIAGE: _palette(rng, (50, 110, 40), 20),
        TRUNK: _palette(rng, (90, 60, 35), 10),
        HILL: _palette(rng, (80, 120, 70), 25),
    }
    albedo = np.zeros((n, n, 3))
    for mat, colour in colours.items():
        sel = hits.mat == mat
        albedo[sel] = colour
    # per-object colour variation (buildings differ), texture, road markings, windows
    obj_tint = rng.uniform(0.75, 1.25, (hits.obj.max() + 1, 3))
    wall = hits.mat == WALL
    albedo[wall] *= obj_tint[hits.obj[wall]]
    albedo *= 1 + 0.25 * coarse + 0.12 * fine
    windows = wall & (np.mod(u, 3.0) > 1.6) & (np.mod(v, 3.2) > 1.4) & (v > 1.0)
    albedo[windows] = np.array([60, 70, 90]) + 40 * fine[windows]
    if scene == "street":
        lane = (hits.mat == ROAD) & (np.abs(u) < 0.12) & (np.mod(v, 6.0) < 3.0)
        albedo[lane] = (230, 230, 220)
    water = hits.mat == WATER
    albedo[water] *= 1 + 0.3 * np.sin(v[water] * 3 + 5 * fine[water, 0])[..., None]

    sun = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.5, 1.0), rng.uniform(-0.6, 0.2)])
    sun /= np.linalg.norm(sun)
    lambert = np.clip((hits.normal * sun).sum(-1), 0, 1)[..., None]
    lit = albedo * (0.45 + 0.65 * lambert)

    # sky: vertical gradient + clouds; fog blends distant surfaces into the horizon colour
    elevation = d[..., 1] / np.linalg.norm(d, axis=-1)
    zenith, horizon = _palette(rng, (90, 140, 220), 20), _palette(rng, (200, 215, 230), 15)
    s = np.clip(elevation, 0, 1)[..., None] ** 0.6
    sky = horizon * (1 - s) + zenith * s
    # clouds: the noise texture on a plane high above, seen through each sky ray
    plane = 1.0 / np.maximum(d[..., 1], 0.02)
    cloud_noise = _sample(tex, d[..., 0] * plane * 6, d[..., 2] * plane * 6 + 50)
    clouds = np.clip(cloud_noise[..., None] * 2.5 - 0.2, 0, 1)
    sky = sky * (1 - 0.6 * clouds) + 245 * 0.6 * clouds
    fog = 1 - np.exp(-np.minimum(hits.t, 1e4) / rng.uniform(120, 300))[..., None]
    surface = lit * (1 - fog) + horizon * fog
    return np.where((hits.mat == 0)[..., None], sky, surface).astype(np.float32)


# ---------------------------------------------------------------- foregrounds


def _sd_circle(x, y, cx, cy, r):
    return np.hypot(x - cx, y - cy) - r


def _sd_capsule(x, y, ax, ay, bx, by, r):
    px, py, dx, dy = x - ax, y - ay, bx - ax, by - ay
    h = np.clip((px * dx + py * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
    return np.hypot(px - dx * h, py - dy * h) - r


def _sd_ellipse(x, y, cx, cy, rx, ry):
    """Approximate SDF: exact on the axes, good enough for anti-aliased silhouettes."""
    k = np.hypot((x - cx) / rx, (y - cy) / ry)
    return (k - 1) * min(rx, ry)


def _creature_parts(kind: str, x, y, rng):
    """Signed distances of (part name, field) for one creature in unit coordinates."""
    j = lambda s: rng.uniform(-s, s)  # noqa: E731 - tiny jitter helper
    if kind == "person":
        width = rng.uniform(0.8, 1.2)
        hip_y, sh_y = 0.55 + j(0.03), 0.28 + j(0.02)
        arm_a, arm_b = j(0.35), j(0.35)
        return [
            ("skin", _sd_circle(x, y, 0.5, 0.15, 0.075 + j(0.01))),
            (
                "skin",
                _sd_capsule(x, y, 0.5 - 0.1 * width, sh_y + 0.02, 0.5 - 0.17 * width + arm_a * 0.2, 0.55, 0.035),
            ),
            (
                "skin",
                _sd_capsule(x, y, 0.5 + 0.1 * width, sh_y + 0.02, 0.5 + 0.17 * width + arm_b * 0.2, 0.55, 0.035),
            ),
            ("top", _sd_capsule(x, y, 0.5, sh_y + 0.03, 0.5, hip_y - 0.04, 0.1 * width)),
            ("bottom", _sd_capsule(x, y, 0.5 - 0.045 * width, hip_y, 0.47 - j(0.06), 0.93, 0.048)),
            ("bottom", _sd_capsule(x, y, 0.5 + 0.045 * width, hip_y, 0.53 + j(0.06), 0.93, 0.048)),
        ]
    body_len = rng.uniform(0.26, 0.34)
    body_y = 0.55 + j(0.03)
    head_x, head_y = 0.5 - body_len - 0.02, body_y - 0.13
    parts = [
        ("fur", _sd_ellipse(x, y, 0.5, body_y, body_len, 0.12 + j(0.02))),
        ("fur", _sd_circle(x, y, head_x, head_y, 0.1)),
    ]
    for lx in (-0.7, -0.45, 0.45, 0.7):
        fx = 0.5 + lx * body_len
        parts.append(("fur", _sd_capsule(x, y, fx, body_y, fx + j(0.03), 0.88, 0.035)))
    tail_end = (0.5 + body_len + 0.15, body_y - 0.25) if kind == "cat" else (0.5 + body_len + 0.13, body_y - 0.05)
    parts.append(("fur", _sd_capsule(x, y, 0.5 + body_len - 0.03, body_y - 0.03, *tail_end, 0.025)))
    if kind == "cat":
        for ex in (-0.055, 0.055):
            parts.append(("fur", _sd_capsule(x, y, head_x + ex, head_y - 0.05, head_x + ex * 1.4, head_y - 0.15, 0.02)))
    else:
        parts.append(("fur", _sd_ellipse(x, y, head_x - 0.09, head_y + 0.02, 0.07, 0.045)))  # snout
        for ex in (-0.07, 0.07):
            parts.append(("ear", _sd_capsule(x, y, head_x + ex, head_y - 0.06, head_x + ex * 1.3, head_y + 0.06, 0.03)))
    return parts


def render_foreground(seed: int, index: int, size: int) -> tuple[np.ndarray, str]:
    """One RGBA sprite (uint8 size×size) with soft alpha, and its creature kind."""
    rng = np.random.default_rng([seed, 2, index])
    kind = CREATURES[index % len(CREATURES)]
    n = size * SUPERSAMPLE
    ys, xs = (np.mgrid[0:n, 0:n].astype(np.float64) + 0.5) / n
    # leave a transparent margin and vary the pose a little
    x = (xs - 0.5) / rng.uniform(0.8, 0.95) + 0.5
    y = (ys - 0.5) / rng.uniform(0.8, 0.95) + 0.5
    parts = _creature_parts(kind, x, y, rng)
    tex = _noise_texture(rng, 64)
    grain = _sample(tex, xs * 64 * 1.5, ys * 64 * 1.5)
    colours = {
        "skin": _palette(rng, (rng.uniform(90, 230), 150, 120), 20),
        "top": rng.uniform(20, 235, 3),
        "bottom": rng.uniform(20, 200, 3),
        "fur": _palette(
            rng,
            [(200, 120, 50), (120, 120, 120), (40, 35, 30), (230, 225, 215), (140, 95, 60)][rng.integers(5)],
            15,
        ),
        "ear": _palette(rng, (90, 60, 40), 20),
    }
    pixel = 1.0 / n
    rgb = np.zeros((n, n, 3))
    alpha = np.zeros((n, n))
    stripes = rng.random() < 0.5
    freq = rng.uniform(25, 60)
    for name, sd in parts:  # later parts are drawn over earlier ones
        cover = np.clip(0.5 - sd / pixel, 0, 1)
        colour = colours[name] * (1 + 0.15 * grain[..., None])
        if stripes and name in ("top", "fur"):
            colour = colour * (0.75 + 0.25 * (np.sin(xs * freq + ys * freq * 0.3) > 0))[..., None]
        shade = 1.05 - 0.3 * ys[..., None]
        rgb = rgb * (1 - cover[..., None]) + colour * shade * cover[..., None]
        alpha = alpha + cover * (1 - alpha)
    # rgb is premultiplied already (each part drawn "over" with its coverage): downsampled as it is,
    # the soft edge keeps the object's colour (multiplied by alpha again, edges came out ~40 % darker)
    premult = np.concatenate([rgb, alpha[..., None] * 255], axis=-1).astype(np.float32)
    small = cv2.resize(premult, (size, size), interpolation=cv2.INTER_AREA)
    a = small[..., 3:]
    colour = np.where(a > 0, small[..., :3] / np.maximum(a / 255, 1e-6), 0)
    out = np.concatenate([colour, a], axis=-1)
    return np.clip(out, 0, 255).round().astype(np.uint8), kind


# ---------------------------------------------------------------- stage


def run_synth(params: SynthParams, out_dir: Path) -> dict:
    """Write bg/ (RGB PNG), bg_depth/ (16-bit inverse depth PNG) and fg/ (RGBA PNG) + index.json."""
    out_dir = Path(out_dir)
    index = {"bg": [], "fg": []}
    for i in range(params.n_bg):
        rgb, depth, scene = render_background(params.seed, i, params.bg_size)
        name = f"{scene}_{i:05d}.png"
        atomic_write_bytes(out_dir / "bg" / name, encode_png(rgb, 6))
        atomic_write_bytes(out_dir / "bg_depth" / name, encode_png(metric_to_inverse_u16(depth), 6))
        index["bg"].append({"file": name, "scene": scene})
    for i in range(params.n_fg):
        rgba, kind = render_foreground(params.seed, i, params.fg_size)
        name = f"{kind}_{i:05d}.png"
        atomic_write_bytes(out_dir / "fg" / name, encode_png(rgba, 6))
        index["fg"].append({"file": name, "kind": kind})
    atomic_write_bytes(out_dir / "index.json", json.dumps(index, indent=1).encode() + b"\n")
    written = {("bg", e["file"]) for e in index["bg"]} | {("bg_depth", e["file"]) for e in index["bg"]}
    written |= {("fg", e["file"]) for e in index["fg"]}
    for folder in ("bg", "bg_depth", "fg"):  # an earlier run's extra files would be read by prepare
        for path in (out_dir / folder).glob("*.png"):
            if (folder, path.name) not in written:
                path.unlink()
    return index
