"""Capture augmentation: make training pairs differ the way a real empty plate and a real shot differ.

Composites share every pixel of the bg outside the object, so a model trained on them calls any
difference "object": a 1 px camera shift, an exposure change, a shadow (README "Real captures"). This module
perturbs a training `Batch` on the device (BackgroundMattingV2, BSUV-Net 2.0):

- shadow (fg_bg): the object's mask, squashed/sheared about its bottom and offset, blurred, darkens
  the scene outside the object; mask and depth stay (a shadow is not the object);
- misalign (bg): sub-pixel affine — translation, rotation, zoom; fg_bg, mask and depth stay, as
  they describe fg_bg's scene;
- photometric, blur, noise: on each shot independently, in the order a camera applies them;
- shapes (fg_bg, mask, alpha, depth; first): objects with random outlines, so the network compares the
  shots instead of drawing the training sprites' silhouettes where differences are unreliable.

A `clean` fraction of the pairs is left exactly as composed: tripod pairs with locked exposure are
nearly identical, and a model that never sees identical pairs stops trusting faint differences.

Every random number comes from one CPU generator seeded from (seed, rank), as small per-sample
parameter tensors sent to the device in one copy, so the parameters are the same on any device and
`get_state`/`set_state` resume exactly. The one exception is the noise field itself (B×3×H×W: too
big to draw on the CPU each step): it is drawn on the device from a seed the CPU generator gives, so
it is reproducible per device type but a CUDA run's noise pattern differs from a CPU run's.
Samples an augmentation does not pick are copied bit-exact (the work runs on the picked ones only). Each
stage writes into the batch copy the first stage made, and the ops run in place on their own new tensors:
on a CPU a fresh B×3×H×W buffer per op cost more than some of the ops (benchmarks/README).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fgbg.config import AugmentParams
from fgbg.data import Batch

_STREAM = 0xA06  # keeps this stream apart from the flip generator's (seed + rank)
BG, FG_BG = 0, 1  # shot index in the 2×B draws
Params = Callable[[str, torch.Tensor], torch.Tensor]  # (name, picked indices) → their columns, on the device


@dataclass(frozen=True)
class Draws:
    """One batch's random parameters, on the CPU. B = batch size; 2×B tensors hold (bg, fg_bg).
    Booleans say which samples an augmentation picks; fractions are of the image side."""

    misalign: torch.Tensor  # B bool
    shift: torch.Tensor  # B×2 (dx, dy), fraction of the side; > 0 moves bg content right / down
    angle: torch.Tensor  # B degrees
    zoom: torch.Tensor  # B
    photometric: torch.Tensor  # 2×B bool
    gain: torch.Tensor  # 2×B
    gamma: torch.Tensor  # 2×B
    white_balance: torch.Tensor  # 2×B×3
    offset: torch.Tensor  # 2×B
    blur: torch.Tensor  # 2×B bool
    blur_sigma: torch.Tensor  # 2×B px
    noise: torch.Tensor  # 2×B bool
    noise_sigma: torch.Tensor  # 2×B
    noise_seed: torch.Tensor  # 2 int64: the device generator's seed per shot
    shadow: torch.Tensor  # B bool
    shadow_strength: torch.Tensor  # B
    shadow_offset: torch.Tensor  # B×2 (dx, dy), fraction of the side
    shadow_squash: torch.Tensor  # B
    shadow_shear: torch.Tensor  # B horizontal px per px of height
    shadow_blur: torch.Tensor  # B σ, fraction of the side
    shapes: torch.Tensor  # B bool
    shape_centre: torch.Tensor  # B×2 (x, y), fraction of the side
    shape_size: torch.Tensor  # B diameter, fraction of the shorter side
    shape_aspect: torch.Tensor  # B width / height factor
    shape_wobble: torch.Tensor  # B×4 amplitudes of the outline harmonics k = 2..5, per radius
    shape_phase: torch.Tensor  # B×4 radians
    shape_texture: torch.Tensor  # B weight of the other scene's texture against the flat colour
    shape_colour: torch.Tensor  # B×3
    exact: torch.Tensor  # B bool: left exact (the `clean` fraction): no capture difference is applied


class CaptureAugment:
    """`aug(batch) -> Batch`: a new batch whose bg and fg_bg differ like two real captures; mask and
    depth are the input's own tensors unless a random-outline object was pasted (`shapes`), which
    they then include. Inputs are never modified in place."""

    def __init__(self, params: AugmentParams, seed: int, rank: int = 0):
        self.params = params
        start = np.random.SeedSequence([seed % 2**64, rank, _STREAM]).generate_state(1, np.uint64)[0]
        self._gen = torch.Generator().manual_seed(int(start))
        self._noise_gens: dict[torch.device, torch.Generator] = {}

    def get_state(self) -> torch.Tensor:
        """The generator's state (a CPU ByteTensor) for the checkpoint: the whole of this object's state."""
        return self._gen.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self._gen.set_state(state)

    def __call__(self, batch: Batch, progress: float = 0.0) -> Batch:
        """`progress`: the fraction of the training steps done before this batch (`anneal`, `shapes.start`)."""
        if not self.params.enabled:
            return batch
        return self.apply(batch, self.draw(batch.bg.shape[0], progress))

    def strength(self, progress: float) -> float:
        """The factor on the annealed augmentations' probabilities at `progress` (1 until `anneal` starts)."""
        a = self.params.anneal
        if a.fraction == 0 or progress <= 1 - a.fraction:
            return 1.0
        return 1 - (1 - a.keep) * min(1.0, (progress - (1 - a.fraction)) / a.fraction)

    def draw(self, b: int, progress: float = 0.0) -> Draws:
        """The random parameters of the next batch of `b` samples (a fixed number of draws per sample,
        whatever the probabilities, so a params change does not shift later batches' streams) at
        `progress` through the training: `anneal` scales the probabilities of the augmentations it
        names, and no shapes are pasted before `shapes.start`."""
        p, g = self.params, self._gen
        strength = self.strength(progress)

        def unit(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=g)

        def sym(m: float, *shape: int) -> torch.Tensor:  # uniform in [-m, m]
            return (2 * unit(*shape) - 1) * m

        def log_sym(m: float, *shape: int) -> torch.Tensor:  # factor in [1/(1+m), 1+m], log-uniform
            return torch.exp(sym(math.log1p(m), *shape))

        def between(r: tuple[float, float], *shape: int) -> torch.Tensor:
            return r[0] + (r[1] - r[0]) * unit(*shape)

        def picked(name: str, prob: float | torch.Tensor, *shape: int) -> torch.Tensor:
            return unit(*shape) < (prob * strength if name in p.anneal.only else prob)

        m, ph, bl, no, sh = p.misalign, p.photometric, p.blur, p.noise, p.shadow
        misalign = picked("misalign", m.p, b)
        shift, angle, zoom = sym(m.translate, b, 2), sym(m.rotate, b), 1 + sym(m.scale, b)
        photometric = picked("photometric", torch.tensor([[ph.p_bg], [ph.p_fg_bg]]), 2, b)
        gain, gamma = log_sym(ph.gain, 2, b), log_sym(ph.gamma, 2, b)
        wb = log_sym(ph.white_balance, 2, b, 3)
        wb = wb / wb.log().mean(-1, keepdim=True).exp()  # a colour cast only: exposure is `gain`'s
        offset = sym(ph.offset, 2, b)
        blur, blur_sigma = picked("blur", bl.p, 2, b), between(bl.sigma, 2, b)
        noise, noise_sigma = picked("noise", no.p, 2, b), between(no.sigma, 2, b)
        noise_seed = torch.randint(0, 2**62, (2,), generator=g)
        shadow, darkening = picked("shadow", sh.p, b), between(sh.strength, b)
        shadow_offset, squash, shear = sym(sh.offset, b, 2), between(sh.squash, b), sym(sh.shear, b)
        shadow_blur = between(sh.blur, b)
        perturb = unit(b) >= p.clean  # drawn after the above, so `clean: 0` keeps their streams as they were
        if p.clean_by == "batch":
            perturb = perturb[:1].repeat(b)  # the first sample's coin for the whole batch
        misalign, photometric, blur, noise, shadow = (c & perturb for c in (misalign, photometric, blur, noise, shadow))
        sp = p.shapes  # content, not a capture difference: independent of `clean`
        shapes_p = sp.p if progress >= sp.start else 0.0
        shapes, centre, size = picked("shapes", shapes_p, b), 0.1 + 0.8 * unit(b, 2), between(sp.size, b)
        shapes = shapes if sp.exact else shapes & perturb
        aspect, wobble, phase = log_sym(0.6, b), sp.wobble * unit(b, 4), 2 * math.pi * unit(b, 4)
        texture, colour = unit(b), unit(b, 3)
        return Draws(misalign, shift, angle, zoom, photometric, gain, gamma, wb, offset, blur, blur_sigma, noise,
                     noise_sigma, noise_seed, shadow, darkening, shadow_offset, squash, shear, shadow_blur,
                     shapes, centre, size, aspect, wobble, phase, texture, colour, ~perturb)  # fmt: skip

    def apply(self, batch: Batch, d: Draws) -> Batch:
        """`batch` perturbed by the draws `d`: shadow → misalign → photometric → blur → noise, clamped."""
        bg, fg_bg = batch.bg, batch.fg_bg
        dev, (h, w) = bg.device, bg.shape[-2:]
        table, cols = _columns(
            shift=d.shift, angle=d.angle, zoom=d.zoom, gain=d.gain.T, gamma=d.gamma.T,
            wb_bg=d.white_balance[BG], wb_fg_bg=d.white_balance[FG_BG], offset=d.offset.T,
            blur_sigma=d.blur_sigma.T, noise_sigma=d.noise_sigma.T, strength=d.shadow_strength,
            shadow_offset=d.shadow_offset, squash=d.shadow_squash, shear=d.shadow_shear, shadow_blur=d.shadow_blur,
            centre=d.shape_centre, size=d.shape_size, aspect=d.shape_aspect, wobble=d.shape_wobble,
            phase=d.shape_phase, texture=d.shape_texture, colour=d.shape_colour,
        )  # fmt: skip
        picks = {"shapes": d.shapes, "shadow": d.shadow, "misalign": d.misalign}
        for name, coins in (("photometric", d.photometric), ("blur", d.blur), ("noise", d.noise)):
            picks.update({f"{name}{s}": coins[s] for s in (BG, FG_BG)})
        picks = {k: v.nonzero().flatten() for k, v in picks.items()}
        picks = {k: v for k, v in picks.items() if len(v)}
        if not picks:
            return Batch(bg, fg_bg, batch.mask, batch.depth, batch.alpha, d.exact.to(dev))
        sent = _send([table, *picks.values()], dev)  # one host→device copy per batch
        table, idx = sent[0], {k: v.long() for k, v in zip(picks, sent[1:], strict=True)}
        shots, mask, depth, alpha = [bg, fg_bg], batch.mask, batch.depth, batch.alpha
        inputs = (bg, fg_bg, mask, depth, alpha)

        def par(name: str, i: torch.Tensor) -> torch.Tensor:
            return table[i][:, cols[name]]

        def put(t: torch.Tensor, i: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            """`t` with rows `i` replaced: a copy if `t` is the caller's, else in place (made by an earlier stage)."""
            return t.index_copy(0, i, rows) if any(t is x for x in inputs) else t.index_copy_(0, i, rows)

        if "shapes" in idx:
            i = idx["shapes"]
            texture = bg[(i - 1) % len(bg)].roll((h // 3, w // 3), (2, 3))  # another sample's scene, moved
            out, shape_mask, shape_depth, shape_alpha = _paste_shape(fg_bg[i], mask[i], depth[i], texture, par, i)
            shots[FG_BG], mask, depth = put(fg_bg, i, out), put(mask, i, shape_mask), put(depth, i, shape_depth)
            if alpha is not None:  # the shape lies over the object: a_s + (1 − a_s)·a
                alpha = put(alpha, i, shape_alpha + (1 - shape_alpha) * alpha[i])
        if "shadow" in idx:
            i = idx["shadow"]
            shots[FG_BG] = put(shots[FG_BG], i, self._shadow(shots[FG_BG][i], mask[i], par, i))
        if "misalign" in idx:
            i = idx["misalign"]
            shots[BG] = put(bg, i, self._misalign(bg[i], par, i))
        for s in (BG, FG_BG):
            if f"photometric{s}" in idx:
                i = idx[f"photometric{s}"]
                out = _photometric(shots[s][i], par("gain", i)[:, s], par("gamma", i)[:, s],
                                   par(("wb_bg", "wb_fg_bg")[s], i), par("offset", i)[:, s])  # fmt: skip
                shots[s] = put(shots[s], i, out)
            if f"blur{s}" in idx:
                i = idx[f"blur{s}"]
                radius = math.ceil(3 * self.params.blur.sigma[1])
                out = gaussian_blur(shots[s][i], par("blur_sigma", i)[:, s], radius, "replicate")
                shots[s] = put(shots[s], i, out.clamp_(0, 1))
            if f"noise{s}" in idx:
                i = idx[f"noise{s}"]
                gen = self._noise_gen(dev).manual_seed(int(d.noise_seed[s]))
                field = torch.randn((len(i), 3, h, w), generator=gen, device=dev, dtype=bg.dtype)
                out = field.mul_(par("noise_sigma", i)[:, s].view(-1, 1, 1, 1)).add_(shots[s][i])  # σ·n + x, as x + σ·n
                shots[s] = put(shots[s], i, out.clamp_(0, 1))
        return Batch(shots[BG], shots[FG_BG], mask, depth, alpha, d.exact.to(dev))

    def _misalign(self, bg: torch.Tensor, par: Params, i: torch.Tensor) -> torch.Tensor:
        """The bg resampled as a slightly moved camera saw it (sub-pixel, bilinear)."""
        n, _, h, w = bg.shape
        shift = par("shift", i) * 2  # fraction of the side → normalised units (the side spans 2)
        a, z = torch.deg2rad(par("angle", i)[:, 0]), par("zoom", i)[:, 0]
        cos, sin = torch.cos(a) / z, torch.sin(a) / z
        # output → source: M = D⁻¹ R(−a)/z D with D = diag(w, h)/2 (rotation in pixels, not in the
        # normalised square), then the translation undone: source = M (out − shift)
        m = torch.stack([torch.stack([cos, sin * h / w], -1), torch.stack([-sin * w / h, cos], -1)], 1)
        theta = torch.cat([m, -(m @ shift.unsqueeze(-1))], 2)
        grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
        return F.grid_sample(bg, grid, "bilinear", self.params.misalign.padding, align_corners=False)

    def _shadow(self, fg_bg: torch.Tensor, mask: torch.Tensor, par: Params, i: torch.Tensor) -> torch.Tensor:
        """fg_bg darkened by the object's soft shadow, outside the object only (factor in [1 − strength, 1])."""
        n, _, h, w = fg_bg.shape
        bottom = _bottom_edge(mask)  # the object's lower edge, px
        y_b = 2 * bottom / h - 1  # normalised (an empty mask gives no shadow whatever y_b is)
        dx, dy = (par("shadow_offset", i) * 2).unbind(1)
        s, k = par("squash", i)[:, 0], par("shear", i)[:, 0] * h / w
        # a shadow pixel at height h' = y_b + dy − y above the (offset) ground line shows the object's
        # point at height h'/s, shifted sideways by shear·h': source = (x − dx − k·h', y_b − h'/s)
        zero, one = torch.zeros_like(s), torch.ones_like(s)
        row_x = torch.stack([one, k, -dx - k * (y_b + dy)], -1)
        row_y = torch.stack([zero, 1 / s, y_b * (1 - 1 / s) - dy / s], -1)
        theta = torch.stack([row_x, row_y], 1)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        shade = F.grid_sample(mask, grid, "bilinear", "zeros", align_corners=False)
        radius = math.ceil(3 * self.params.shadow.blur[1] * h)
        shade = gaussian_blur(shade, par("shadow_blur", i)[:, 0] * h, radius, "constant")
        factor = (1 - par("strength", i).view(-1, 1, 1, 1) * shade * (1 - mask)).clamp(0, 1)
        return fg_bg * factor

    def _noise_gen(self, device: torch.device) -> torch.Generator:
        if device not in self._noise_gens:
            self._noise_gens[device] = torch.Generator(device=device)
        return self._noise_gens[device]


def _paste_shape(
    fg_bg: torch.Tensor, mask: torch.Tensor, depth: torch.Tensor, texture: torch.Tensor, par: Params, i: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An object with a random outline pasted into the scene: a wobbly ellipse, r < R(θ) =
    R0·(1 + Σ a_k cos(kθ + φ_k)), edge soft over 1 px, filled with `texture` mixed with a flat colour.
    Returns fg_bg, mask, depth with it, and its own alpha. The mask gains it (alpha ≥ 0.5, the project's
    rule); the depth under it becomes the depth where its lowest row touches the scene, never behind
    what it covers (max in inverse depth)."""
    n, _, h, w = fg_bg.shape
    dev, dt = fg_bg.device, fg_bg.dtype
    centre = par("centre", i) * torch.tensor([w, h], device=dev, dtype=dt)
    radius = par("size", i)[:, 0] * min(h, w) / 2
    aspect = par("aspect", i)[:, 0]
    ys = torch.arange(h, device=dev, dtype=dt).view(1, h, 1) + 0.5 - centre[:, 1].view(-1, 1, 1)
    xs = torch.arange(w, device=dev, dtype=dt).view(1, 1, w) + 0.5 - centre[:, 0].view(-1, 1, 1)
    xs, ys = xs / aspect.view(-1, 1, 1), ys * aspect.view(-1, 1, 1)
    r, theta = torch.sqrt(xs**2 + ys**2), torch.atan2(ys, xs)
    k = torch.arange(2, 6, device=dev, dtype=dt).view(1, 4, 1, 1)
    harmonics = (k * theta.unsqueeze(1)).add_(par("phase", i).view(n, 4, 1, 1)).cos_()
    harmonics.mul_(par("wobble", i).view(n, 4, 1, 1))
    outline = radius.view(-1, 1, 1) * (1 + harmonics.sum(1)).clamp_min_(0.3)
    alpha = (outline - r).add_(0.5).clamp_(0, 1).unsqueeze(1)  # n×1×h×w
    mix = par("texture", i).view(-1, 1, 1, 1)
    fill = (mix * texture).add_((1 - mix) * par("colour", i).view(-1, 3, 1, 1))
    shape = (alpha >= 0.5).to(dt)
    contact = _ground_depth(depth, shape).view(-1, 1, 1, 1)
    depth = torch.where(shape > 0, torch.maximum(depth, contact), depth)
    return fill.mul_(alpha).add_((1 - alpha) * fg_bg), torch.maximum(mask, shape), depth, alpha


def _ground_depth(depth: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Per sample (N×1×H×W depth, 0 = sky, and a non-empty 0/1 shape): the depth the shape stands
    at, by fgbg.depth's rule (contact_point, then ground_depth): the middle of its lowest row; where
    that is sky, the first ground below it in that column, else the scene's farthest ground, else 0."""
    n, _, h, w = depth.shape
    samples = torch.arange(n, device=depth.device)
    bottom = _bottom_edge(shape).long().clamp(1, h) - 1  # its lowest row
    on_row = shape[samples, 0, bottom]  # N×W
    half = (on_row.sum(1, keepdim=True) / 2).floor()
    column = (on_row.cumsum(1) <= half).sum(1).clamp(max=w - 1)  # the middle of the row's pixels
    below = depth[samples, 0, :, column]  # N×H: that column, top to bottom
    ground = (below > 0) & (torch.arange(h, device=depth.device) >= bottom.view(-1, 1))
    first = below.gather(1, ground.int().argmax(1, keepdim=True))[:, 0]
    farthest = torch.where(depth > 0, depth, torch.inf).flatten(1).amin(1).nan_to_num(posinf=0.0)  # no ground: 0
    return torch.where(ground.any(1), first, farthest)


def _bottom_edge(mask: torch.Tensor) -> torch.Tensor:
    """Per N×1×H×W mask: 1 + the lowest row it touches (0 when empty), as mask's dtype."""
    h = mask.shape[2]
    rows = mask.amax(3).flatten(1)  # N×H: rows the mask touches
    return (rows * torch.arange(1, h + 1, device=mask.device, dtype=mask.dtype)).amax(1)


def _photometric(
    x: torch.Tensor, gain: torch.Tensor, gamma: torch.Tensor, wb: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    """Exposure × white balance, tone curve, black level: what drifts between two shots."""
    x = (x * (gain.view(-1, 1) * wb).view(-1, 3, 1, 1)).clamp_(0, 1).pow_(gamma.view(-1, 1, 1, 1))
    return x.add_(offset.view(-1, 1, 1, 1)).clamp_(0, 1)  # in place on the new tensor: no allocation per op


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int, pad: str) -> torch.Tensor:
    """Separable Gaussian blur of N×C×H×W with a σ (px) per sample: one grouped conv per axis.
    `pad` is F.pad's mode ("replicate" for photos, "constant" (zeros) for shadows)."""
    if radius <= 0:
        return x
    n, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma.to(x.dtype).clamp_min(1e-3).view(-1, 1)) ** 2)  # σ → 0: a delta
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n·c)×K
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode=pad), k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode=pad), k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def _columns(**parts: torch.Tensor) -> tuple[torch.Tensor, dict[str, slice]]:
    """Per-sample parameters as one B×K table (one copy to the device) and each one's columns."""
    cols, at, flat = {}, 0, []
    for name, t in parts.items():
        t = t.reshape(t.shape[0], -1).float()
        cols[name] = slice(at, at + t.shape[1])
        at += t.shape[1]
        flat.append(t)
    return torch.cat(flat, 1), cols


def _send(parts: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """CPU tensors → the device in one copy (pinned on CUDA, so it does not wait for the GPU)."""
    flat = torch.cat([p.reshape(-1).float() for p in parts])  # indices < 2²⁴ stay exact in float32
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    return [f.view(p.shape) for f, p in zip(flat.split([p.numel() for p in parts]), parts, strict=True)]
