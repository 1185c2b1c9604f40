"""Property-based checks of the compositing core over random sizes, alphas, positions and flips."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fgbg.compose import compose_one, fit_size
from fgbg.depth import paste_depth
from fgbg.prepared import fg_variant


@st.composite
def scenes(draw):
    bw, bh = draw(st.integers(4, 48)), draw(st.integers(4, 48))
    fw, fh = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w, h = (int(v[0]) for v in fit_size(np.array([fw]), np.array([fh]), 1.0, bw, bh))
    alpha = rng.choice([0, 1, 127, 128, 254, 255], (fh, fw))
    return {
        "bg": rng.integers(0, 256, (bh, bw, 3), dtype=np.uint8),
        "fg": np.dstack([rng.integers(0, 256, (fh, fw, 3)), alpha]).astype(np.uint8),
        "depth": rng.integers(0, 65536, (bh, bw)).astype(np.uint16),
        "w": w,
        "h": h,
        "x": draw(st.integers(0, bw - w)),
        "y": draw(st.integers(0, bh - h)),
        "flip": draw(st.booleans()),
    }


@settings(max_examples=300, deadline=None)
@given(scenes())
def test_compositing_invariants(s):
    bg, x, y, w, h = s["bg"], s["x"], s["y"], s["w"], s["h"]
    fg = fg_variant(s["fg"], s["flip"], w, h)
    assert fg.shape == (h, w, 4)
    assert w <= bg.shape[1] and h <= bg.shape[0]  # fit inside the bg
    fg_bg, mask, alpha = compose_one(bg, fg, x, y)

    # the mask lies within the pasted box and is exactly alpha >= 0.5 there
    box = np.zeros(mask.shape, bool)
    box[y : y + h, x : x + w] = True
    assert not mask[~box].any()
    np.testing.assert_array_equal(mask[box].reshape(h, w) > 0, fg[..., 3] >= 128)
    np.testing.assert_array_equal(alpha[box].reshape(h, w), fg[..., 3])  # the blend's own alpha, 0 outside
    assert not alpha[~box].any()
    # outside the box the bg is untouched
    np.testing.assert_array_equal(fg_bg[~box], bg[~box])
    # inside, the float blend a·fg + (1−a)·bg rounded to nearest (an independent reference)
    a = fg[..., 3:] / 255.0
    want = a * fg[..., :3] + (1 - a) * bg[y : y + h, x : x + w]
    assert np.abs(fg_bg[y : y + h, x : x + w] - want).max() <= 0.5 + 1e-9

    # depth: never behind the bg it covers; unchanged outside the mask
    if (fg[..., 3] >= 128).any():
        depth = paste_depth(s["depth"], fg[..., 3] >= 128, x, y)
        assert (depth >= s["depth"]).all()
        np.testing.assert_array_equal(depth[mask == 0], s["depth"][mask == 0])
