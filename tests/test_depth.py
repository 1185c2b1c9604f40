"""Depth maps: the fg stands at its ground-contact depth and is never behind what it covers."""

from __future__ import annotations

import numpy as np

from fgbg.compose import PreparedSet, compose_one, fg_variant, read_index
from fgbg.config import DepthParams
from fgbg.depth import contact_point, paste_depth, run_depth
from fgbg.images import decode, inverse_u16_to_metric, metric_to_inverse_u16
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
        bg_depth = ps.bg_depth[ps.bg_ids.index(key.split("_")[0])]
        np.testing.assert_array_equal(depth[~mask], bg_depth[~mask])
        assert (depth >= bg_depth).all()


def test_depth_is_deterministic_across_job_counts(tiny_prepared, tiny_composites, tiny_depth, tmp_path):
    run_depth(DepthParams(jobs=2, preview_samples=4), tiny_prepared, tiny_composites, tmp_path / "d")
    for name in read_manifest(tiny_depth)["shards"]:
        assert file_sha256(tmp_path / "d" / name) == file_sha256(tiny_depth / name)
    assert (tmp_path / "d" / "preview.png").stat().st_size > 0


def test_compose_and_depth_agree_on_the_fg_geometry(tiny_prepared, tiny_composites):
    ps = PreparedSet(tiny_prepared, depth=True)
    r = read_index(tiny_composites)[0]
    x, y, w, h = (int(r[k]) for k in "xywh")
    fg = fg_variant(ps.fg[ps.fg_ids.index(r["fg"])], r["flip"] == "1", w, h)
    _, mask = compose_one(ps.bg[0], fg, x, y)
    out = paste_depth(ps.bg_depth[0], fg[..., 3] >= 128, x, y)
    assert ((out != ps.bg_depth[0]) <= (mask > 0)).all()  # depth changes only under the mask
