"""Shards, stats and the synthetic set: the storage and numbers the training side reads."""

from __future__ import annotations

import json
import stat
import tarfile

import numpy as np
import pytest
from conftest import TINY_SYNTH

from fgbg.compose import PreparedSet, read_index
from fgbg.config import StatsParams
from fgbg.images import FILE_MODE, decode, inverse_u16_to_metric
from fgbg.shards import ShardWriter, iter_shard, ustar_header
from fgbg.stats import run_stats
from fgbg.synth import render_background, render_foreground, run_synth


@pytest.mark.parametrize("name, size", [("bg0001_fg0002_f0_p03.jpg", 5413), ("k.mask.png", 0), ("k.json", 10**9)])
def test_fast_tar_header_is_what_tarfile_writes(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def test_shard_round_trips_and_is_written_atomically_with_shared_permissions(tmp_path):
    path = tmp_path / "s" / "shard-000000.tar"
    w = ShardWriter(path)
    w.add("a1", {"jpg": b"x" * 700, "json": b"{}"})
    assert not path.exists()  # nothing visible until commit
    w.add("a2", {"jpg": b"", "json": b"[1]"})
    rec = w.commit()
    assert rec.samples == 2 and rec.bytes == path.stat().st_size and rec.bytes % tarfile.RECORDSIZE == 0
    assert list(iter_shard(path)) == [("a1", {"jpg": b"x" * 700, "json": b"{}"}), ("a2", {"jpg": b"", "json": b"[1]"})]
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_stats_equal_a_brute_force_pass_over_the_train_split(tiny_prepared, tiny_composites, tiny_depth, tmp_path):
    out = tmp_path / "stats.json"
    stats = run_stats(StatsParams(jobs=2), tiny_prepared, tiny_composites, tiny_depth, out)
    assert json.loads(out.read_text()) == stats
    rows = [r for r in read_index(tiny_composites) if r["split"] == "train"]
    keys = {r["key"] for r in rows}
    fg_bg, masks, depths = [], [], []
    for shard in sorted({r["shard"] for r in rows}):
        depth_of = {k: decode(f["depth.png"]) for k, f in iter_shard(tiny_depth / shard)}
        for key, files in iter_shard(tiny_composites / shard):
            if key in keys:
                fg_bg.append(decode(files["jpg"]))
                masks.append(decode(files["mask.png"]))
                depths.append(depth_of[key])
    fg_bg = np.stack(fg_bg).astype(np.float64) / 255
    assert stats["samples"] == len(rows) == len(fg_bg)
    np.testing.assert_allclose(list(stats["fg_bg"]["mean"].values()), fg_bg.mean((0, 1, 2)), atol=2e-6)
    np.testing.assert_allclose(list(stats["fg_bg"]["std"].values()), fg_bg.std((0, 1, 2)), atol=2e-6)
    np.testing.assert_allclose(stats["mask"]["mean"], (np.stack(masks) > 0).mean(), atol=2e-6)
    np.testing.assert_allclose(stats["depth"]["std"], (np.stack(depths) / 65535).std(), atol=2e-6)
    ps = PreparedSet(tiny_prepared)
    bgs = np.stack([ps.bg[ps.bg_ids.index(r["bg"])] for r in rows]).astype(np.float64) / 255
    np.testing.assert_allclose(list(stats["bg"]["mean"].values()), bgs.mean((0, 1, 2)), atol=2e-6)
    assert stats["depth_convention"].startswith("inverse depth")


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
