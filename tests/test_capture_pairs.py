"""fgbg.capture_pairs: seeded real-photo pairs whose conditions differ from the clean composite
by exactly their perturbation, with truthful masks and camera matrices."""

from __future__ import annotations

import math
import zlib

import cv2
import numpy as np
import pytest

import fgbg.capture_pairs as cp
from fgbg.align import estimate_alignment, grid_error_px
from fgbg.capture_pairs import CONDITIONS, CapturePair, capture_pairs, pairs_sheet, real_photos

SIZE = 192
PHOTOS = real_photos()


def _pairs(seed: int = 0, per_photo: int = 1, **kwargs) -> dict[tuple[str, str], CapturePair]:
    pairs = capture_pairs(PHOTOS, per_photo=per_photo, size=SIZE, seed=seed, **kwargs)
    return {(p.name, p.condition): p for p in pairs}


@pytest.fixture(scope="module")
def pairs() -> dict[tuple[str, str], CapturePair]:
    return _pairs(seed=0, per_photo=2)


def _names(pairs) -> list[str]:
    return sorted({name for name, _ in pairs})


def test_real_photos_are_the_packaged_photographs():
    names = [name for name, _ in PHOTOS]
    assert names == ["china", "flower", "grace_hopper"]
    for _, photo in PHOTOS:
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3 and min(photo.shape[:2]) >= 427
        assert photo.std() > 30  # a photograph, not a flat placeholder


def test_every_object_comes_in_every_condition(pairs):
    assert len(pairs) == 3 * 2 * len(CONDITIONS)
    for name in _names(pairs):
        for condition in CONDITIONS:
            p = pairs[name, condition]
            assert p.bg.shape == p.fg_bg.shape == (SIZE, SIZE, 3) and p.mask.shape == (SIZE, SIZE)
            assert p.bg.dtype == p.fg_bg.dtype == p.mask.dtype == np.uint8
            assert set(np.unique(p.mask)) == {0, 255}
            assert np.array_equal(p.mask, pairs[name, "clean"].mask)  # one composite, one mask
            assert p.true_matrix.shape == (3, 3)


def test_same_seed_gives_identical_pairs_and_another_seed_does_not(pairs):
    again = _pairs(seed=0, per_photo=2)
    assert again.keys() == pairs.keys()
    for key, p in pairs.items():
        q = again[key]
        assert np.array_equal(p.bg, q.bg) and np.array_equal(p.fg_bg, q.fg_bg) and np.array_equal(p.mask, q.mask)
        assert np.array_equal(p.true_matrix, q.true_matrix)
    other = _pairs(seed=1, conditions=("clean",))
    assert not np.array_equal(other["china_o0", "clean"].mask, pairs["china_o0", "clean"].mask)


def test_a_pair_does_not_depend_on_the_conditions_asked_for(pairs):
    """Each draw has its own stream: asking for one condition gives the same pair as asking for all."""
    alone = _pairs(seed=0, per_photo=2, conditions=("tripod",))
    for (name, condition), p in alone.items():
        assert np.array_equal(p.bg, pairs[name, condition].bg)
        assert np.array_equal(p.fg_bg, pairs[name, condition].fg_bg)


def test_clean_pair_is_identical_outside_the_object_and_different_inside(pairs):
    for name in _names(pairs):
        p = pairs[name, "clean"]
        fringe = cv2.dilate(p.mask, np.ones((7, 7), np.uint8))  # the feathered edge reaches past alpha 0.5
        assert np.array_equal(p.bg[fringe == 0], p.fg_bg[fringe == 0])
        inside = p.mask > 0
        assert np.abs(p.bg.astype(int) - p.fg_bg.astype(int)).max(axis=2)[inside].mean() > 10
        assert np.array_equal(p.true_matrix, np.eye(3))


