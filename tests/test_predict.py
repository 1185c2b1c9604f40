"""fgbg predict: photos of any size in, mask / depth / overlay at the photo's size out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fgbg.align import apply_homography
from fgbg.capture_pairs import capture_pairs, real_photos
from fgbg.config import TrainParams
from fgbg.model import LoadedModel
from fgbg.predict import align_bg, lift_onto, network_size, run_predict, trained_tolerance_px


def test_predict_returns_outputs_at_the_input_photo_size(trained, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "bg").mkdir()
    (tmp_path / "fg_bg").mkdir()
    for name, (h, w) in (("a.png", (70, 100)), ("b.jpg", (45, 45))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "bg" / name)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "fg_bg" / name)
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(tmp_path / "beach.jpg")
    written = run_predict(trained.model, tmp_path / "bg", tmp_path / "fg_bg", tmp_path / "out", "cpu", "never",
                          onto=tmp_path / "beach.jpg")  # fmt: skip
    assert len(written) == 14  # mask, alpha, depth, colour depth, overlay, onto, alignment json per pair
    mask = np.asarray(Image.open(tmp_path / "out" / "a_mask.png"))
    depth = np.asarray(Image.open(tmp_path / "out" / "a_depth.png"))
    alpha = np.asarray(Image.open(tmp_path / "out" / "a_alpha.png"))
    assert mask.shape == (70, 100) and set(np.unique(mask)) <= {0, 255}
    assert depth.shape == (70, 100) and depth.dtype == np.uint16
    assert alpha.shape == (70, 100) and alpha.dtype == np.uint8
    assert np.asarray(Image.open(tmp_path / "out" / "a_onto.png")).shape == (70, 100, 3)  # the photo's size
    assert network_size(480, 640, 192) == (192, 256)  # aspect kept, sides multiples of 32
    assert np.asarray(Image.open(tmp_path / "out" / "b_overlay.png")).shape == (45, 45, 3)


def test_the_written_files_hold_the_networks_outputs(trained, tmp_path):
    """a_mask / a_alpha / a_depth.png are the network's mask probability ≥ 0.5, alpha and depth for the
    pair (depth as 16-bit inverse depth, near bright): not swapped, flipped or rescaled on the way out."""
    import torch

    from fgbg.model import load_model
    from fgbg.predict import predict_tensors

    rng = np.random.default_rng(1)
    bg = rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)
    fg_bg = bg.copy()
    fg_bg[20:50, 30:70] = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    for folder, img in (("bg", bg), ("fg_bg", fg_bg)):
        (tmp_path / folder).mkdir()
        Image.fromarray(img).save(tmp_path / folder / "a.png")
    run_predict(trained.model, tmp_path / "bg", tmp_path / "fg_bg", tmp_path / "out", "cpu", "never",
                match_tone=False, log=lambda *a: None)  # fmt: skip
    loaded = load_model(trained.model, torch.device("cpu"))

    def tensor(img):
        return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255

    with torch.inference_mode():
        prob, depth, alpha = (t[0, 0].numpy() for t in predict_tensors(loaded, tensor(bg), tensor(fg_bg)))

    def written(name):
        return np.asarray(Image.open(tmp_path / "out" / f"a_{name}.png")).astype(np.float64)

    np.testing.assert_allclose(written("depth") / 65535, depth, atol=1 / 65535)
    np.testing.assert_allclose(written("alpha") / 255, alpha, atol=0.5 / 255 + 1e-6)
    decided = np.abs(prob - 0.5) > 1e-4  # a probability at 0.5 itself may round either way
    np.testing.assert_array_equal((written("mask") > 0)[decided], (prob >= 0.5)[decided])


def _photo_pair(condition: str, size: int = 192):
    return next(capture_pairs(real_photos()[:1], per_photo=1, size=size, seed=3, conditions=(condition,)))


def _camera_motion_px(matrix: np.ndarray, size: int) -> float:
    grid = np.stack(np.meshgrid(np.linspace(0, size - 1, 9), np.linspace(0, size - 1, 9)), -1).reshape(-1, 2)
    return float(np.linalg.norm(apply_homography(matrix, grid) - grid, axis=1).max())


def _write_pair(folder, bg: np.ndarray, fg_bg: np.ndarray, name: str = "shot.png"):
    for sub, img in (("bg", bg), ("fg_bg", fg_bg)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / sub / name)
    return folder / "bg" / name, folder / "fg_bg" / name


def test_predict_aligns_a_handheld_pair_and_reports_the_camera_motion(trained, tmp_path):
    pair = _photo_pair("handheld")
    bg, fg_bg = _write_pair(tmp_path, pair.bg, pair.fg_bg)
    logged = []
    run_predict(trained.model, bg, fg_bg, tmp_path / "out", "cpu", log=logged.append)
    report = json.loads((tmp_path / "out" / "shot.json").read_text())
    assert report["align"] == "auto" and report["aligned"] is True and not report["warning"]
    truth = _camera_motion_px(pair.true_matrix, 192)
    assert truth > 10 and report["shift_px"] == pytest.approx(truth, abs=0.5)
    assert 0 <= report["uncovered"] < 0.2
    assert any("aligned" in line and "shot.png" in line for line in logged)


def test_no_refine_gives_the_networks_output_upsampled_and_says_so(trained, tmp_path):
    """--no-refine: the mask is the network's probability upsampled bilinearly; the default refines it
    along the photo's edges (fgbg.refine, tests/test_refine.py) and the record says which."""
    import torch
    import torch.nn.functional as F

    from fgbg.model import infer, load_model

    pair = _photo_pair("clean")
    bg, fg_bg = _write_pair(tmp_path, pair.bg, pair.fg_bg)
    masks = {}
    for refine in (True, False):
        run_predict(trained.model, bg, fg_bg, tmp_path / str(refine), "cpu", "never", refine=refine)
        assert json.loads((tmp_path / str(refine) / "shot.json").read_text())["refine"] is refine
        masks[refine] = np.asarray(Image.open(tmp_path / str(refine) / "shot_mask.png")) > 127
    loaded = load_model(trained.model, torch.device("cpu"))
    photos = [torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255 for im in (pair.bg, pair.fg_bg)]
    side = network_size(192, 192, loaded.input_size)
    net = [F.interpolate(t, size=side, mode="area") for t in photos]  # shrunk as training shrinks its data
    with torch.inference_mode():
        prob = torch.sigmoid(infer(loaded.net, *net).mask_logits)
    bilinear = F.interpolate(prob, size=(192, 192), mode="bilinear", align_corners=False)[0, 0].numpy() >= 0.5
    assert (masks[False] == bilinear).mean() > 0.999
    assert (masks[True] != masks[False]).any()


