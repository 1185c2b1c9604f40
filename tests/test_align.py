"""fgbg.align on real photos: a known handheld motion is recovered to sub-pixel accuracy, and pairs
that are not one scene shot twice are refused with a reason."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from matplotlib import cbook  # grace_hopper.jpg (a core dependency, like scikit-learn)
from sklearn import datasets  # the real photos china.jpg and flower.jpg

from fgbg.align import Alignment, _contradicts_features, estimate_alignment, grid_error_px, is_misaligned, warp_bg


def _photo(name: str) -> np.ndarray:
    if name == "grace_hopper":
        from PIL import Image

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            return np.asarray(im.convert("RGB")).copy()
    return np.ascontiguousarray(datasets.load_sample_image(f"{name}.jpg"))


PHOTOS = {name: _photo(name) for name in ("china", "flower", "grace_hopper")}


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _handheld_pair(photo: np.ndarray, texture: np.ndarray, seed: int = 0, *, dx=12.3, dy=-7.6, degrees=2.5):
    """(bg, fg_bg, true bg→fg_bg matrix): the photo moved by warpAffine, an object covering ~12 %
    pasted on it, a brightness/contrast change, noise and JPEG on both shots."""
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    m[:, 2] += (dx, dy)
    fg_bg = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    # an irregular polygon, anti-aliased, textured with another photo
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radius = math.sqrt(0.12 * h * w / np.pi) * rng.uniform(0.85, 1.25, 9)
    centre = (0.6 * w, 0.6 * h)
    pts = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1)
    alpha = np.zeros((h, w), np.uint8)
    cv2.fillPoly(alpha, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    a = cv2.GaussianBlur(alpha, (0, 0), 1.0).astype(np.float32)[..., None] / 255
    fg_bg = fg_bg * (1 - a) + cv2.resize(texture, (w, h)).astype(np.float32) * a
    fg_bg = fg_bg * 1.12 - 6 + rng.normal(0, 3, fg_bg.shape)  # exposure change, sensor noise
    bg = photo.astype(np.float32) + rng.normal(0, 3, photo.shape)
    bg, fg_bg = (_jpeg(np.clip(x, 0, 255).round().astype(np.uint8), q) for x, q in ((bg, 90), (fg_bg, 80)))
    return bg, fg_bg, np.vstack([m, [0, 0, 1]]), (alpha >= 128).mean()


@pytest.mark.parametrize("name", ["china", "flower", "grace_hopper"])
def test_recovers_handheld_motion_within_half_a_pixel(name):
    other = PHOTOS["china" if name != "china" else "flower"]
    bg, fg_bg, truth, covered = _handheld_pair(PHOTOS[name], other)
    assert 0.10 <= covered <= 0.15
    a = estimate_alignment(bg, fg_bg)
    assert a.ok, a.reason
    size = (fg_bg.shape[1], fg_bg.shape[0])
    assert grid_error_px(a.matrix, truth, size, size) < 0.5
    assert a.rotation_deg == pytest.approx(2.5, abs=0.05)  # cv2.getRotationMatrix2D's sign
    assert a.shift_px > 10 and is_misaligned(a, 1.0)
    assert a.inliers >= 50 and a.inlier_ratio > 0.5


def test_recovers_the_perspective_of_a_turned_camera():
    """Pan and tilt of 1.5° make a homography, which no similarity or affine fit matches to 0.5 px."""
    photo = PHOTOS["grace_hopper"]
    h, w = photo.shape[:2]
    f = 0.9 * max(w, h)
    k = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    pan, tilt = np.radians([1.5, -1.5])
    ry = np.array([[np.cos(pan), 0, np.sin(pan)], [0, 1, 0], [-np.sin(pan), 0, np.cos(pan)]])
    rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    turn = k @ ry @ rx @ np.linalg.inv(k)
    bg, fg_bg, similarity, _ = _handheld_pair(photo, PHOTOS["china"], seed=1, dx=-15.0, dy=9.0, degrees=-2.0)
    truth = similarity @ turn
    truth /= truth[2, 2]
    fg_bg = cv2.warpPerspective(bg, truth, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    fg_bg[int(0.55 * h) :, int(0.3 * w) : int(0.7 * w)] = PHOTOS["china"][
        : h - int(0.55 * h), : int(0.7 * w) - int(0.3 * w)
    ]
    a = estimate_alignment(bg, fg_bg)
    assert a.ok, a.reason
    assert grid_error_px(a.matrix, truth, (w, h), (w, h)) < 0.5
    assert grid_error_px(similarity, truth, (w, h), (w, h)) > 3  # the perspective is not negligible


def test_alignment_is_deterministic():
    bg, fg_bg, _, _ = _handheld_pair(PHOTOS["grace_hopper"], PHOTOS["flower"], seed=3)
    first, second = estimate_alignment(bg, fg_bg), estimate_alignment(bg, fg_bg)
    assert np.array_equal(first.matrix, second.matrix) and first.inliers == second.inliers


def test_identical_shots_have_no_shift():
    photo = PHOTOS["china"]
    a = estimate_alignment(photo, photo)
    assert a.ok, a.reason
    assert a.shift_px < 0.05 and a.max_shift_px < 0.1 and abs(a.rotation_deg) < 0.01
    assert not is_misaligned(a, 0.5)


def test_works_at_working_resolution_and_scales_back():
    """A 2× photo is aligned on a 640 px copy; the matrix and its error are at full resolution."""
    big = cv2.resize(PHOTOS["flower"], None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    bg, fg_bg, truth, _ = _handheld_pair(big, PHOTOS["china"], dx=25.0, dy=18.0, degrees=-3.0)
    a = estimate_alignment(bg, fg_bg, max_side=640)
    assert a.ok, a.reason
    size = (fg_bg.shape[1], fg_bg.shape[0])
    assert grid_error_px(a.matrix, truth, size, size) < 1.0  # 0.5 px at the working scale
    assert a.rotation_deg == pytest.approx(-3.0, abs=0.05)


def test_bg_of_another_resolution_is_resized_into_the_matrix():
    photo = PHOTOS["china"]
    h, w = photo.shape[:2]
    big_bg = cv2.resize(photo, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)
    a = estimate_alignment(big_bg, photo)
    assert a.ok, a.reason
    half = np.array([[0.5, 0, -0.25], [0, 0.5, -0.25], [0, 0, 1]])  # cv2.resize's pixel centres
    assert grid_error_px(a.matrix, half, (2 * w, 2 * h), (w, h)) < 0.1
    assert a.shift_px < 0.1  # a resolution change is not camera motion
    warped, valid = warp_bg(big_bg, a, photo.shape)
    assert warped.shape == photo.shape and valid.min() == 255


@pytest.mark.parametrize(("bg_name", "fg_name"), [("china", "flower"), ("flower", "china"), ("grace_hopper", "china")])
def test_different_scenes_are_refused_with_a_reason(bg_name, fg_name):
    fg_bg = PHOTOS[fg_name]
    bg = cv2.resize(PHOTOS[bg_name], (fg_bg.shape[1], fg_bg.shape[0]))
    a = estimate_alignment(bg, fg_bg)
    assert not a.ok and a.reason
    assert is_misaligned(a, 100.0)
    with pytest.raises(ValueError, match="alignment failed"):
        warp_bg(bg, a, fg_bg.shape)


@pytest.mark.parametrize("rows", [230, 260, 300])
def test_scene_mostly_replaced_is_refused(rows):
    """Same photo below, another above: the features match but most of the frame disagrees.
    (Each size trips a different check: the changed area, the feature residual, the correlation.)"""
    bg = PHOTOS["china"]
    fg_bg = bg.copy()
    fg_bg[:rows] = PHOTOS["flower"][:rows]
    a = estimate_alignment(bg, fg_bg)
    assert not a.ok and a.reason


@pytest.mark.parametrize(
    ("matrix", "reason"),
    [
        (cv2.getRotationMatrix2D((320, 213), 0, 1.5), "scale"),
        (np.float32([[1, 0, 200], [0, 1, 0]]), "shift"),
        (cv2.getRotationMatrix2D((320, 213), 40, 1.0), "shift"),
    ],
)
def test_implausible_camera_motion_is_refused(matrix, reason):
    photo = PHOTOS["china"]
    moved = cv2.warpAffine(photo, matrix, (photo.shape[1], photo.shape[0]), borderMode=cv2.BORDER_REFLECT)
    a = estimate_alignment(photo, moved)
    assert not a.ok and reason in a.reason


def test_blank_image_is_refused():
    photo = PHOTOS["china"]
    a = estimate_alignment(np.full_like(photo, 128), photo)
    assert not a.ok and "features" in a.reason


def test_warp_bg_lines_up_and_marks_pixels_from_outside_the_bg():
    bg, fg_bg, truth, _ = _handheld_pair(PHOTOS["china"], PHOTOS["flower"])
    a = estimate_alignment(bg, fg_bg)
    warped, valid = warp_bg(bg, a, fg_bg.shape)
    assert warped.shape == fg_bg.shape and warped.dtype == np.uint8
    assert set(np.unique(valid)) == {0, 255}
    ones = np.full(bg.shape[:2], 255, np.uint8)
    expected = cv2.warpPerspective(ones, truth, (bg.shape[1], bg.shape[0]), flags=cv2.INTER_NEAREST)
    assert 0.03 < np.mean(expected == 0) and np.mean(valid != expected) < 0.001  # the uncovered border, to a pixel
    # inside the valid area and away from the object, the aligned bg matches fg_bg (up to the
    # exposure change) as well as the bg warped by the true motion does; the unaligned bg does not
    inner = cv2.erode(valid, np.ones((5, 5), np.uint8)) > 0
    inner[int(0.35 * bg.shape[0]) :, int(0.35 * bg.shape[1]) :] = False  # the object's quarter
    exact = cv2.warpPerspective(bg, truth, (bg.shape[1], bg.shape[0]), flags=cv2.INTER_LINEAR)

    def error(img: np.ndarray) -> float:
        gray = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float32) for x in (img, fg_bg)]
        return float(np.abs(gray[0] * 1.12 - 6 - gray[1])[inner].mean())

    assert error(warped) < error(exact) + 0.2
    assert error(bg) > 3 * error(warped)
    # pixels from outside the bg repeat its border pixel (no black frame)
    ys, xs = np.nonzero(valid == 0)
    src = cv2.perspectiveTransform(np.float64([np.stack([xs, ys], 1)]), np.linalg.inv(a.matrix))[0]
    cx = np.clip(np.round(src[:, 0]), 0, bg.shape[1] - 1).astype(int)
    cy = np.clip(np.round(src[:, 1]), 0, bg.shape[0] - 1).astype(int)
    assert np.abs(warped[ys, xs].astype(float) - bg[cy, cx]).mean() < 10


def test_fine_step_that_contradicts_the_feature_matches_is_caught():
    src = np.float32([[x, y] for x in range(0, 200, 20) for y in range(0, 150, 15)])
    coarse = np.eye(3)
    nudged = np.array([[1, 0, 0.3], [0, 1, -0.2], [0, 0, 1.0]])
    slid = np.array([[1, 0, 2.5], [0, 1, 1.5], [0, 0, 1.0]])
    assert _contradicts_features(nudged, coarse, src, src) == ""
    assert "contradicts the feature matches" in _contradicts_features(slid, coarse, src, src)


def test_is_misaligned_uses_the_largest_shift():
    a = Alignment(np.eye(3), shift_px=0.3, max_shift_px=0.8, rotation_deg=0.0, inliers=100, inlier_ratio=0.9, ok=True)
    assert is_misaligned(a, 0.5) and not is_misaligned(a, 1.0)
    a.ok, a.reason = False, "too few inliers"
    assert is_misaligned(a, 1.0)


def test_rejects_arrays_that_are_not_rgb_uint8():
    photo = PHOTOS["china"]
    with pytest.raises(ValueError, match="fg_bg must be an RGB uint8"):
        estimate_alignment(photo, photo[..., 0])
    with pytest.raises(ValueError, match="bg must be an RGB uint8"):
        estimate_alignment(photo.astype(np.float32), photo)
