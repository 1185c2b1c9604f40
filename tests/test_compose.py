"""Compositing math, placement, splits, shards: what every sample of the dataset relies on."""

from __future__ import annotations

import collections
import json
import tarfile

import numpy as np
import pytest
from conftest import TINY_COMPOSE, TINY_SPLIT

from fgbg.compose import Composer, compose_one, fit_size, grid_positions, make_plan, run_compose, shard_tasks
from fgbg.images import decode, resize_rgba
from fgbg.prepared import PreparedSet, assign_splits, fg_variant, read_index
from fgbg.shards import file_sha256, iter_shard, read_manifest


def random_rgba(rng, h, w):
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[..., 3] = rng.choice([0, 40, 127, 128, 200, 255], (h, w))
    return rgba


def test_mask_matches_alpha_at_placement():
    rng = np.random.default_rng(1)
    bg = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    fg = random_rgba(rng, 20, 15)
    x, y = 37, 11
    fg_bg, mask, alpha = compose_one(bg, fg, x, y)

    expected = np.zeros((50, 60), np.uint8)
    expected[y : y + 20, x : x + 15] = np.where(fg[..., 3] >= 128, 255, 0)
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) <= {0, 255}
    expected[y : y + 20, x : x + 15] = fg[..., 3]
    np.testing.assert_array_equal(alpha, expected)


def test_blend_is_alpha_weighted_and_leaves_bg_outside_the_box():
    rng = np.random.default_rng(2)
    bg = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    fg = random_rgba(rng, 10, 12)
    fg_bg, _, _ = compose_one(bg, fg, 5, 7)

    a = fg[..., 3:4] / 255.0
    want = a * fg[..., :3] + (1 - a) * bg[7:17, 5:17]
    got = fg_bg[7:17, 5:17].astype(float)
    assert np.abs(got - want).max() <= 0.5 + 1e-9  # exact blend, rounded to nearest
    outside = np.ones((40, 40), bool)
    outside[7:17, 5:17] = False
    np.testing.assert_array_equal(fg_bg[outside], bg[outside])
    # opaque pixels are the fg's own colour, transparent ones the bg's: no halo, no colour shift
    np.testing.assert_array_equal(got[fg[..., 3] == 255], fg[..., :3][fg[..., 3] == 255])
    np.testing.assert_array_equal(got[fg[..., 3] == 0], bg[7:17, 5:17][fg[..., 3] == 0])


def test_shipped_renderer_matches_a_float_reference_pixel_for_pixel(tiny_prepared):
    """The pixels the shards encode (Composer.render, BGR, before JPEG) against a float blend
    written here, on every planned row of the tiny set: random sizes, alphas, positions, flips."""
    split = TINY_SPLIT
    ps = PreparedSet(tiny_prepared, split)
    plan = make_plan(ps, TINY_COMPOSE.model_copy(update={"scale_jitter": 0.4}))
    composer = Composer(ps, 90)
    diffs = []
    for row in plan.tolist():
        _, bg, fg, flip, _, x, y, w, h = row
        fg_bg_bgr, mask, alpha = composer.render(row)
        rgba = fg_variant(ps.fg[fg], bool(flip), w, h).astype(np.float64)
        a = rgba[..., 3:] / 255.0
        want = ps.bg[bg].astype(np.float64)
        want[y : y + h, x : x + w] = a * rgba[..., :3] + (1 - a) * want[y : y + h, x : x + w]
        diffs.append(np.abs(fg_bg_bgr[..., ::-1] - want).max())
        want_mask = np.zeros(mask.shape, np.uint8)
        want_mask[y : y + h, x : x + w][rgba[..., 3] >= 128] = 255
        np.testing.assert_array_equal(mask, want_mask)
        want_alpha = np.zeros(mask.shape, np.uint8)
        want_alpha[y : y + h, x : x + w] = rgba[..., 3]
        np.testing.assert_array_equal(alpha, want_alpha)
    assert len(diffs) > 50 and max(diffs) <= 0.5 + 1e-9  # the float blend, rounded to nearest
    assert len({t.name for t in shard_tasks(plan, 40)}) > 1


