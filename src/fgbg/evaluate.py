"""`evaluate` stage: the test split (unseen bgs and unseen fgs) → metrics, per-sample table, sheet."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from fgbg.config import EvaluateParams, resolve_device
from fgbg.data import ShardSamples, bg_table, make_loader, to_device
from fgbg.images import atomic_write_bytes, encode_png
from fgbg.losses import total_loss
from fgbg.metrics import DEPTH_METRICS, MASK_METRICS, depth_metrics, mask_metrics
from fgbg.train import forward, load_model, prediction_sheet

SAMPLE_FIELDS = ["key", *MASK_METRICS, *DEPTH_METRICS]


@torch.inference_mode()
def run_evaluate(
    params: EvaluateParams, model_path: Path, prepared_dir: Path, composites_dir: Path, depth_dir: Path,
    out_dir: Path, device: str = "auto", log=print,
) -> dict:  # fmt: skip
    """Write test.json (means), test_samples.csv (per sample) and test_sheet.png (best, worst)."""
    out_dir = Path(out_dir)
    dev = resolve_device(device)
    model, norm, tparams, saved = load_model(Path(model_path), dev)
    test = ShardSamples(composites_dir, depth_dir, "test", shuffle=False)
    if not test.names:
        raise ValueError(f"{composites_dir}: no test shards (check split.test)")
    bgs = bg_table(prepared_dir, dev)
    rows, loss_sum, extremes = [], 0.0, []
    for raw in make_loader(test, params.batch_size, tparams.workers, dev):
        batch = to_device(raw, bgs, dev, tparams.image_size)
        mask_logits, depth = forward(model, norm, batch, dev)
        loss, _ = total_loss(mask_logits, depth, batch.mask, batch.depth, tparams.loss)
        loss_sum += float(loss) * len(raw[4])
        per = {**mask_metrics((mask_logits > 0).float(), batch.mask), **depth_metrics(depth, batch.depth)}
        columns = torch.stack([per[k] for k in SAMPLE_FIELDS[1:]], 1).cpu().tolist()  # one copy per batch
        rows.extend({"key": key, **dict(zip(SAMPLE_FIELDS[1:], values, strict=True))}
                    for key, values in zip(raw[4], columns, strict=True))  # fmt: skip
        extremes = _keep_extremes(extremes, batch, mask_logits, depth, per["iou"], params.sheet_samples)
    n = len(rows)
    result = {
        "samples": n,
        "loss": loss_sum / n,
        **{k: float(np.mean([r[k] for r in rows])) for k in SAMPLE_FIELDS[1:]},
    }
    result = {k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}
    atomic_write_bytes(out_dir / "test.json", json.dumps(result, indent=2).encode() + b"\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SAMPLE_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    atomic_write_bytes(out_dir / "test_samples.csv", buf.getvalue().encode())
    sheet = _extremes_sheet(extremes)
    atomic_write_bytes(out_dir / "test_sheet.png", encode_png(sheet, 6))
    _log_to_mlflow(tparams, saved.get("mlflow_run_id"), result, out_dir)
    log(json.dumps(result))
    return result


def _keep_extremes(kept: list, batch, mask_logits, depth, iou, k: int) -> list:
    """The k/2 best and k/2 worst samples by IoU so far, as small CPU tensors."""
    half = max(1, k // 2)
    order = iou.argsort(descending=True)
    picked = order if order.numel() <= 2 * half else torch.cat([order[:half], order[-half:]])
    for i in picked.tolist():  # only this batch's candidates leave the device
        item = (float(iou[i]), *(t[i : i + 1].cpu() for t in (batch.bg, batch.fg_bg, batch.mask, batch.depth,
                                                             mask_logits, depth)))  # fmt: skip
        kept.append(item)
    kept.sort(key=lambda t: -t[0])
    return kept if len(kept) <= 2 * half else kept[:half] + kept[-half:]


def _extremes_sheet(kept: list) -> np.ndarray:
    from fgbg.data import Batch

    rows = []
    for _, bg, fg_bg, mask, depth_gt, logits, depth in kept:
        rows.append(prediction_sheet(Batch(bg, fg_bg, mask, depth_gt), logits, depth, 1))
    return np.concatenate(rows, axis=0)


def _log_to_mlflow(tparams, run_id: str | None, result: dict, out_dir: Path) -> None:
    """Test metrics and pictures go into the training run, so MLflow shows one story per model."""
    if not run_id:
        return
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(
        tparams.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    )
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in result.items()})
        for name in ("test.json", "test_samples.csv", "test_sheet.png"):
            mlflow.log_artifact(str(out_dir / name), "evaluate")