def test_predict_matches_a_drifted_exposure_unless_told_not_to_and_says_so(trained, tmp_path):
    """The fg_bg shot came out brighter and warmer than the bg: by default the bg takes its tone
    before the network (fgbg.tone, tests/test_tone.py); `--no-match-tone` leaves it (and `--exact`,
    in the exact-norms test below)."""
    from typer.testing import CliRunner

    from fgbg.cli import app

    pair = _photo_pair("clean")
    drifted = np.clip(pair.fg_bg * np.array([1.3, 1.2, 1.0]) + 8, 0, 255).astype(np.uint8)
    bg, fg_bg = _write_pair(tmp_path, pair.bg, drifted)
    for flag, matched in (("--match-tone", True), ("--no-match-tone", False)):
        out = tmp_path / flag
        done = CliRunner().invoke(app, ["predict", str(bg), str(fg_bg), "--model", str(trained.model), "--out",
                                        str(out), "--device", "cpu", "--align", "never", flag])  # fmt: skip
        assert done.exit_code == 0, done.output
        record = json.loads((out / "shot.json").read_text())
        assert record["match_tone"] is matched and record["tone_matched"] is matched
        assert (record["tone_change"] > 20) if matched else record["tone_change"] is None
        assert record["tone_skipped"] == ""
    masks = [np.asarray(Image.open(tmp_path / flag / "shot_mask.png")) for flag in ("--match-tone", "--no-match-tone")]
    assert not np.array_equal(*masks)  # the network was shown another bg
    run_predict(trained.model, bg, bg, tmp_path / "same", "cpu", "never")  # nothing to match: says so
    record = json.loads((tmp_path / "same" / "shot.json").read_text())
    assert not record["tone_matched"] and "already match" in record["tone_skipped"]