def test_flip_mirrors_the_fg_and_its_mask():
    rng = np.random.default_rng(3)
    fg = random_rgba(rng, 9, 13)
    np.testing.assert_array_equal(fg_variant(fg, True, 13, 9), fg[:, ::-1])
    np.testing.assert_array_equal(fg_variant(fg, False, 13, 9), fg)


def test_grid_positions_equal_the_seed_formula():
    W, H, w, h, cols, rows = 192, 192, 96, 80, 5, 4
    pos = np.arange(cols * rows)
    x, y = grid_positions(W, H, w, h, cols, rows, pos)
    for p in pos:
        col, row = p % cols, p // cols
        assert x[p] == round(col * (W - w) / (cols - 1))
        assert y[p] == round(row * (H - h) / (rows - 1))
    assert x.min() == 0 and x.max() == W - w and y.min() == 0 and y.max() == H - h


def test_oversize_fg_is_scaled_down_to_fit_keeping_aspect():
    w, h = fit_size(np.array([300, 50, 100]), np.array([150, 400, 100]), 1.0, 192, 192)
    assert list(zip(w.tolist(), h.tolist(), strict=True)) == [(192, 96), (24, 192), (100, 100)]


def test_oversize_fg_is_placed_inside_the_bg(tiny_prepared, tmp_path):
    ps = PreparedSet(tiny_prepared, TINY_SPLIT)
    ps.fg = [resize_rgba(f, f.shape[1] * 4, f.shape[0] * 4) for f in ps.fg]  # larger than the bg
    for placement in ("random", "grid"):
        plan = make_plan(ps, TINY_COMPOSE.model_copy(update={"placement": placement}))
        W, H = ps.bg_size
        assert (plan["x"] >= 0).all() and (plan["x"] + plan["w"] <= W).all()
        assert (plan["y"] >= 0).all() and (plan["y"] + plan["h"] <= H).all()
        assert (np.maximum(plan["w"], plan["h"]) >= min(W, H) - 1).any()  # scaled to fit, not shrunk more


def test_splits_are_by_identity_and_never_mixed(tiny_composites):
    rows = read_index(tiny_composites)
    split_of_bg, split_of_fg = collections.defaultdict(set), collections.defaultdict(set)
    for r in rows:
        split_of_bg[r["bg"]].add(r["split"])
        split_of_fg[r["fg"]].add(r["split"])
        assert r["shard"].startswith(r["split"] + "/")
    assert all(len(s) == 1 for s in split_of_bg.values())
    assert all(len(s) == 1 for s in split_of_fg.values())
    for r in rows:
        assert split_of_bg[r["bg"]] == split_of_fg[r["fg"]] == {r["split"]}
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_split_assignment_uses_exact_ratios_and_names_not_order():
    from fgbg.config import SplitParams

    names = [f"img_{i}.png" for i in range(20)]
    splits = assign_splits("bg", names, SplitParams())
    assert collections.Counter(splits) == {"train": 16, "val": 2, "test": 2}
    shuffled = names[::-1]
    again = dict(zip(shuffled, assign_splits("bg", shuffled, SplitParams()), strict=True))
    assert again == dict(zip(names, splits, strict=True))


def test_every_planned_sample_is_in_the_shards_with_its_files(tiny_prepared, tiny_composites):
    rows = read_index(tiny_composites)
    ps = PreparedSet(tiny_prepared, TINY_SPLIT)
    n_expected = 0
    for split in ("train", "val", "test"):
        nb = sum(s == split for s in ps.bg_split)
        nf = sum(s == split for s in ps.fg_split)
        n_expected += nb * nf * 2 * TINY_COMPOSE.positions
    assert len(rows) == n_expected == read_manifest(tiny_composites)["samples"]
    seen = {}
    for shard in sorted({r["shard"] for r in rows}):
        for key, files in iter_shard(tiny_composites / shard):
            assert set(files) == {"jpg", "mask.png", "alpha.png", "json"}
            seen[key] = json.loads(files["json"])
    assert set(seen) == {r["key"] for r in rows}
    r = rows[0]
    assert seen[r["key"]]["box"] == [int(r[k]) for k in ("x", "y", "w", "h")]


