"""`evaluate` stage: the test split (unseen bgs and unseen fgs) → metrics, per-sample table, sheet;
at the network's size (fgbg.scoring, as training validates) and at the data's own size through
`fgbg predict`'s path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fgbg.config import EvaluateParams, MlflowParams, Precision, resolve_device
from fgbg.data import Batch, ShardSamples, bg_table, make_loader, resized, to_device
from fgbg.metrics import ALPHA_METRICS, DEPTH_METRICS, MASK_METRICS, mask_metrics
from fgbg.model import Outputs, infer, load_model
from fgbg.predict import predict_tensors
from fgbg.scoring import prediction_sheet, score_batch
from fgbg.tracking import record_results

SAMPLE_FIELDS = ["key", *MASK_METRICS, *DEPTH_METRICS, *ALPHA_METRICS]


@torch.inference_mode()
def run_evaluate(
    params: EvaluateParams, model_path: Path, prepared_dir: Path, composites_dir: Path, depth_dir: Path,
    out_dir: Path, device: str = "auto", mlflow: MlflowParams | None = None, log=print, precision: Precision = "auto",
) -> dict:  # fmt: skip
    """Write test.json (means), test_samples.csv (per sample) and test_sheet.png (best, worst);
    log them into the MLflow run that trained the model, when it is in `mlflow`'s store."""
    out_dir = Path(out_dir)
    dev = resolve_device(device)
    loaded = load_model(Path(model_path), dev, precision)
    test = ShardSamples(composites_dir, depth_dir, "test", shuffle=False)
    if not test.names:
        raise ValueError(f"{composites_dir}: no test shards (check split.test)")
    bgs = bg_table(prepared_dir, dev)
    rows, loss_sum, extremes, capture_ious, full_size_ious = [], 0.0, [], [], []
    tp = loaded.params
    for raw in make_loader(test, params.batch_size, tp.workers, dev):  # one read of the shards
        keys, full = list(raw[-1]), to_device(raw, bgs, dev)
        batch = resized(full, loaded.input_size)
        out, loss, per = score_batch(loaded.net, batch, tp.loss, batch.exactness())
        loss_sum += float(loss) * len(keys)
        columns = torch.stack([per[k] for k in SAMPLE_FIELDS[1:]], 1).cpu().tolist()  # one copy per batch
        rows.extend({"key": key, **dict(zip(SAMPLE_FIELDS[1:], values, strict=True))}
                    for key, values in zip(keys, columns, strict=True))  # fmt: skip
        extremes = _keep_extremes(extremes, batch, out, per["iou"], params.sheet_samples)
        if tp.exact_input:  # the same pairs with the model told they are real captures (predict's default)
            as_capture = infer(loaded.net, batch.bg, batch.fg_bg, torch.zeros_like(batch.exactness()))
            capture_ious.append(mask_metrics((as_capture.mask_logits > 0).float(), batch.mask)["iou"].cpu())
        full_size_ious.append(full_size_iou(loaded, full))
    n = len(rows)
    result = {
        "samples": n,
        "loss": loss_sum / n,
        **{k: _mean_of_scored([r[k] for r in rows]) for k in SAMPLE_FIELDS[1:]},
    }
    if capture_ious:
        result["iou_as_capture"] = float(torch.cat(capture_ious).mean())
    result["iou_full_size"] = float(torch.cat(full_size_ious).mean())
    result = {k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}
    sheet = np.concatenate([prediction_sheet(b, o, 1) for _, b, o in extremes], axis=0)
    record_results(out_dir, "test", result, rows, SAMPLE_FIELDS, sheet, mlflow, Path(model_path))
    log(json.dumps(result))
    return result


def _mean_of_scored(values: list[float]) -> float:
    """The mean over the samples that have the metric (depth metrics are NaN where gt is all sky)."""
    scored = [v for v in values if not np.isnan(v)]
    return float(np.mean(scored)) if scored else float("nan")


def full_size_iou(loaded, batch: Batch) -> torch.Tensor:
    """Per-sample mask IoU at the data's own size through `fgbg predict`'s path (network at its
    input size, outputs refined to full size), with the pairs read as what they are, exact (as
    `iou`, and as `fgbg predict --exact` reads them): what a user predicting these renders gets."""
    prob, _, _ = predict_tensors(loaded, batch.bg, batch.fg_bg, batch.exactness())
    return mask_metrics((prob >= 0.5).float(), batch.mask)["iou"].cpu()


def _keep_extremes(kept: list, batch: Batch, out: Outputs, iou: torch.Tensor, k: int) -> list:
    """The k/2 best and k/2 worst samples by IoU so far, as small CPU tensors."""
    half = max(1, k // 2)
    order = iou.argsort(descending=True)
    picked = order if order.numel() <= 2 * half else torch.cat([order[:half], order[-half:]])
    for i in picked.tolist():  # only this batch's candidates leave the device
        one = slice(i, i + 1)
        sample = Batch(*(t[one].cpu() for t in (batch.bg, batch.fg_bg, batch.mask, batch.depth, batch.alpha)))
        kept.append((float(iou[i]), sample, Outputs(*(t[one].cpu() for t in out))))
    kept.sort(key=lambda t: -t[0])
    return kept if len(kept) <= 2 * half else kept[:half] + kept[-half:]