def test_auto_aligns_only_beyond_the_tolerance_and_never_leaves_the_bg_alone():
    pair = _photo_pair("shift")  # a tripod nudge ≤ 1.5 px
    motion = _camera_motion_px(pair.true_matrix, 192)
    same, report = align_bg(pair.bg, pair.fg_bg, "auto", motion + 1.0, 192, "a, b")
    assert same is pair.bg and not report.aligned and report.shift_px == pytest.approx(motion, abs=0.5)
    warped, report = align_bg(pair.bg, pair.fg_bg, "auto", motion / 4, 192, "a, b")
    assert report.aligned and warped.shape == pair.fg_bg.shape
    outside = pair.mask == 0  # the warped bg matches the fg_bg shot better than the bg as shot
    err_before = np.abs(pair.bg.astype(int) - pair.fg_bg)[outside].mean()
    err_after = np.abs(warped.astype(int) - pair.fg_bg)[outside].mean()
    assert err_after < 0.6 * err_before
    kept, report = align_bg(pair.bg, pair.fg_bg, "never", 0.0, 192, "a, b")
    assert kept is pair.bg and report.shift_px is None


def test_two_different_scenes_are_refused_or_warned_naming_both_files(trained, tmp_path):
    (_, china), (_, flower), _ = real_photos()
    bg, fg_bg = _write_pair(tmp_path, china[:192, :192], flower[:192, :192])
    with pytest.raises(ValueError, match="cannot register") as err:
        run_predict(trained.model, bg, fg_bg, tmp_path / "out", "cpu", align="always")
    assert str(bg) in str(err.value) and str(fg_bg) in str(err.value)
    logged = []
    run_predict(trained.model, bg, fg_bg, tmp_path / "out", "cpu", align="auto", log=logged.append)
    assert any(line.startswith("warning:") and str(fg_bg) in line for line in logged)
    assert json.loads((tmp_path / "out" / "shot.json").read_text())["warning"]
    with pytest.raises(ValueError, match="--align: one of"):
        run_predict(trained.model, bg, fg_bg, tmp_path / "out", "cpu", align="sometimes")


def test_exact_is_refused_for_a_model_trained_without_the_exact_channel(trained, tmp_path):
    (_, china), *_ = real_photos()
    bg, fg_bg = _write_pair(tmp_path, china[:64, :64], china[:64, :64])
    with pytest.raises(ValueError, match="exact_input") as err:
        run_predict(trained.model, bg, fg_bg, tmp_path / "out", "cpu", exact=True)
    assert str(trained.model) in str(err.value) and not (tmp_path / "out").exists()


def test_exact_predicts_with_the_exact_norms_and_only_when_asked(tiny_stats, tmp_path):
    """`fgbg predict --exact` reads the pair with the exact-pair norms; without it the same pair is
    a capture; `--exact` never warps the bg, and with `--align always` it is refused."""
    from conftest import exact_pair_model

    _, model_pt = exact_pair_model(tmp_path, tiny_stats, input_size=64)
    pair = _photo_pair("clean", size=64)
    bg, fg_bg = _write_pair(tmp_path, pair.bg, pair.fg_bg)
    depth = {}
    for exact in (False, True):
        run_predict(model_pt, bg, fg_bg, tmp_path / f"out{exact}", "cpu", "auto", exact=exact)
        depth[exact] = np.asarray(Image.open(tmp_path / f"out{exact}" / "shot_depth.png"))
        assert json.loads((tmp_path / f"out{exact}" / "shot.json").read_text())["exact"] is exact
    assert not np.array_equal(depth[False], depth[True])
    exact_record = json.loads((tmp_path / "outTrue" / "shot.json").read_text())
    assert exact_record["align"] == "never" and exact_record["match_tone"] is False
    with pytest.raises(ValueError, match="--exact with --align always"):
        run_predict(model_pt, bg, fg_bg, tmp_path / "out", "cpu", "always", exact=True)


def test_the_trained_tolerance_comes_from_the_models_misalignment_range():
    def loaded(**augment):
        return LoadedModel(None, TrainParams(augment=augment), 128, 0)

    assert trained_tolerance_px(loaded(misalign={"translate": 0.02})) == pytest.approx(2.56)
    assert trained_tolerance_px(loaded(enabled=False)) == 0.5
    assert trained_tolerance_px(loaded(misalign={"p": 0.0})) == 0.5


