"""The embedded synthetic set: deterministic scenes with exact depth, soft-alpha sprites."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_SYNTH

from fgbg.convention import inverse_u16_to_metric
from fgbg.synth import render_background, render_foreground, run_synth


def test_synth_is_deterministic_and_independent_per_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_synth(TINY_SYNTH, a)
    run_synth(TINY_SYNTH.model_copy(update={"n_bg": 2, "n_fg": 2}), b)
    for sub in ("bg", "bg_depth", "fg"):
        for f in sorted((b / sub).iterdir()):
            assert f.read_bytes() == (a / sub / f.name).read_bytes()


def test_backgrounds_have_exact_plausible_depth_and_every_scene_kind():
    kinds = set()
    for i in range(3):
        rgb, depth, scene = render_background(0, i, 48)
        kinds.add(scene)
        assert rgb.shape == (48, 48, 3) and rgb.dtype == np.uint8
        ground = depth[-1]  # bottom row looks at the ground a few metres away
        assert np.isfinite(ground).all() and (ground > 0.5).all() and (ground < 30).all()
        assert np.isinf(depth[0]).any() or scene == "street"  # sky at the top (streets may be walled)
        finite = depth[np.isfinite(depth)]
        assert (finite > 0).all()
    assert kinds == {"street", "river", "hills"}
    v = np.array([65535, 0], np.uint16)
    assert inverse_u16_to_metric(v)[0] < inverse_u16_to_metric(v)[1]


def test_foreground_sprites_have_soft_alpha_and_a_solid_body():
    for i in range(3):
        rgba, kind = render_foreground(0, i, 64)
        a = rgba[..., 3]
        assert kind in {"person", "cat", "dog"}
        assert (a == 255).sum() > 200  # a solid body
        assert ((a > 0) & (a < 255)).sum() > 20  # anti-aliased edge
        assert a[0].max() == 0 and a[-1].max() == 0  # transparent margin (prepare trims it)


def test_a_sprites_soft_edge_keeps_the_colour_of_its_body():
    """Edge pixels (0 < alpha < 128) are the body's colour, only more transparent: their brightness
    is that of the opaque pixels beside them (a dark rim would be pasted into every composite)."""
    import cv2

    ratios = []
    for i in range(3):
        rgba, _ = render_foreground(0, i, 96)
        rgb, a = rgba[..., :3].astype(np.float32), rgba[..., 3]
        opaque = (a == 255).astype(np.float32)
        near = np.ones((7, 7), np.float32)
        neighbours = (
            cv2.filter2D(rgb * opaque[..., None], -1, near)
            / np.maximum(cv2.filter2D(opaque, -1, near), 1e-6)[..., None]
        )
        edge = (a > 0) & (a < 128) & (cv2.filter2D(opaque, -1, near) > 0)
        ratios.append(rgb[edge].sum() / neighbours[edge].sum())
    assert min(ratios) > 0.85, ratios  # ~0.57 when the colour was multiplied by alpha twice


def test_a_pixels_depth_is_over_the_rays_its_colour_averages():
    """A wall edge inside a pixel: its depth is the mean inverse depth of the 2×2 rays that hit,
    and sky only where most of them see sky."""
    from fgbg.synth import _FAR, SUPERSAMPLE, _pixel_depth

    assert SUPERSAMPLE == 2
    t = np.array([[2.0, 4.0, _FAR, _FAR],
                  [2.0, 4.0, 5.0, _FAR]])  # fmt: skip
    depth = _pixel_depth(np.vstack([t, t]), 2)  # 4×4 rays → 2×2 pixels, both rows alike
    assert depth[0, 0] == pytest.approx(4 / (1 / 2 + 1 / 4 + 1 / 2 + 1 / 4))  # not the corner ray's 2 m
    assert np.isinf(depth[0, 1])  # 1 of its 4 rays hits the wall: sky, as its colour mostly is


def test_a_smaller_rerun_leaves_only_its_own_files(tmp_path):
    """`fgbg synth` with fewer bgs / fgs than the last run into the same folder: prepare reads the
    folder, so the earlier run's extra images must go."""
    from fgbg.config import SynthParams

    run_synth(SynthParams(n_bg=3, n_fg=3, bg_size=32, fg_size=32), tmp_path)
    index = run_synth(SynthParams(n_bg=2, n_fg=1, bg_size=32, fg_size=32), tmp_path)
    for folder, entries in (("bg", index["bg"]), ("bg_depth", index["bg"]), ("fg", index["fg"])):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == sorted(e["file"] for e in entries)
