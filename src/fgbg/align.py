"""Register a handheld empty-plate shot (bg) onto the shot with the subject (fg_bg).

Handheld, the camera moves tens of pixels and turns a few degrees between the two shots; the
network compares the shots pixel by pixel, so the bg must first be warped onto the fg_bg's view
(README "Real captures"; Background Matting v1 does the same with a feature homography). Two steps, on gray
copies whose longer side is at most `max_side`:

1. coarse: SIFT features, Lowe's ratio test, RANSAC similarity (estimateAffinePartial2D). The
   subject is new content in fg_bg, so its features find no partner or fall out as outliers. A
   4-parameter model needs few matches; a RANSAC homography from the few matches of a low-texture
   photo sometimes came out with wild perspective (measured: 1 failure in 60 at 192 px, none with
   the similarity, and a lower worst-case error after the fine step);
2. fine: ECC (enhanced correlation coefficient) homography, twice, with a mask that leaves out where
   the warped bg still differs strongly from fg_bg (the subject, its shadow). Handheld motion is a
   homography (a 1.5° pan leaves an affine fit 2 px off), and ECC reaches well under a pixel. ECC
   correlates zero-mean normalised intensities, so an exposure change between the shots does not
   bias it, and the difference mask fits a gain and offset per channel before thresholding.

Then the result is checked: enough inliers, a plausible camera motion (scale near 1, mild
perspective, shift under a quarter of the side), consistency with the feature matches, and
agreement with fg_bg outside the changed region — two different scenes are refused with a reason
rather than warped into nonsense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

MIN_MATCHES = 8  # ratio-test survivors needed before RANSAC is worth running
MIN_INLIERS = 8
MIN_INLIER_RATIO = 0.2
RATIO_TEST = 0.75
RANSAC_PX = 2.5  # reprojection threshold at the working resolution
MAX_SHIFT_FRACTION = 0.25  # of the longer side; more is not one scene shot twice by hand
SCALE_RANGE = (0.8, 1.25)
MAX_ANISOTROPY = 1.15  # ratio of the two singular values of the local linear part
MAX_PERSPECTIVE = 0.1  # |1 − w| at the corners, w the homogeneous coordinate
FEATURE_TOLERANCE_PX = 1.0  # median inlier residual the fine step may reach (working px)
MIN_OVERLAP = 0.5  # of fg_bg covered by the warped bg
MAX_CHANGED = 0.5  # of the overlap that may differ (subject, shadow); more: another scene
MIN_AGREEMENT = 0.8  # correlation of warped bg and fg_bg outside the changed region
ECC_PASSES = (2.0, 1.0)  # blur (px) of the difference mask: looser first, while the coarse error is ~1 px
ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-5)  # 100, 1e-6: same error, slower
ECC_SMOOTHING = 3  # ECC's own Gaussian (1 and 5 measured worse at 192 px)
LUMA_K, LUMA_FLOOR = 6.0, 10.0  # changed: residual > max(k·robust sigma, floor), gray levels
CHROMA_K, CHROMA_FLOOR, CHROMA_BLUR = 6.0, 15.0, 3.0  # chroma is JPEG's noisiest part: blurred, looser
FIT_SAMPLES = 4000
TRIM = 0.6  # share of pixels the tone fit trusts: the scene is most of the frame
CLIP_LEVEL, CLIPPED_FACTOR = 250, 3.0  # near-clipped pixels: changed only when far beyond the threshold
GRID = 17  # points per side of the grid that measures shifts and errors


@dataclass
class Alignment:
    """bg → fg_bg registration and how much to trust it.

    `matrix` maps bg pixel coordinates (x, y, 1) to fg_bg pixel coordinates (pixel centres at
    integers, OpenCV's convention). Shifts are camera motion measured on a grid over the fg_bg
    frame, in fg_bg pixels (a bg of another resolution does not count as shifted); rotation is
    counter-clockwise on screen, like cv2.getRotationMatrix2D. When `ok` is False, `reason` says
    why and `matrix` is the best guess so far (identity-like when there is none).
    """

    matrix: np.ndarray
    shift_px: float  # mean displacement of the grid points
    max_shift_px: float
    rotation_deg: float
    inliers: int
    inlier_ratio: float
    ok: bool
    reason: str = ""
    agreement: float = float("nan")  # correlation of warped bg and fg_bg outside the changed region
    changed_fraction: float = float("nan")  # of the overlap: subject, shadow (left out of ECC)


def estimate_alignment(bg: np.ndarray, fg_bg: np.ndarray, *, max_side: int = 640) -> Alignment:
    """The homography that maps the bg shot onto the fg_bg shot (RGB uint8 H×W×3 each).

    A bg of another size is resized to fg_bg's first (that scale is part of `matrix`). The work
    runs at a longer side of at most `max_side`; `matrix` is at full resolution. Deterministic:
    OpenCV's RNG is seeded before RANSAC.
    """
    _check_rgb(bg, "bg")
    _check_rgb(fg_bg, "fg_bg")
    h, w = fg_bg.shape[:2]
    pre = np.eye(3)
    if bg.shape[:2] != (h, w):
        pre = _resize_matrix(bg.shape[1], bg.shape[0], w, h)
        interp = cv2.INTER_AREA if bg.shape[0] * bg.shape[1] > h * w else cv2.INTER_LINEAR
        bg = cv2.resize(bg, (w, h), interpolation=interp)
    scale = min(1.0, max_side / max(h, w))
    sw, sh = max(16, round(w * scale)), max(16, round(h * scale))
    down = _resize_matrix(w, h, sw, sh)  # full → working resolution
    c_bg, c_fg = _resized(bg, sw, sh), _resized(fg_bg, sw, sh)
    g_bg, g_fg = cv2.cvtColor(c_bg, cv2.COLOR_RGB2GRAY), cv2.cvtColor(c_fg, cv2.COLOR_RGB2GRAY)

    def result(small: np.ndarray | None, inliers: int, ratio: float, reason: str, **extra: float) -> Alignment:
        motion = np.eye(3) if small is None else np.linalg.inv(down) @ small @ down
        motion /= motion[2, 2]
        mean_shift, max_shift = _shifts(motion, w, h)
        return Alignment(
            matrix=motion @ pre,
            shift_px=mean_shift,
            max_shift_px=max_shift,
            rotation_deg=_rotation_deg(motion, w, h),
            inliers=inliers,
            inlier_ratio=ratio,
            ok=not reason,
            reason=reason,
            **extra,
        )

    coarse, inliers, ratio, reason, src, dst = _feature_match(g_bg, g_fg)
    if coarse is None or reason:
        return result(coarse, inliers, ratio, reason)
    reason = _implausible(coarse, sw, sh)
    if reason:
        return result(coarse, inliers, ratio, reason)

    fine = coarse
    for blur in ECC_PASSES:
        keep, inside = _unchanged_mask(c_bg, c_fg, fine, blur)
        changed = 1.0 - keep.sum() / max(1, int(inside.sum()))
        if changed > MAX_CHANGED:
            reason = f"bg and fg_bg differ over {changed:.0%} of their overlap (> {MAX_CHANGED:.0%}): another scene?"
            return result(fine, inliers, ratio, reason, changed_fraction=changed)
        fine = _ecc_refine(g_bg, g_fg, fine, keep)
    reason = _implausible(fine, sw, sh) or _contradicts_features(fine, coarse, src, dst)
    if reason:
        return result(fine, inliers, ratio, reason)
    overlap, changed, agreement = _agreement(c_bg, c_fg, g_bg, g_fg, fine)
    if overlap < MIN_OVERLAP:
        reason = f"the warped bg covers only {overlap:.0%} of fg_bg (< {MIN_OVERLAP:.0%})"
    elif changed > MAX_CHANGED:
        reason = f"bg and fg_bg differ over {changed:.0%} of their overlap (> {MAX_CHANGED:.0%}): another scene?"
    elif agreement < MIN_AGREEMENT:
        reason = f"the warped bg agrees poorly with fg_bg (correlation {agreement:.2f} < {MIN_AGREEMENT})"
    return result(fine, inliers, ratio, reason, agreement=agreement, changed_fraction=changed)


def warp_bg(bg: np.ndarray, alignment: Alignment, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The bg seen from the fg_bg's view, and where that view has real bg content.

    Returns (warped bg of fg_bg's `shape` (H, W[, C]), valid mask uint8 {0,255}). Pixels whose
    source lies outside the bg are filled by replicating the bg's border (so the network sees no
    black frame) and are 0 in the mask, so a caller can leave them out of metrics or decisions.
    """
    if not alignment.ok:
        raise ValueError(f"cannot warp the bg: alignment failed ({alignment.reason})")
    h, w = shape[:2]
    warped = cv2.warpPerspective(bg, alignment.matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = np.full(bg.shape[:2], 255, np.uint8)
    valid = cv2.warpPerspective(inside, alignment.matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    return warped, valid


def is_misaligned(alignment: Alignment, tolerance_px: float) -> bool:
    """True when the shots do not line up within `tolerance_px` everywhere on the frame.

    A failed alignment counts as misaligned: nothing says the shots line up.
    """
    return not alignment.ok or alignment.max_shift_px > tolerance_px


def apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map N×2 points through a 3×3 homography."""
    p = np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]
    return p[:, :2] / p[:, 2:3]


def grid_error_px(estimate: np.ndarray, truth: np.ndarray, bg_size: tuple[int, int], fg_size: tuple[int, int]) -> float:
    """Largest distance (fg_bg px) between where two bg→fg_bg homographies send the same points.

    The points are a grid over the fg_bg frame of `fg_size` (w, h) pulled back through `truth`, kept
    where they land inside the bg of `bg_size` (w, h): the error is measured wherever the bg has
    content for the fg_bg's view, not extrapolated into uncovered corners.
    """
    w, h = fg_size
    target = _grid(w, h)
    source = apply_homography(np.linalg.inv(truth), target)
    bw, bh = bg_size
    inside = (source[:, 0] >= 0) & (source[:, 0] <= bw - 1) & (source[:, 1] >= 0) & (source[:, 1] <= bh - 1)
    if not inside.any():
        return float("inf")
    return float(np.linalg.norm(apply_homography(estimate, source[inside]) - target[inside], axis=1).max())


# ---------------------------------------------------------------- geometry


def _check_rgb(img: np.ndarray, name: str) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"{name} must be an RGB uint8 H×W×3 array, got {got}")
    if min(img.shape[:2]) < 16:
        raise ValueError(f"{name} is too small to align ({img.shape[1]}x{img.shape[0]})")


def _resize_matrix(w0: int, h0: int, w1: int, h1: int) -> np.ndarray:
    """cv2.resize's pixel-centre mapping from w0×h0 to w1×h1: x1 = (x0 + 0.5)·s − 0.5."""
    sx, sy = w1 / w0, h1 / h0
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def _resized(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    return rgb if rgb.shape[:2] == (h, w) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


def _grid(w: int, h: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.linspace(0, w - 1, GRID), np.linspace(0, h - 1, GRID))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _shifts(matrix: np.ndarray, w: int, h: int) -> tuple[float, float]:
    """Mean and max displacement of a grid over the frame (how far the content moved)."""
    pts = _grid(w, h)
    d = np.linalg.norm(apply_homography(matrix, pts) - pts, axis=1)
    return float(d.mean()), float(d.max())


def _jacobian(matrix: np.ndarray, x: float, y: float) -> np.ndarray:
    """Local linear part of the homography at (x, y)."""
    den = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2]
    u = (matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]) / den
    v = (matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]) / den
    return np.array(
        [
            [(matrix[0, 0] - u * matrix[2, 0]) / den, (matrix[0, 1] - u * matrix[2, 1]) / den],
            [(matrix[1, 0] - v * matrix[2, 0]) / den, (matrix[1, 1] - v * matrix[2, 1]) / den],
        ]
    )


def _rotation_deg(matrix: np.ndarray, w: int, h: int) -> float:
    """Rotation at the image centre, counter-clockwise on screen (cv2.getRotationMatrix2D's sign)."""
    j = _jacobian(matrix, (w - 1) / 2, (h - 1) / 2)
    return math.degrees(math.atan2(j[0, 1] - j[1, 0], j[0, 0] + j[1, 1]))


def _implausible(matrix: np.ndarray, w: int, h: int) -> str:
    """Why this homography is not a handheld re-shot of the same scene ('' when plausible)."""
    if not np.all(np.isfinite(matrix)) or abs(matrix[2, 2]) < 1e-12:
        return "degenerate homography"
    matrix = matrix / matrix[2, 2]
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    wts = corners @ matrix[2, :2] + 1.0
    if np.any(wts <= 0) or np.abs(1 - wts).max() > MAX_PERSPECTIVE:
        return f"implausible perspective (corner w {wts.min():.3f}..{wts.max():.3f})"
    for x, y in [*corners.tolist(), [(w - 1) / 2, (h - 1) / 2]]:
        jac = _jacobian(matrix, x, y)
        if np.linalg.det(jac) <= 0:
            return "degenerate homography (mirrored or folded)"
        s = np.linalg.svd(jac, compute_uv=False)
        zoom = math.sqrt(s[0] * s[1])
        if not SCALE_RANGE[0] <= zoom <= SCALE_RANGE[1]:
            return f"implausible scale change ({zoom:.2f}, outside {SCALE_RANGE[0]}..{SCALE_RANGE[1]})"
        if s[0] / s[1] > MAX_ANISOTROPY:
            return f"implausible shear/stretch (singular value ratio {s[0] / s[1]:.2f} > {MAX_ANISOTROPY})"
    _, max_shift = _shifts(matrix, w, h)
    if max_shift > MAX_SHIFT_FRACTION * max(w, h):
        return f"implausible shift ({max_shift:.0f} px > {MAX_SHIFT_FRACTION:.0%} of the {max(w, h)} px side)"
    return ""


# ---------------------------------------------------------------- the two steps


def _feature_match(g_bg: np.ndarray, g_fg: np.ndarray):
    """Coarse similarity from SIFT matches.

    Returns (3×3 matrix or None, inliers, inlier ratio, reason or '', inlier bg points, inlier fg_bg points).
    """
    sift = cv2.SIFT_create(nfeatures=4000)
    k1, d1 = sift.detectAndCompute(g_bg, None)
    k2, d2 = sift.detectAndCompute(g_fg, None)
    if d1 is None or d2 is None or len(k1) < MIN_MATCHES or len(k2) < MIN_MATCHES:
        return None, 0, 0.0, f"too few features ({min(len(k1), len(k2))}; blank or textureless image?)", None, None
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO_TEST * p[1].distance]
    if len(good) < MIN_MATCHES:
        return None, 0, 0.0, f"too few feature matches ({len(good)} < {MIN_MATCHES})", None, None
    src = np.float32([k1[m.queryIdx].pt for m in good])
    dst = np.float32([k2[m.trainIdx].pt for m in good])
    cv2.setRNGSeed(0)
    affine, inl = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX, maxIters=5000, confidence=0.999
    )
    if affine is None or inl is None:
        return None, 0, 0.0, f"no similarity transform fits the {len(good)} matches", None, None
    matrix = np.vstack([affine, [0.0, 0.0, 1.0]])
    inl = inl.ravel().astype(bool)
    inliers = int(inl.sum())
    ratio = inliers / len(good)
    reason = ""
    if inliers < MIN_INLIERS:
        reason = f"too few inliers ({inliers} < {MIN_INLIERS})"
    elif ratio < MIN_INLIER_RATIO:
        reason = f"inlier ratio too low ({ratio:.2f} < {MIN_INLIER_RATIO})"
    return matrix, inliers, ratio, reason, src[inl], dst[inl]