def test_objects_cover_10_to_30_percent_fully_inside_mostly_low():
    clean = _pairs(seed=5, per_photo=10, conditions=("clean",))
    low = 0
    for p in clean.values():
        fraction = (p.mask > 0).mean()
        assert 0.10 <= fraction <= 0.30 and p.info["object_fraction"] == pytest.approx(fraction)
        assert not (p.mask[0].any() or p.mask[-1].any() or p.mask[:, 0].any() or p.mask[:, -1].any())
        rows = np.flatnonzero(p.mask.any(axis=1))
        low += (rows[0] + rows[-1]) / 2 >= (SIZE - 1) / 2
    assert low >= 0.7 * len(clean)  # 0.8 + 0.2 · ½ expected; anywhere-placement gives ½


def test_shadow_only_darkens_outside_the_object_and_stays_out_of_the_mask(pairs):
    for name in _names(pairs):
        clean, shadow = pairs[name, "clean"], pairs[name, "shadow"]
        assert np.array_equal(shadow.bg, clean.bg) and np.array_equal(shadow.mask, clean.mask)
        darker = clean.fg_bg.astype(int) - shadow.fg_bg.astype(int)
        outside = shadow.mask == 0
        assert darker[outside].min() >= 0  # never brighter
        shaded = (darker.max(axis=2) >= 5) & outside
        assert shaded.mean() > 0.005  # a visible shadow on the scene


def test_shift_moves_only_the_bg_within_tripod_limits(pairs):
    for name in _names(pairs):
        clean, shift = pairs[name, "clean"], pairs[name, "shift"]
        assert np.array_equal(shift.fg_bg, clean.fg_bg) and np.array_equal(shift.mask, clean.mask)
        assert np.abs(shift.bg.astype(int) - clean.bg.astype(int)).mean() > 0.3
        m = shift.true_matrix
        c = (SIZE - 1) / 2
        centre_shift = np.hypot(*(m[:2, :2] @ [c, c] + m[:2, 2] - [c, c]))
        assert centre_shift <= 1.5 + 1e-9
        assert abs(math.degrees(math.atan2(m[0, 1], m[0, 0]))) <= 0.5 + 1e-9
        # the matrix is truthful: warping the moved bg back onto the fg_bg's view restores the clean bg
        back = cv2.warpPerspective(shift.bg, m, (SIZE, SIZE), flags=cv2.INTER_CUBIC)
        inner = (slice(8, -8), slice(8, -8))
        restored = np.abs(back[inner].astype(int) - clean.bg[inner].astype(int)).mean()
        moved = np.abs(shift.bg[inner].astype(int) - clean.bg[inner].astype(int)).mean()
        assert restored < 0.5 * moved


def test_light_changes_only_the_bg_by_its_field(pairs):
    """The light pair is the clean pair with only the bg relit: bg / clean bg follows the drawn
    field (up to 8-bit rounding), which spans the drawn change."""
    for name in _names(pairs):
        clean, light = pairs[name, "clean"], pairs[name, "light"]
        assert np.array_equal(light.fg_bg, clean.fg_bg) and np.array_equal(light.mask, clean.mask)
        assert np.array_equal(light.true_matrix, np.eye(3))
        bright = clean.bg.astype(float).mean(axis=2)
        lit = bright > 40  # rounding makes dark pixels' ratios noisy
        log_ratio = np.log(light.bg.astype(float).mean(axis=2) + 0.5) - np.log(bright + 0.5)
        largest = light.info["light_change"]
        assert cp.LIGHT_CHANGE[0] <= largest <= cp.LIGHT_CHANGE[1]
        assert np.abs(log_ratio[lit]).max() <= largest + 0.03
        assert np.abs(log_ratio[lit]).max() >= 0.5 * largest  # the change reaches the bg


def test_light_field_is_smooth_uneven_and_within_its_drawn_change():
    """Not one exposure (mean log gain 0, a spread of the drawn size) and smooth: no step between
    neighbouring pixels near what a hard edge would make."""
    size = 192
    for seed in range(40):
        field, info = cp._light_field(size, np.random.default_rng(seed))
        log_gain, amount = np.log(field.astype(np.float64)), info["light_change"]
        assert abs(log_gain.mean()) < 1e-3
        assert np.abs(log_gain).max() == pytest.approx(amount, rel=1e-4)
        assert np.ptp(np.percentile(log_gain, [5, 95])) > 0.3 * amount  # uneven across the frame
        steepest = max(np.abs(np.diff(log_gain, axis=a)).max() for a in (0, 1))
        assert steepest < 16 * amount / size  # smooth fields reach ~8; a 20 % step would be ~100 times more


