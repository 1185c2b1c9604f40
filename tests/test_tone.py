"""fgbg.tone: the bg shot given the fg_bg shot's exposure, gamma and white balance, on real photos,
without the subject pulling the curve and without touching pairs that already match."""

from __future__ import annotations

import numpy as np
import pytest

from fgbg.capture_pairs import real_photos
from fgbg.predict import align_bg
from fgbg.tone import MIN_CHANGE, match_tone


def _shot(photo: np.ndarray, gain=(1.25, 1.1, 0.92), gamma=0.9, offset=0.02) -> np.ndarray:
    """The same view with another exposure, white balance, gamma and black level."""
    x = photo.astype(np.float64) / 255
    return np.round(np.clip(np.array(gain) * x**gamma + offset, 0, 1) * 255).astype(np.uint8)


def _with_object(img: np.ndarray, box=(slice(60, 200), slice(90, 260))) -> tuple[np.ndarray, np.ndarray]:
    """img with a flat green object pasted in (a fifth of the frame), and the object's mask."""
    out, mask = img.copy(), np.zeros(img.shape[:2], bool)
    out[box], mask[box] = (40, 200, 90), True
    return out, mask


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [photo[:320, :320] for _, photo in real_photos()]


def test_a_drifted_exposure_and_white_balance_is_matched_outside_the_object(photos):
    for bg in photos:
        truth = _shot(bg)
        fg_bg, obj = _with_object(truth)
        matched, found = match_tone(bg, fg_bg)
        assert found.applied and found.change > 20
        before = np.abs(bg.astype(int) - truth)[~obj].mean()
        after = np.abs(matched.astype(int) - truth)[~obj].mean()
        assert before > 15 and after < 2.5  # levels, 8-bit; the curve is smooth, the true one a power
        assert matched.dtype == np.uint8 and matched.shape == bg.shape


def test_a_uniform_offset_is_matched_even_on_a_plain_backdrop(photos):
    """A black-level shift moves every pixel by the same amount: no pixel may look like an outlier
    of the identity (the fit starts from the median difference), even where the scene is plain."""
    yy, xx = np.mgrid[0:192, 0:288]
    backdrop = np.stack([60 + yy // 4, 90 + xx // 8, 120 + 0 * xx], -1).astype(np.uint8)
    for bg in (backdrop, photos[1][:192, :288]):
        for offset in (25, 40):
            fg_bg = np.clip(bg.astype(int) + offset, 0, 255).astype(np.uint8)
            matched, found = match_tone(bg, fg_bg)
            assert found.applied and np.abs(matched.astype(int) - fg_bg).mean() < 1.0, (offset, found)


def test_the_object_does_not_pull_the_curve(photos):
    for bg in photos:
        truth = _shot(bg)
        fg_bg, obj = _with_object(truth)
        with_object, _ = match_tone(bg, fg_bg)
        without, _ = match_tone(bg, truth)
        drift = np.abs(bg.astype(int) - truth)[~obj].mean()
        assert np.abs(with_object.astype(int) - without)[~obj].mean() < 0.1 * drift


def test_a_pair_that_already_matches_keeps_its_bg_byte_for_byte(photos):
    bg = photos[1]
    fg_bg, _ = _with_object(bg)  # identical outside the object: an exact pair, a locked camera
    matched, found = match_tone(bg, fg_bg)
    assert matched is bg and not found.applied and found.change < MIN_CHANGE
    assert "already match" in found.reason


def test_a_camera_nudge_alone_is_not_read_as_an_exposure_change():
    """Edges moved by 1–1.5 px differ a lot pixel by pixel; no curve explains them better than
    no change, so the bg stays as shot (the network was trained to tolerate the nudge)."""
    from fgbg.capture_pairs import capture_pairs

    for pair in capture_pairs(real_photos(), per_photo=4, size=192, seed=0, conditions=("shift",)):
        matched, found = match_tone(pair.bg, pair.fg_bg)
        assert matched is pair.bg and not found.applied, (pair.name, found)


def test_a_subject_filling_most_of_the_frame_leaves_the_bg_as_shot(photos):
    """Beyond the robust fit's breakdown (the subject on 60 % of the frame) no curve is trusted: the
    bg stays as shot rather than taking a curve fitted to the subject; at 40 % the fit still holds."""
    for share, trusted in ((0.4, True), (0.6, False)):
        side = int(320 * share**0.5)
        for i, bg in enumerate(photos):
            truth = _shot(bg)
            fg_bg = truth.copy()
            fg_bg[:side, :side] = photos[(i + 1) % 3][:side, :side]  # a textured subject
            matched, found = match_tone(bg, fg_bg)
            assert found.applied is trusted and (matched is not bg) is trusted, (share, i, found)


def test_another_scene_is_left_as_shot_with_the_reason(photos):
    china, flower, _ = photos
    matched, found = match_tone(china, flower)
    assert matched is china and not found.applied and found.reason


def test_only_the_pixels_the_bg_saw_are_fitted(photos):
    """After a handheld warp part of the frame holds no bg (align_bg fills it from fg_bg later):
    those pixels must not bend the curve."""
    bg = photos[2]
    truth = _shot(bg)
    garbage = bg.copy()
    garbage[:, :190] = 255 - garbage[:, :190]  # 60 % of the frame is nothing like the scene
    valid = np.zeros(bg.shape[:2], np.uint8)
    valid[:, 190:] = 255
    _, blind = match_tone(garbage, truth)
    matched, seen = match_tone(garbage, truth, valid)
    assert not blind.applied  # a curve for the whole frame explains too little of it
    assert seen.applied and np.abs(matched.astype(int) - truth)[:, 190:].mean() < 2.5


def test_align_bg_matches_the_tone_after_warping_and_fills_the_uncovered_part_from_fg_bg(photos, monkeypatch):
    from fgbg import tone
    from fgbg.capture_pairs import capture_pairs

    fitted_on = []
    real_match = tone.match_tone

    def spy(bg, fg_bg, valid=None):
        fitted_on.append(valid)
        return real_match(bg, fg_bg, valid)

    monkeypatch.setattr(tone, "match_tone", spy)

    pair = next(capture_pairs(real_photos()[:1], per_photo=1, size=192, seed=3, conditions=("handheld",)))
    fg_bg = _shot(pair.fg_bg)  # the handheld shot also drifted in exposure
    warped, report = align_bg(pair.bg, fg_bg, "always", 0.0, 192, "a, b")
    plain, plain_report = align_bg(pair.bg, fg_bg, "always", 0.0, 192, "a, b", match_tone=False)
    assert report.aligned and report.tone_matched and report.tone_change > 20
    assert not plain_report.tone_matched and plain_report.tone_change is None
    outside = (pair.mask == 0) & (warped != fg_bg).any(-1)  # not the uncovered border (fg_bg itself)
    assert np.abs(warped.astype(int) - fg_bg)[outside].mean() < 0.5 * np.abs(plain.astype(int) - fg_bg)[outside].mean()
    uncovered = (plain == fg_bg).all(-1) & (pair.mask == 0)
    assert uncovered.any() and (warped[uncovered] == fg_bg[uncovered]).all()  # filled after, not tone-mapped
    valid = fitted_on[0]  # the curve was fitted only where the warped bg saw the scene
    assert valid is not None and (valid[uncovered] == 0).all() and (valid > 0).mean() > 0.8
