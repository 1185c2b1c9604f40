"""Tone matching: the bg shot brought to the fg_bg shot's exposure, gamma and white balance before
the network, the photometric twin of fgbg.align.

Between an empty plate and the shot with the subject a camera's auto exposure and white balance
drift. Capture augmentation teaches the model to tolerate some of it; the rest it marks as object
(`fgbg check-captures`' photometric and tripod gaps). One smooth curve per channel, quadratic in
the pixel value (gain, black level and a gamma-like bend), maps the bg's levels onto fg_bg's. It
is fitted by iteratively reweighted least squares with Tukey's biweight on area-averaged pixels,
so the subject, its shadow and edges moved by the camera are outliers that do not pull it. A
pair already alike (an exact pair, a locked camera) keeps its bg byte for byte. Like alignment it
runs where pairs are predicted (`fgbg predict`, the served model, check-captures), not in
training.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FIT_SIDE = 64  # pixels per side the pair is area-averaged to before fitting (noise, JPEG, 1–2 px shifts average out)
MIN_CHANGE = 2.0  # 8-bit levels: a curve that moves no level further leaves the bg untouched
INLIER_LEVELS = 12.0  # 8-bit levels: a fitted pixel this close to the curve is explained by it
MIN_INLIERS = 0.3  # share of the fitted pixels the curve must explain (another scene: ≤ 0.2), else the bg stays
MIN_GAIN = 0.05  # and how much more of them than no change explains (a camera nudge alone: ≤ 0.02)
TUKEY = 4.685  # Tukey biweight constant (95 % efficiency under Gaussian noise)
ITERATIONS = 10


@dataclass(frozen=True)
class ToneMatch:
    """The per-channel curves found (`coefficients[c] = (c0, c1, c2)`: level x on [0, 1] → c0 + c1·x
    + c2·x²) and whether they were applied."""

    coefficients: np.ndarray
    change: float  # the largest |curve(x) − x| over the levels, in 8-bit levels
    inliers: float  # the least share, over the channels, of fitted pixels within INLIER_LEVELS of the curve
    # (`change` counts only the levels between the bg's 1st and 99th percentile)
    applied: bool
    reason: str = ""  # why a curve was not applied, when it was not


def fit_tone(bg: np.ndarray, fg_bg: np.ndarray, valid: np.ndarray | None = None) -> ToneMatch:
    """Curves mapping bg's levels onto fg_bg's (both H×W×3 uint8, the same view), fitted on the
    pixels where `valid` (H×W uint8, 255 where the bg saw the scene; None: everywhere)."""
    for name, img in (("bg", bg), ("fg_bg", fg_bg)):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"tone matching takes 8-bit RGB photos; {name} is {img.dtype} {img.shape}")
    b = _fit_pixels(bg)
    f = _fit_pixels(fg_bg)
    if valid is not None:
        seen = cv2.resize(valid, (FIT_SIDE, FIT_SIDE), interpolation=cv2.INTER_AREA).reshape(-1) == 255
        b, f = b[seen], f[seen]
    if len(b) < 16:
        return ToneMatch(np.tile([0.0, 1.0, 0.0], (3, 1)), 0.0, 0.0, False, "too little of the frame overlaps")
    coefficients = np.array([_fit_channel(b[:, c], f[:, c]) for c in range(3)])
    curves = _curves(coefficients, np.linspace(0.0, 1.0, 256))  # (256, 3): what would be applied
    present = np.arange(256)[:, None]
    low, high = np.percentile(b, [1, 99], axis=0) * 255
    in_photo = (present >= np.floor(low)) & (present <= np.ceil(high))  # the levels the bg holds
    change = float((np.abs(curves * 255 - present) * in_photo).max())
    predicted = np.take_along_axis(curves, np.rint(b * 255).astype(np.intp), 0)
    share = min(_explained(predicted[:, c], f[:, c]) for c in range(3))
    unchanged = min(_explained(b[:, c], f[:, c]) for c in range(3))
    reason = ""
    if change < MIN_CHANGE:
        reason = "the shots already match"
    elif share < MIN_INLIERS:
        reason = f"one curve explains only {share:.0%} of the frame (another scene, or the subject fills it)"
    elif share < unchanged + MIN_GAIN:
        reason = f"a curve explains {share:.0%} of the frame, no change {unchanged:.0%}: no exposure change to undo"
    elif (coefficients[:, 1] + 2 * coefficients[:, 2] * np.median(b, 0) <= 0).any():
        reason = "the curve found falls where most of the photo lies (not a change of exposure or white balance)"
    return ToneMatch(coefficients, change, share, not reason, reason)


def match_tone(bg: np.ndarray, fg_bg: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, ToneMatch]:
    """bg with fg_bg's tone when the fit is trustworthy and not negligible, else bg itself."""
    found = fit_tone(bg, fg_bg, valid)
    if not found.applied:
        return bg, found
    lut = np.rint(_curves(found.coefficients, np.linspace(0.0, 1.0, 256)) * 255).astype(np.uint8)
    return cv2.LUT(np.ascontiguousarray(bg), lut.reshape(256, 1, 3)), found


def _fit_pixels(img: np.ndarray) -> np.ndarray:
    """img area-averaged to FIT_SIDE², as (FIT_SIDE², 3) levels on [0, 1]."""
    small = cv2.resize(img, (FIT_SIDE, FIT_SIDE), interpolation=cv2.INTER_AREA)
    return small.reshape(-1, 3).astype(np.float64) / 255


def _fit_channel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(c0, c1, c2) with y ≈ c0 + c1·x + c2·x² by Tukey-weighted least squares, from the identity
    shifted by the median difference (a uniform offset is then no outlier)."""
    design = np.stack([np.ones_like(x), x, x * x], 1)
    coefficients = np.array([float(np.median(y - x)), 1.0, 0.0])
    for _ in range(ITERATIONS):
        residual = y - design @ coefficients
        centre = float(np.median(residual))
        scale = max(1.4826 * float(np.median(np.abs(residual - centre))), 2.0 / 255)
        u = (residual - centre) / (TUKEY * scale)
        weights = np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
        if np.count_nonzero(weights) < 3:
            break  # nothing left to fit: keep the last curve
        root = np.sqrt(weights)
        coefficients = np.linalg.lstsq(design * root[:, None], y * root, rcond=None)[0]
    return coefficients


def _explained(predicted: np.ndarray, y: np.ndarray) -> float:
    """The share of pixels within INLIER_LEVELS of their predicted level."""
    return float(np.count_nonzero(np.abs(y - predicted) < INLIER_LEVELS / 255) / len(y))


def _curves(coefficients: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The three curves at `levels` (L,) → (L, 3) on [0, 1], never falling as the level rises (past a
    quadratic's peak the shot is saturated: the level stays)."""
    c = coefficients.T[:, None, :]  # (3 terms, 1, 3 channels)
    curves = np.clip(c[0] + c[1] * levels[:, None] + c[2] * levels[:, None] ** 2, 0.0, 1.0)
    return np.maximum.accumulate(curves, axis=0)