def _drawn_motion(name: str) -> np.ndarray:
    """The flow the generator drew for the composite `name` ("<photo>_o<k>"), from its own stream."""
    photo, k = name.rsplit("_o", 1)
    return cp._scene_motion(SIZE, cp._Streams(0, zlib.crc32(photo.encode()), int(k))(cp._MOTION))[0]


def test_motion_moves_only_the_bg_and_only_where_the_scene_moved(pairs):
    """The motion pair is the clean pair with the bg displaced by the drawn flow: exact where the
    scene stood still, changed where it moved, fg_bg and mask untouched."""
    for name in _names(pairs):
        clean, motion = pairs[name, "clean"], pairs[name, "motion"]
        assert np.array_equal(motion.fg_bg, clean.fg_bg) and np.array_equal(motion.mask, clean.mask)
        assert np.array_equal(motion.true_matrix, np.eye(3))
        assert cp.SCENE_MOTION_PX[0] <= motion.info["motion_px"] <= cp.SCENE_MOTION_PX[1]
        flow = _drawn_motion(name)
        displacement = np.hypot(flow[..., 0], flow[..., 1])
        diff = np.abs(motion.bg.astype(int) - clean.bg.astype(int)).max(axis=2)
        still = displacement == 0
        assert still.any() and not diff[still].any()
        redone = cp._move_scene(clean.bg.astype(np.float32), flow)  # the clean bg moved by the drawn flow
        assert np.abs(redone - motion.bg).max() <= 2  # 8-bit rounding of the two views
        assert diff[displacement > 0].max() > 2  # the scene did move where the flow says


def test_scene_motion_is_smooth_local_and_within_its_drawn_size():
    """The flow's largest displacement is the drawn one; it varies over many pixels (leaves and
    ripples, not a torn image) and leaves part of the frame exactly still (on average a third or more)."""
    size, still = 192, []
    for seed in range(40):
        flow, info = cp._scene_motion(size, np.random.default_rng(seed))
        displacement = np.hypot(flow[..., 0], flow[..., 1])
        assert displacement.max() == pytest.approx(info["motion_px"], rel=1e-4)
        steepest = max(np.abs(np.diff(flow, axis=a)).max() for a in (0, 1))
        assert steepest < 4 * info["motion_px"] * cp.SCENE_MOTION_CELLS / size  # smooth fields reach ~2.5
        still.append((displacement == 0).mean())
    assert min(still) > 0 and np.mean(still) > 0.3


def test_photometric_shots_differ_in_exposure_colour_and_noise(pairs):
    for name in _names(pairs):
        clean, photo = pairs[name, "clean"], pairs[name, "photometric"]
        assert np.array_equal(photo.mask, clean.mask) and np.array_equal(photo.true_matrix, np.eye(3))
        out = cv2.dilate(clean.mask, np.ones((7, 7), np.uint8)) == 0
        bg, fg = photo.bg[out].astype(float), photo.fg_bg[out].astype(float)
        ratio = fg.mean(axis=0) / bg.mean(axis=0)
        assert np.abs(ratio - 1).max() > 0.01  # exposure / white balance differ between the shots
        assert np.ptp(ratio) > 0.002  # ... and not by one gain for all channels
        assert np.abs(photo.bg.astype(int) - clean.bg.astype(int)).mean() > 1
        assert np.abs(photo.fg_bg.astype(int) - clean.fg_bg.astype(int)).mean() > 1
        cam_bg, cam_fg = photo.info["camera_bg"], photo.info["camera_fg_bg"]
        assert cam_bg != cam_fg


def test_tripod_combines_shift_photometric_and_shadow(pairs):
    for name in _names(pairs):
        tripod, shift, photo, shadow = (pairs[name, c] for c in ("tripod", "shift", "photometric", "shadow"))
        assert np.array_equal(tripod.true_matrix, shift.true_matrix)
        assert tripod.info["camera_bg"] == photo.info["camera_bg"]
        assert tripod.info["shadow_strength"] == shadow.info["shadow_strength"]
        assert not np.array_equal(tripod.bg, photo.bg) and not np.array_equal(tripod.fg_bg, photo.fg_bg)


