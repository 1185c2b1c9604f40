"""The embedded synthetic set: deterministic scenes with exact depth, soft-alpha sprites."""

from __future__ import annotations

import numpy as np
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