def test_lifting_onto_a_new_background_removes_the_old_scene_from_soft_edges():
    """fg_bg = a·F + (1 − a)·B with a soft matte: with the true alpha and the empty plate B the
    result is a·F + (1 − a)·N (the colour of the old scene gone from the edges); pasting fg_bg with
    the alpha alone would keep (1 − a)·a·(B − N)-sized fringes."""
    rng = np.random.default_rng(5)
    h, w = 40, 60
    fg = rng.uniform(0, 255, (h, w, 3))
    bg = rng.uniform(0, 255, (h, w, 3))
    new = rng.uniform(0, 255, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    a = np.clip(1.5 - np.hypot(yy - 20, xx - 30) / 8, 0, 1)  # solid core, a wide soft edge
    a8 = np.round(a * 255).astype(np.uint8)
    a = a8[..., None] / 255.0
    fg_bg = np.round(a * fg + (1 - a) * bg).astype(np.uint8)
    got = lift_onto(fg_bg, bg.round().astype(np.uint8), a8, new.round().astype(np.uint8)).astype(float)
    want = a * fg + (1 - a) * new
    edge = (a[..., 0] > 0.3) & (a[..., 0] < 1)
    assert edge.sum() > 50 and np.abs(got - want)[edge].max() < 4  # rounding of the 8-bit inputs only
    np.testing.assert_array_equal(got[a[..., 0] == 0], new.round()[a[..., 0] == 0])
    naive = a * fg_bg + (1 - a) * new
    assert np.abs(naive - want)[edge].mean() > 5 * np.abs(got - want)[edge].mean()


def test_the_cli_refuses_an_unknown_align_mode_before_reading_anything(tmp_path):
    from typer.testing import CliRunner

    from fgbg.cli import app

    done = CliRunner().invoke(app, ["predict", "a.png", "b.png", "--model", "missing.pt", "--align", "sometimes"])
    assert done.exit_code == 2 and "sometimes" in done.output and "auto" in done.output
    done = CliRunner().invoke(app, ["predict", "a.png", "b.png", "--model", "missing.pt", "--precision", "fp16"])
    assert done.exit_code == 2 and "fp16" in done.output and "bf16" in done.output


def test_predict_in_bf16_writes_the_float32_mask_on_the_cli(trained, tmp_path):
    """`fgbg predict --precision bf16` (a GPU's default, here on the CPU) computes otherwise (its 16-bit
    depth differs) and gives the float32 run's mask but for the odd pixel at the threshold."""
    from typer.testing import CliRunner

    from fgbg.cli import app

    rng = np.random.default_rng(2)
    bg = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    fg_bg = bg.copy()
    fg_bg[16:48, 24:64] = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(bg).save(tmp_path / "bg.png")
    Image.fromarray(fg_bg).save(tmp_path / "fg_bg.png")
    masks, depths = [], []
    for precision in ("bf16", "float32"):
        args = ["predict", str(tmp_path / "bg.png"), str(tmp_path / "fg_bg.png"), "--model", str(trained.model),
                "--out", str(tmp_path / precision), "--device", "cpu", "--precision", precision]  # fmt: skip
        done = CliRunner().invoke(app, args)
        assert done.exit_code == 0, done.output
        masks.append(np.asarray(Image.open(tmp_path / precision / "fg_bg_mask.png")) > 0)
        depths.append(np.asarray(Image.open(tmp_path / precision / "fg_bg_depth.png")))
    assert (masks[0] != masks[1]).mean() < 0.02 and not np.array_equal(*depths)


def test_full_size_outputs_stay_on_zero_one_where_the_network_and_the_filter_overshoot(tiny_stats, tmp_path):
    """predict_tensors (what `fgbg predict`, the served MLflow model and evaluate read) returns mask
    probability, depth and alpha on [0, 1]: the depth head is linear and the guided filter overshoots
    at edges, so both leave that range unless clamped."""
    import torch
    from conftest import exact_pair_model

    from fgbg.model import load_model
    from fgbg.predict import predict_tensors

    _, model_pt = exact_pair_model(tmp_path, tiny_stats, input_size=32)
    loaded = load_model(model_pt, torch.device("cpu"))
    x = torch.from_numpy(np.random.default_rng(0).random((2, 6, 96, 64), dtype=np.float32))
    with torch.no_grad():
        raw = loaded.net(torch.nn.functional.interpolate(x[:, :3], size=(48, 32), mode="area"),
                         torch.nn.functional.interpolate(x[:, 3:], size=(48, 32), mode="area"))  # fmt: skip
        assert raw.depth.min() < 0 or raw.depth.max() > 1  # the precondition: the head leaves [0, 1]
        for refine in (True, False):
            for out in predict_tensors(loaded, x[:, :3], x[:, 3:], refine=refine):
                assert 0 <= out.min() and out.max() <= 1


def test_a_bad_photo_is_named_and_the_rest_of_a_folder_is_still_predicted(trained, tmp_path):
    """A corrupt photo is one error naming the file; in folder mode the other pairs are still
    written, an fg_bg without a bg is named and skipped, and the run ends in an error counting the
    pairs not predicted. A path that does not exist is named as such."""
    from fgbg.images import BadImage

    pair = _photo_pair("clean", size=64)
    bg, fg_bg = _write_pair(tmp_path, pair.bg, pair.fg_bg, "good.png")
    _write_pair(tmp_path, pair.bg, pair.fg_bg, "bad.png")
    (tmp_path / "bg" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(pair.fg_bg).save(tmp_path / "fg_bg" / "lonely.png")
    with pytest.raises(BadImage, match=f"{tmp_path / 'bg' / 'bad.png'}: corrupt"):
        run_predict(trained.model, tmp_path / "bg" / "bad.png", tmp_path / "fg_bg" / "bad.png", tmp_path / "one", "cpu")
    logged = []
    with pytest.raises(ValueError, match=r"1 of 2 pairs not predicted .*bad\.png"):
        run_predict(trained.model, tmp_path / "bg", tmp_path / "fg_bg", tmp_path / "out", "cpu", log=logged.append)
    assert (tmp_path / "out" / "good_mask.png").is_file() and not (tmp_path / "out" / "bad_mask.png").exists()
    assert any("lonely.png" in line and "skipped" in line for line in logged)
    with pytest.raises(FileNotFoundError, match="missing.png: no such file"):
        run_predict(trained.model, bg.parent / "missing.png", fg_bg, tmp_path / "out", "cpu")


def test_what_predict_cannot_do_well_is_refused_before_any_output(trained, tmp_path):
    """Two fg_bg photos of one stem (shot1.jpg, shot1.png) would write the same shot1_mask.png: named,
    nothing written. A NaN or negative --align-above-px (NaN would never align) and a photo too small
    to align are refused, naming the option or the file; a transparent photo is warned about."""
    from fgbg.images import BadImage

    pair = _photo_pair("clean", size=64)
    _write_pair(tmp_path, pair.bg, pair.fg_bg, "shot1.png")
    _write_pair(tmp_path, pair.bg, pair.fg_bg, "shot1.jpg")
    with pytest.raises(ValueError, match=r"shot1\.jpg, .*shot1\.png: both would write shot1_mask\.png"):
        run_predict(trained.model, tmp_path / "bg", tmp_path / "fg_bg", tmp_path / "out", "cpu")
    assert not (tmp_path / "out").exists()
    one = (tmp_path / "bg" / "shot1.png", tmp_path / "fg_bg" / "shot1.png")
    for above in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="--align-above-px: a camera shift ≥ 0"):
            run_predict(trained.model, *one, tmp_path / "out", "cpu", align_above_px=above)
    logged = []
    rgba = np.dstack([pair.fg_bg, np.full(pair.fg_bg.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(one[1])
    run_predict(trained.model, *one, tmp_path / "out", "cpu", log=logged.append)
    assert any(f"{one[1]}: transparent pixels" in line for line in logged)
    tiny = _write_pair(tmp_path / "tiny", pair.bg[:12, :12].copy(), pair.fg_bg[:12, :12].copy(), "tiny.png")
    with pytest.raises(BadImage, match=f"{tiny[0]}: .*12"):
        run_predict(trained.model, *tiny, tmp_path / "out", "cpu")


def test_a_file_that_is_not_an_fgbg_model_is_named(trained, tmp_path):
    import torch

    from fgbg.model import load_model

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained.model.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    for path, reason in ((truncated, "not an fgbg model file"), (foreign, "no model, normaliser")):
        with pytest.raises(ValueError, match=f"{path}: .*{reason}"):
            load_model(path, torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_model(tmp_path / "none.pt", torch.device("cpu"))