def _contradicts_features(fine: np.ndarray, coarse: np.ndarray, src: np.ndarray, dst: np.ndarray) -> str:
    """Why the intensity fit contradicts the feature matches ('' when it does not).

    ECC can slide into a wrong optimum (a subject it did not fully mask, repetitive texture) while
    its correlation still looks good; the RANSAC inliers are independent evidence.
    """
    before = float(np.median(np.linalg.norm(apply_homography(coarse, src) - dst, axis=1)))
    after = float(np.median(np.linalg.norm(apply_homography(fine, src) - dst, axis=1)))
    if after > max(FEATURE_TOLERANCE_PX, 2.0 * before):
        return f"the fine alignment contradicts the feature matches (median residual {after:.2f} px, was {before:.2f})"
    return ""


def _changed(c_bg: np.ndarray, c_fg: np.ndarray, matrix: np.ndarray, blur: float) -> tuple[np.ndarray, np.ndarray]:
    """(changed, overlap) bool masks in fg_bg coordinates: where fg_bg differs strongly from the warped bg.

    Luma and two opponent-colour channels each get a robust gain/offset fit first (exposure, white
    balance), so only what a gain cannot explain counts; colour too, as a subject can match the
    scene's gray and then pull ECC off (measured: a 5 px error at 256 px with luma alone).
    """
    h, w = c_fg.shape[:2]
    warped = cv2.warpPerspective(c_bg.astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpPerspective(np.ones(c_bg.shape[:2], np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST)
    inside = cv2.erode(inside, np.ones((3, 3), np.uint8)).astype(bool)  # drop the interpolated rim
    changed = np.zeros((h, w), bool)
    if inside.sum() < 100:
        return changed, inside
    fg = c_fg.astype(np.float32)
    # Where either shot clips a channel, a gain no longer explains the other; only a big change counts.
    clipped = (_channel_max(warped) >= CLIP_LEVEL) | (_channel_max(fg) >= CLIP_LEVEL)
    clipped = clipped.astype(np.uint8)
    clipped = cv2.dilate(clipped, np.ones((5, 5), np.uint8)).astype(bool)
    fit = inside & ~clipped if (inside & ~clipped).sum() > 1000 else inside
    sample = np.flatnonzero(fit)
    sample = sample[:: max(1, sample.size // FIT_SAMPLES)]  # a few thousand pixels fit 2 numbers as well
    channels = [
        (cv2.cvtColor(warped, cv2.COLOR_RGB2GRAY), cv2.cvtColor(fg, cv2.COLOR_RGB2GRAY), blur, LUMA_K, LUMA_FLOOR),
        (_red_green(warped), _red_green(fg), max(blur, CHROMA_BLUR), CHROMA_K, CHROMA_FLOOR),
        (_blue_yellow(warped), _blue_yellow(fg), max(blur, CHROMA_BLUR), CHROMA_K, CHROMA_FLOOR),
    ]
    for x_img, y_img, sigma, k, floor in channels:
        if sigma > 0:
            x_img, y_img = cv2.GaussianBlur(x_img, (0, 0), sigma), cv2.GaussianBlur(y_img, (0, 0), sigma)
        a, b, spread = _robust_line(x_img.ravel()[sample], y_img.ravel()[sample])
        residual = np.abs(y_img - (a * x_img + b))
        threshold = max(k * spread, floor)
        changed |= (residual > threshold) & (~clipped | (residual > CLIPPED_FACTOR * threshold))
    return changed & inside, inside


def _channel_max(rgb: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])  # 10× faster than max(axis=2)


def _red_green(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] - rgb[..., 1]


def _blue_yellow(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 2] - 0.5 * (rgb[..., 0] + rgb[..., 1])


def _robust_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """y ≈ a·x + b over the pixels that did not change: (a, b, robust sigma of the residual).

    Least trimmed squares: C-steps that refit on the best-fitting TRIM of the pixels, from several
    gains, keeping the best. Refitting with a sigma cut from all pixels failed when a subject of
    ~20 % covered a flat sky (a bright subject hid inside a sigma of 23 gray levels), and C-steps
    from one start (the quartiles) settled on a flat line.
    """
    n_keep = max(2, int(TRIM * x.size))

    def c_steps(a: float, b: float, steps: int) -> tuple[float, float, float]:
        cost = np.inf
        for _ in range(steps):
            r = np.abs(y - (a * x + b))
            keep = np.argpartition(r, n_keep - 1)[:n_keep]
            cost = float(np.square(r[keep]).mean())
            xu, yu = x[keep], y[keep]
            var = float(xu.var())
            a = float(((xu - xu.mean()) * (yu - yu.mean())).mean() / var) if var > 1e-3 else 1.0
            b = float(yu.mean() - a * xu.mean())
        return cost, a, b

    starts = [c_steps(g, float(np.median(y - g * x)), 3) for g in (0.6, 0.8, 1.0, 1.25, 1.6)]
    _, a, b = c_steps(*min(starts)[1:], 4)
    r = np.abs(y - (a * x + b))
    return a, b, 1.4826 * float(np.median(r))


def _unchanged_mask(
    c_bg: np.ndarray, c_fg: np.ndarray, matrix: np.ndarray, blur: float
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 mask of the overlap minus the changed region grown by ~1% of the side, bool overlap), fg_bg coords."""
    changed, inside = _changed(c_bg, c_fg, matrix, blur)
    changed = changed.astype(np.uint8)
    changed = cv2.morphologyEx(changed, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # thin lines: a 1 px error's edges
    r = max(2, round(0.01 * max(c_fg.shape)))
    changed = cv2.dilate(changed, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return (inside & (changed == 0)).astype(np.uint8), inside


def _ecc_refine(g_bg: np.ndarray, g_fg: np.ndarray, matrix: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Sub-pixel homography by ECC, template = bg and input = fg_bg.

    With that pairing ECC's warp maps bg → fg_bg (our direction), and its input mask lives in fg_bg
    coordinates, where the changed region is known.
    """
    warp = np.ascontiguousarray(matrix / matrix[2, 2], dtype=np.float32)
    try:
        _, warp = cv2.findTransformECC(g_bg, g_fg, warp, cv2.MOTION_HOMOGRAPHY, ECC_CRITERIA, keep, ECC_SMOOTHING)
    except cv2.error as e:
        if e.code != cv2.Error.StsNoConv:
            raise
        return matrix  # did not converge: keep the previous estimate; the checks judge it
    return warp.astype(np.float64) / float(warp[2, 2])


def _agreement(
    c_bg: np.ndarray, c_fg: np.ndarray, g_bg: np.ndarray, g_fg: np.ndarray, matrix: np.ndarray
) -> tuple[float, float, float]:
    """(overlap fraction of fg_bg, changed fraction of the overlap, correlation outside the changed region)."""
    h, w = g_fg.shape
    keep, inside = _unchanged_mask(c_bg, c_fg, matrix, 1.0)
    keep = keep.astype(bool)
    overlap = float(inside.mean())
    changed = 1.0 - keep.sum() / max(1, int(inside.sum()))
    if keep.sum() < 100:
        return overlap, float(changed), 0.0
    warped = cv2.warpPerspective(g_bg.astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)
    x, y = warped[keep], g_fg.astype(np.float32)[keep]
    sx, sy = float(x.std()), float(y.std())
    corr = float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy)) if sx > 1e-3 and sy > 1e-3 else 0.0
    return overlap, float(changed), corr
