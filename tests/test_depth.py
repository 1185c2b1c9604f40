"""Depth maps: the fg stands at its ground-contact depth and is never behind what it covers."""

from __future__ import annotations

import numpy as np

from fgbg.config import DepthParams
from fgbg.convention import inverse_u16_to_metric, metric_to_inverse_u16
from fgbg.depth import contact_point, paste_depth, run_depth
from fgbg.images import decode
from fgbg.prepared import PreparedSet, parse_key
from fgbg.shards import file_sha256, iter_shard, read_manifest


def test_fg_takes_the_bg_depth_where_it_touches_the_ground():
    # ground plane: inverse depth grows towards the bottom of the image (nearer)
    bg = np.repeat(np.linspace(1000, 60000, 40).astype(np.uint16)[:, None], 30, axis=1)
    mask = np.zeros((10, 6), bool)
    mask[1:8, 2:4] = True  # object whose lowest row is row 7
    out = paste_depth(bg, mask, x=5, y=20)
    contact = bg[20 + 7, 5 + 2]
    assert contact_point(mask) == (7, 3)
    assert (out[20:30, 5:11][mask] == contact).all()  # upright: one depth, the contact's
    outside = np.ones_like(bg, bool)
    outside[20:30, 5:11] = mask
    np.testing.assert_array_equal(out[~outside], bg[~outside])


def test_fg_placed_over_the_sky_stands_on_the_ground_below_it_not_at_sky_depth():
    # sky (0) above row 15, ground below it, nearer towards the bottom
    bg = np.zeros((40, 30), np.uint16)
    bg[15:] = np.linspace(1000, 60000, 25).astype(np.uint16)[:, None]
    mask = np.zeros((6, 4), bool)
    mask[1:5, 1:3] = True  # lowest row 4, at y=2 → bg row 6: sky
    out = paste_depth(bg, mask, x=10, y=2)
    assert (out[2:8, 10:14][mask] == bg[15, 11]).all()  # the first ground below its contact point
    np.testing.assert_array_equal(out[2:8, 10:14][~mask], 0)  # the sky around it stays sky
    # no ground below in its column: the bg's farthest ground; no ground at all: the bg's own depth
    bg[15:, 11] = 0
    assert (paste_depth(bg, mask, x=10, y=2)[2:8, 10:14][mask] == bg[bg > 0].min()).all()
    assert not paste_depth(np.zeros_like(bg), mask, x=10, y=2).any()


def test_fg_is_never_behind_the_bg_it_covers():
    rng = np.random.default_rng(0)
    for _ in range(50):
        bg = rng.integers(0, 65536, (32, 32)).astype(np.uint16)
        h, w = rng.integers(1, 16, 2)
        mask = rng.random((h, w)) < 0.6
        mask[-1, 0] = True
        x, y = rng.integers(0, 32 - w + 1), rng.integers(0, 32 - h + 1)
        out = paste_depth(bg, mask, x, y)
        assert (out >= bg).all()  # inverse depth: never farther than the bg
        region = out[y : y + h, x : x + w]
        cy, cx = contact_point(mask)
        assert (region[mask] >= bg[y + cy, x + cx]).all()


def test_an_fg_whose_mask_vanished_leaves_the_bg_depth_as_it_is():
    """compose may shrink a thin fg until no pixel reaches alpha 0.5: an empty mask stands nowhere
    (it raised IndexError in the depth stage)."""
    bg = np.arange(64, dtype=np.uint16).reshape(8, 8) * 100
    out = paste_depth(bg, np.zeros((3, 3), bool), 2, 2)
    assert np.array_equal(out, bg) and out is not bg


def test_depth_encoding_is_inverse_near_bright_and_round_trips():
    d = np.array([0.5, 1.0, 2.0, 10.0, 200.0, np.inf])
    v = metric_to_inverse_u16(d)
    assert v[0] == v[1] == 65535 and v[-1] == v[-2] == 0
    assert (np.diff(v.astype(int)) <= 0).all()
    np.testing.assert_allclose(inverse_u16_to_metric(v[2:4]), [2.0, 10.0], rtol=1e-3)


def test_depth_shards_are_keyed_like_the_composites_and_match_the_masks(tiny_prepared, tiny_composites, tiny_depth):
    comp, dep = read_manifest(tiny_composites), read_manifest(tiny_depth)
    assert list(comp["shards"]) == list(dep["shards"]) and comp["samples"] == dep["samples"]
    ps = PreparedSet(tiny_prepared, depth=True)
    name = next(iter(comp["shards"]))
    for (key, c), (dkey, d) in zip(iter_shard(tiny_composites / name), iter_shard(tiny_depth / name), strict=True):
        assert key == dkey
        depth, mask = decode(d["depth.png"]), decode(c["mask.png"]) > 0
        assert depth.dtype == np.uint16 and depth.shape == mask.shape
        bg_depth = ps.bg_depth[ps.bg_ids.index(parse_key(key).bg)]
        np.testing.assert_array_equal(depth[~mask], bg_depth[~mask])
        assert (depth >= bg_depth).all()


def test_depth_is_deterministic_across_job_counts(tiny_prepared, tiny_composites, tiny_depth, tmp_path):
    run_depth(DepthParams(jobs=2, preview_samples=4), tiny_prepared, tiny_composites, tmp_path / "d")
    for name in read_manifest(tiny_depth)["shards"]:
        assert file_sha256(tmp_path / "d" / name) == file_sha256(tiny_depth / name)
    assert (tmp_path / "d" / "preview.png").stat().st_size > 0


def test_depth_shards_put_the_object_where_the_composite_mask_is(tiny_prepared, tiny_composites, tiny_depth):
    """Read back from both stages' shards: the depth map differs from the bg's only under the
    stored mask, and there it is the depth at the object's own ground contact."""
    ps = PreparedSet(tiny_prepared, depth=True)
    changed_somewhere = floating = 0
    for name in read_manifest(tiny_composites)["shards"]:
        pairs = zip(iter_shard(tiny_composites / name), iter_shard(tiny_depth / name), strict=True)
        for (key, comp), (_, dep) in pairs:
            depth, mask = decode(dep["depth.png"]), decode(comp["mask.png"]) > 0
            bg_depth = ps.bg_depth[ps.bg_ids.index(parse_key(key).bg)]
            assert ((depth != bg_depth) <= mask).all(), key
            rows = np.flatnonzero(mask.any(axis=1))
            bottom = rows[-1]
            cols = np.flatnonzero(mask[bottom])
            column = bg_depth[bottom:, cols[len(cols) // 2]]
            contact = (
                column[column > 0][0] if column.any() else bg_depth[bg_depth > 0].min()
            )  # over the sky: the ground below
            floating += int(column[0] == 0)
            np.testing.assert_array_equal(depth[mask], np.maximum(bg_depth[mask], contact))
            assert depth[mask].all(), key  # an object is never at the sky's depth
            changed_somewhere += int((depth != bg_depth).any())
    assert changed_somewhere > 0 and floating > 0