def test_stored_mask_and_alpha_are_the_placed_fg_alpha(tiny_prepared, tiny_composites):
    ps = PreparedSet(tiny_prepared, TINY_SPLIT)
    row = read_index(tiny_composites)[5]
    key, files = next(iter(dict(iter_shard(tiny_composites / row["shard"])).items()))
    meta = json.loads(files["json"])
    x, y, w, h = meta["box"]
    fg = fg_variant(ps.fg[ps.fg_ids.index(meta["fg"])], bool(meta["flip"]), w, h)
    mask = np.zeros(ps.bg_size[::-1], np.uint8)  # independent of the compositing code
    mask[y : y + h, x : x + w][fg[..., 3] >= 128] = 255
    np.testing.assert_array_equal(decode(files["mask.png"]), mask)
    alpha = np.zeros(ps.bg_size[::-1], np.uint8)
    alpha[y : y + h, x : x + w] = fg[..., 3]
    np.testing.assert_array_equal(decode(files["alpha.png"]), alpha)
    assert key.startswith(f"{meta['bg']}_{meta['fg']}_f{meta['flip']}_p")


def test_every_stored_mask_and_alpha_is_the_rendered_one(tiny_prepared, tiny_composites):
    """The shards' PNGs come from the pasted form's deflated planes, not from a canvas: each one
    decodes to exactly the canvas `Composer.render` pastes for that sample's plan row."""
    ps = PreparedSet(tiny_prepared, TINY_SPLIT)
    composer = Composer(ps, 90)
    rows = {r["key"]: r for r in read_index(tiny_composites)}
    checked = 0
    for shard in sorted({r["shard"] for r in rows.values()}):
        for key, files in iter_shard(tiny_composites / shard):
            r = rows[key]
            row = (0, ps.bg_ids.index(r["bg"]), ps.fg_ids.index(r["fg"]), int(r["flip"]), int(r["position"]),
                   *(int(r[k]) for k in ("x", "y", "w", "h")))  # fmt: skip
            _, mask, alpha = composer.render(row)
            np.testing.assert_array_equal(decode(files["mask.png"]), mask)
            np.testing.assert_array_equal(decode(files["alpha.png"]), alpha)
            checked += 1
    assert checked == len(rows) > 50


def test_shards_are_plain_tar_readable_by_webdataset(tiny_composites):
    shard = sorted((tiny_composites / "train").glob("shard-*.tar"))[0]
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert len(names) == 4 * len({n.split(".")[0] for n in names})
    wds = pytest.importorskip("webdataset")
    sample = next(iter(wds.WebDataset(str(shard), shardshuffle=False)))
    assert {"__key__", "jpg", "mask.png", "alpha.png", "json"} <= set(sample)


def _shard_bytes(folder):
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_is_byte_identical_across_runs_and_job_counts(tiny_prepared, tiny_composites, tmp_path):
    run_compose(TINY_COMPOSE.model_copy(update={"jobs": 2}), TINY_SPLIT, tiny_prepared, tmp_path / "c2")
    assert _shard_bytes(tmp_path / "c2") == _shard_bytes(tiny_composites)


def test_rerun_rebuilds_only_missing_or_corrupt_shards(tiny_prepared, tiny_composites, tmp_path):
    out = tmp_path / "c"
    run_compose(TINY_COMPOSE, TINY_SPLIT, tiny_prepared, out)
    shards = sorted(out.rglob("shard-*.tar"))
    assert len(shards) >= 3
    shards[0].unlink()  # lost
    shards[1].write_bytes(shards[1].read_bytes()[:1000])  # cut short, e.g. by a full disk
    untouched = shards[2].stat().st_mtime_ns
    run_compose(TINY_COMPOSE, TINY_SPLIT, tiny_prepared, out)
    assert shards[2].stat().st_mtime_ns == untouched  # verified and reused, not rewritten
    assert _shard_bytes(out) == _shard_bytes(tiny_composites)


