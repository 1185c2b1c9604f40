"""stats.json: exact mean/std over the train split."""

from __future__ import annotations

import json

import numpy as np

from fgbg.config import StatsParams
from fgbg.images import decode
from fgbg.prepared import PreparedSet, read_index
from fgbg.shards import iter_shard
from fgbg.stats import run_stats


def test_stats_equal_a_brute_force_pass_over_the_train_split(tiny_prepared, tiny_composites, tiny_depth, tmp_path):
    out = tmp_path / "stats.json"
    stats = run_stats(StatsParams(jobs=2), tiny_prepared, tiny_composites, tiny_depth, out)
    assert json.loads(out.read_text()) == stats
    rows = [r for r in read_index(tiny_composites) if r["split"] == "train"]
    keys = {r["key"] for r in rows}
    fg_bg, masks, alphas, depths = [], [], [], []
    for shard in sorted({r["shard"] for r in rows}):
        depth_of = {k: decode(f["depth.png"]) for k, f in iter_shard(tiny_depth / shard)}
        for key, files in iter_shard(tiny_composites / shard):
            if key in keys:
                fg_bg.append(decode(files["jpg"]))
                masks.append(decode(files["mask.png"]))
                alphas.append(decode(files["alpha.png"]))
                depths.append(depth_of[key])
    fg_bg = np.stack(fg_bg).astype(np.float64) / 255
    assert stats["samples"] == len(rows) == len(fg_bg)
    np.testing.assert_allclose(list(stats["fg_bg"]["mean"].values()), fg_bg.mean((0, 1, 2)), atol=2e-6)
    np.testing.assert_allclose(list(stats["fg_bg"]["std"].values()), fg_bg.std((0, 1, 2)), atol=2e-6)
    np.testing.assert_allclose(stats["mask"]["mean"], (np.stack(masks) > 0).mean(), atol=2e-6)
    alphas = np.stack(alphas) / 255
    alpha_stats = [stats["alpha"]["mean"], stats["alpha"]["std"]]
    np.testing.assert_allclose(alpha_stats, [alphas.mean(), alphas.std()], atol=2e-6)
    np.testing.assert_allclose(stats["depth"]["std"], (np.stack(depths) / 65535).std(), atol=2e-6)
    ps = PreparedSet(tiny_prepared)
    bgs = np.stack([ps.bg[ps.bg_ids.index(r["bg"])] for r in rows]).astype(np.float64) / 255
    np.testing.assert_allclose(list(stats["bg"]["mean"].values()), bgs.mean((0, 1, 2)), atol=2e-6)
    assert stats["depth_convention"].startswith("inverse depth")
