"""evaluate: test-split metrics that are what they say, per sample and on average, and the sheet."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fgbg.config import EvaluateParams
from fgbg.convention import DEPTH_VALID_MIN, inverse_to_metres
from fgbg.data import Batch, ShardSamples, bg_table, make_loader, to_device
from fgbg.evaluate import run_evaluate
from fgbg.model import Outputs, infer, load_model
from fgbg.scoring import prediction_sheet


@pytest.fixture(scope="module")
def evaluated(trained, tiny_data, tmp_path_factory):
    prepared, composites, depth, _ = tiny_data
    out = tmp_path_factory.mktemp("metrics")
    result = run_evaluate(EvaluateParams(batch_size=8, sheet_samples=4), trained.model, prepared, composites, depth,
                          out, device="cpu", mlflow=trained.params.mlflow, log=lambda *a: None)  # fmt: skip
    return result, out


@pytest.fixture(scope="module")
def test_predictions(trained, tiny_data):
    """[(keys, batch, outputs)] of the test split at the model's input size, predicted here once, as
    evaluate reads the pairs (exact), for the tests that recompute what evaluate wrote."""
    prepared, composites, depth, _ = tiny_data
    dev = torch.device("cpu")
    loaded = load_model(trained.model, dev)
    batches = []
    with torch.no_grad():
        for raw in make_loader(ShardSamples(composites, depth, "test", shuffle=False), 8, 0, dev):
            batch = to_device(raw, bg_table(prepared, dev), dev, loaded.input_size)
            batches.append((list(raw[-1]), batch, infer(loaded.net, batch.bg, batch.fg_bg, batch.exactness())))
    return batches


def test_per_sample_metrics_are_recomputed_independently(evaluated, test_predictions):
    """Each CSV row is the IoU, depth AbsRel / δ1 and alpha SAD/MSE of that key's prediction, counted
    here with NumPy (depth against the stored map, in metres, sky left out)."""
    result, out = evaluated
    rows = {r["key"]: r for r in csv.DictReader((out / "test_samples.csv").open())}
    checked = 0
    for keys, batch, out in test_predictions:
        pred, alpha = (out.mask_logits > 0).numpy(), out.alpha.double().numpy()
        gt, gt_alpha = batch.mask.numpy() > 0.5, batch.alpha.double().numpy()
        z, z_gt = (inverse_to_metres(t.double().numpy()) for t in (out.depth, batch.depth))
        has_depth = batch.depth.numpy() >= DEPTH_VALID_MIN
        for key, p, g, a, ga, d, dg, v in zip(keys, pred, gt, alpha, gt_alpha, z, z_gt, has_depth, strict=True):
            if v.any():
                absrel = (np.abs(d - dg) / dg)[v].mean()
                assert float(rows[key]["absrel"]) == pytest.approx(absrel, rel=1e-3), key
                delta1 = (np.maximum(d / dg, dg / d)[v] < 1.25).mean()
                assert float(rows[key]["delta1"]) == pytest.approx(delta1, abs=2 / v.sum()), key
            union = (p | g).sum()
            iou = (p & g).sum() / union if union else 1.0
            assert float(rows[key]["iou"]) == pytest.approx(iou, abs=1e-5), key
            assert float(rows[key]["sad"]) == pytest.approx(np.abs(a - ga).sum() / 1000, rel=1e-4, abs=1e-7)
            assert float(rows[key]["mse"]) == pytest.approx(((a - ga) ** 2).mean(), rel=1e-4, abs=1e-9)
            checked += 1
    assert checked == result["samples"] == len(rows) > 0


def test_test_json_is_the_mean_of_the_per_sample_table(evaluated):
    result, out = evaluated
    assert json.loads((out / "test.json").read_text()) == result
    rows = list(csv.DictReader((out / "test_samples.csv").open()))
    assert list(rows[0]) == ["key", "iou", "dice", "boundary_f", "absrel", "rmse", "delta1", "delta2", "delta3", "ssim",
                             "sad", "mse", "grad", "iou_from_alpha"]  # fmt: skip
    for k in ("iou", "dice", "absrel", "delta1", "sad", "grad"):
        assert result[k] == pytest.approx(np.mean([float(r[k]) for r in rows]), abs=1e-5)


def test_sheet_shows_the_best_and_worst_samples(evaluated, trained, test_predictions):
    _, out = evaluated
    sheet = np.asarray(Image.open(out / "test_sheet.png"))
    size = load_model(trained.model, torch.device("cpu")).input_size
    assert sheet.shape[0] == 4 * size  # 2 best + 2 worst rows of `size` px
    assert sheet.shape[1] == 8 * size + 7 * 2  # bg | fg_bg | mask | pred | alpha | pred | depth | pred
    ious = {r["key"]: float(r["iou"]) for r in csv.DictReader((out / "test_samples.csv").open())}
    row_of = {}  # each test sample's sheet row, drawn here from its own prediction
    for keys, batch, pred in test_predictions:
        for i, key in enumerate(keys):
            one = Batch(*(t[i : i + 1] for t in (batch.bg, batch.fg_bg, batch.mask, batch.depth, batch.alpha)))
            row_of[key] = prediction_sheet(one, Outputs(*(t[i : i + 1] for t in pred)), 1)
    shown = [next(k for k, row in row_of.items() if np.array_equal(row, sheet[r * size : (r + 1) * size]))
             for r in range(4)]  # fmt: skip
    ranked = sorted(ious.values(), reverse=True)
    assert [ious[k] for k in shown] == ranked[:2] + ranked[-2:]  # best first, worst last


def test_an_exact_input_model_is_scored_as_composed_and_as_a_capture(tiny_data, tmp_path):
    """The test split's pairs are exact, so `iou` is with the flag on; `iou_as_capture` is the same
    pairs with the model told they are real captures (predict's default), recomputed here."""
    from conftest import tiny_train_params, train_tiny

    params = tiny_train_params(tmp_path, epochs=1, exact_input=True, augment={"clean": 0.5})
    train_tiny(params, tiny_data, tmp_path / "models")
    prepared, composites, depth, _ = tiny_data
    model = tmp_path / "models" / "model.pt"
    result = run_evaluate(EvaluateParams(batch_size=8), model, prepared, composites, depth, tmp_path / "metrics",
                          device="cpu", log=lambda *a: None)  # fmt: skip
    dev = torch.device("cpu")
    loaded = load_model(model, dev)
    test = ShardSamples(composites, depth, "test", shuffle=False)
    ious = {True: [], False: []}
    with torch.no_grad():
        for raw in make_loader(test, 8, 0, dev):
            batch = to_device(raw, bg_table(prepared, dev), dev, loaded.input_size)
            for exact in ious:
                flags = torch.full((batch.bg.shape[0],), exact)
                pred = (infer(loaded.net, batch.bg, batch.fg_bg, flags).mask_logits > 0).numpy()
                for p, g in zip(pred, batch.mask.numpy() > 0.5, strict=True):
                    union = (p | g).sum()
                    ious[exact].append((p & g).sum() / union if union else 1.0)
    assert result["iou"] == pytest.approx(np.mean(ious[True]), abs=1e-5)
    assert result["iou_as_capture"] == pytest.approx(np.mean(ious[False]), abs=1e-5)
    assert result["iou"] != result["iou_as_capture"]


def test_full_size_iou_is_what_predict_gives_on_the_stored_pairs(evaluated, trained, tiny_data):
    """`iou_full_size`: each test pair at its stored size through `fgbg predict`'s own function."""
    from fgbg.predict import predict_batch

    result, _ = evaluated
    prepared, composites, depth, _ = tiny_data
    dev = torch.device("cpu")
    loaded = load_model(trained.model, dev)
    ious = []
    for raw in make_loader(ShardSamples(composites, depth, "test", shuffle=False), 8, 0, dev):
        batch = to_device(raw, bg_table(prepared, dev), dev)
        as_photos = [(t.permute(0, 2, 3, 1) * 255).round().byte().numpy() for t in (batch.bg, batch.fg_bg)]
        for (mask, _, _), truth in zip(predict_batch(loaded, *as_photos, exact=True), batch.mask, strict=True):
            p, g = mask > 127, truth[0].numpy() > 0.5
            ious.append((p & g).sum() / (p | g).sum() if (p | g).any() else 1.0)
    assert result["iou_full_size"] == pytest.approx(np.mean(ious), abs=1e-4)