def test_changed_params_rebuild_and_remove_stale_shards(tiny_prepared, tmp_path):
    out = tmp_path / "c"
    run_compose(TINY_COMPOSE.model_copy(update={"shard_size": 10}), TINY_SPLIT, tiny_prepared, out)
    many = len(list(out.rglob("shard-*.tar")))
    run_compose(TINY_COMPOSE.model_copy(update={"shard_size": 1000}), TINY_SPLIT, tiny_prepared, out)
    assert len(list(out.rglob("shard-*.tar"))) == 3 < many  # one per split, old ones gone
    assert not list(out.rglob("*.tmp")) and not (out / ".journal.jsonl").exists()


def test_changed_code_rebuilds_the_persisted_shards(tiny_prepared, tiny_composites, tmp_path, monkeypatch):
    """The shards persist between runs (dvc.yaml `persist: true`) and are reused when their
    fingerprint matches; DVC reruns the stage after a code change, so the stage's source must be in
    the fingerprint or the old code's shards would be kept."""
    import shutil

    import fgbg.compose
    import fgbg.shards

    out = tmp_path / "c"
    shutil.copytree(tiny_composites, out)
    real_encode = fgbg.compose.encode_jpeg  # "the new code": another JPEG quality
    monkeypatch.setattr(fgbg.compose, "encode_jpeg", lambda img, quality, bgr=False: real_encode(img, 20, bgr=bgr))
    code = tmp_path / "fgbg"
    shutil.copytree(fgbg.shards.PACKAGE, code)
    monkeypatch.setattr(fgbg.shards, "PACKAGE", code)
    run_compose(TINY_COMPOSE, TINY_SPLIT, tiny_prepared, out)  # the same source: shards reused
    assert _shard_bytes(out) == _shard_bytes(tiny_composites)
    (code / "images.py").write_text((code / "images.py").read_text() + "\n# edited\n")  # compose imports it
    run_compose(TINY_COMPOSE, TINY_SPLIT, tiny_prepared, out)
    new, old = _shard_bytes(out), _shard_bytes(tiny_composites)
    shards = [name for name in old if name.endswith(".tar")]
    assert shards and all(new[name] != old[name] for name in shards)  # every shard rebuilt


def test_a_stages_code_fingerprint_follows_the_modules_it_runs(tmp_path, monkeypatch):
    import shutil

    import fgbg.shards
    from fgbg.shards import code_fingerprint

    code = tmp_path / "fgbg"
    shutil.copytree(fgbg.shards.PACKAGE, code)
    monkeypatch.setattr(fgbg.shards, "PACKAGE", code)
    before = {stage: code_fingerprint(stage) for stage in ("compose", "depth")}
    (code / "teacher.py").write_text((code / "teacher.py").read_text() + "\n# edited\n")  # depth's, not compose's
    assert code_fingerprint("compose") == before["compose"] and code_fingerprint("depth") != before["depth"]


@pytest.mark.parametrize("seed", range(4))
def test_placed_png_is_a_valid_png_of_the_canvas(seed):
    """The compose stage's own PNG writer (no canvas, zero rows as precomputed blocks, checksum
    combined arithmetically) against the canvas built here: decoded by OpenCV and Pillow, and its
    zlib stream inflated with the checksum verified."""
    import io
    import struct
    import zlib

    from PIL import Image

    from fgbg.images import encode_placed_png

    rng = np.random.default_rng(seed)
    for _ in range(60):
        width, height = (int(v) for v in rng.integers(1, 80, 2))
        w, h = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        plane = rng.choice(np.array([0, 0, 255, 255, 1, 128, 254], np.uint8), (h, w))
        canvas = np.zeros((height, width), np.uint8)
        canvas[y : y + h, x : x + w] = plane
        png = encode_placed_png(plane, x, y, width, height)
        np.testing.assert_array_equal(decode(png), canvas)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), canvas)
        (length,) = struct.unpack(">I", png[33:37])
        assert png[37:41] == b"IDAT"
        raw = zlib.decompress(png[41 : 41 + length])  # raises on a wrong adler32
        assert raw == np.concatenate([np.zeros((height, 1), np.uint8), canvas], 1).tobytes()