def test_handheld_pair_is_recovered_by_align_within_half_a_pixel(pairs):
    for name in _names(pairs):
        p = pairs[name, "handheld"]
        m = p.true_matrix
        c = (SIZE - 1) / 2
        assert 10 - 1e-9 <= np.hypot(*p.info["shift_px"]) <= 20 + 1e-9
        assert 2 <= abs(p.info["rotation_deg"]) <= 4
        assert np.abs(m[2, :2]).max() > 0  # pan/tilt: a homography, not an affine map
        a = estimate_alignment(p.bg, p.fg_bg)
        assert a.ok, f"{name}: {a.reason}"
        assert grid_error_px(a.matrix, m, (SIZE, SIZE), (SIZE, SIZE)) < 0.5, name
        assert np.hypot(*(m[:2, :2] @ [c, c] + m[:2, 2] - [c, c])) > 5  # a real move, not a nudge


def test_largest_handheld_motion_stays_inside_the_scene():
    """The margin must cover the extreme draw, so a bg never shows a replicated or black border."""
    for _, photo in PHOTOS:
        camera = cp._Camera(photo, SIZE, cp._margin(SIZE))
        for deg in (-4.0, 4.0):
            for pan in (-1.0, 1.0):
                for tilt in (-1.0, 1.0):
                    for phi in np.linspace(0, 2 * np.pi, 8, endpoint=False):
                        dx, dy = 20 * np.cos(phi), 20 * np.sin(phi)
                        m = cp._rotation_about_centre(SIZE, deg, dx, dy) @ cp._pan_tilt(SIZE, pan, tilt)
                        camera.shot(m / m[2, 2])  # raises when the motion leaves the scene
    camera = cp._Camera(PHOTOS[0][1], SIZE, 2)
    with pytest.raises(RuntimeError, match="margin"):
        camera.shot(cp._rotation_about_centre(SIZE, 4.0, 20.0, 0.0))


def test_user_objects_replace_the_procedural_ones():
    disk = np.zeros((90, 120, 4), np.uint8)
    cv2.ellipse(disk, (60, 45), (55, 40), 0, 0, 360, (30, 200, 90, 255), -1, cv2.LINE_AA)
    got = _pairs(seed=2, objects=[disk], conditions=("clean",))
    for p in got.values():
        fraction = (p.mask > 0).mean()
        assert 0.10 <= fraction <= 0.30
        colour = p.fg_bg[cv2.erode(p.mask, np.ones((5, 5), np.uint8)) > 0].astype(int)
        assert np.abs(colour - [30, 200, 90]).max() <= 2  # the user's pixels, not a procedural texture
        ys, xs = np.nonzero(p.mask)
        assert np.ptp(xs) / np.ptp(ys) == pytest.approx(55 / 40, rel=0.08)  # the ellipse's own shape


def test_bad_arguments_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="unknown condition"):
        list(capture_pairs(PHOTOS, per_photo=1, size=SIZE, seed=0, conditions=("sunny",)))
    with pytest.raises(ValueError, match="RGBA"):
        list(capture_pairs(PHOTOS, per_photo=1, size=SIZE, seed=0, objects=[np.zeros((9, 9, 3), np.uint8)]))
    with pytest.raises(ValueError, match="no opaque"):
        list(capture_pairs(PHOTOS, per_photo=1, size=SIZE, seed=0, objects=[np.zeros((9, 9, 4), np.uint8)]))
    with pytest.raises(ValueError, match="RGB uint8"):
        list(capture_pairs([("gray", np.zeros((300, 300), np.uint8))], per_photo=1, size=SIZE, seed=0))


def test_pairs_sheet_tiles_one_row_per_pair(pairs):
    chosen = [pairs["china_o0", c] for c in CONDITIONS]
    sheet = pairs_sheet(chosen)
    n = len(CONDITIONS)
    assert sheet.shape == (n * SIZE + (n - 1) * 2, 4 * SIZE + 3 * 2, 3) and sheet.dtype == np.uint8
