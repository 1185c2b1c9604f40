"""Scoring a split at the network's size: the per-batch predictions, losses and metrics that
training validates with each epoch and the `evaluate` stage reports, and the prediction sheets
both draw. Kept apart from evaluate.py so training does not depend on `predict`'s code."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from fgbg.config import LossWeights
from fgbg.convention import unit_to_u16
from fgbg.data import Batch, ShardSamples, make_loader, to_device
from fgbg.images import contact_sheet
from fgbg.losses import total_loss
from fgbg.metrics import alpha_metrics, depth_metrics, mask_metrics
from fgbg.model import Outputs, infer


def predictions(
    net, dataset: ShardSamples, bgs: torch.Tensor, device: torch.device, batch_size: int, workers: int, size: int,
    loss_weights: LossWeights,
) -> Iterator[tuple[list[str], Batch, Outputs, torch.Tensor, dict[str, torch.Tensor]]]:  # fmt: skip
    """(keys, batch, outputs, batch loss, per-sample metrics) for every batch of a split, the pairs
    read as composed (exact)."""
    for raw in make_loader(dataset, batch_size, workers, device):
        batch = to_device(raw, bgs, device, size)
        yield list(raw[-1]), batch, *score_batch(net, batch, loss_weights, batch.exactness())


def score_batch(
    net, batch: Batch, loss_weights: LossWeights, exact: torch.Tensor
) -> tuple[Outputs, torch.Tensor, dict[str, torch.Tensor]]:
    """The network's outputs, the batch loss and per-sample metrics, each pair read as exact or not
    (`exact`, one flag per pair, for a model with `exact_input`)."""
    out = infer(net, batch.bg, batch.fg_bg, exact)
    loss, _ = total_loss(out, batch, loss_weights)
    per = {
        **mask_metrics((out.mask_logits > 0).float(), batch.mask),
        **depth_metrics(out.depth, batch.depth),
        **alpha_metrics(out.alpha, batch.alpha, batch.mask),
    }
    return out, loss, per


def prediction_sheet(batch: Batch, out: Outputs, n: int) -> np.ndarray:
    """bg | fg_bg | mask gt | mask pred | alpha gt | alpha pred | depth gt | depth pred for the first n
    samples."""

    def img(t):
        return (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()

    rows = []
    for i in range(min(n, batch.bg.shape[0])):
        pred_mask = (out.mask_logits[i] > 0).float()
        rows.append([img(batch.bg[i]), img(batch.fg_bg[i]), img(batch.mask[i])[..., 0], img(pred_mask)[..., 0],
                     img(batch.alpha[i])[..., 0], img(out.alpha[i])[..., 0],
                     unit_to_u16(batch.depth[i, 0]), unit_to_u16(out.depth[i, 0])])  # fmt: skip
    return contact_sheet(rows)


@torch.inference_mode()
def evaluate_split(net, dataset, bgs, device, batch_size, workers, size, loss_weights, sheet_samples=6) -> dict:
    """Mean loss and metrics over a split; the first batch's predictions as a contact sheet."""
    was_training = net.training
    net.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # per metric: a sample without non-sky pixels has no depth metrics (NaN)
    sheet = None
    for _, batch, out, loss, per in predictions(net, dataset, bgs, device, batch_size, workers, size, loss_weights):
        per = {"loss": torch.full((batch.bg.shape[0],), float(loss)), **per}
        for k, v in per.items():
            scored = ~torch.isnan(v)
            sums[k] = sums.get(k, 0.0) + float(v[scored].sum())
            counts[k] = counts.get(k, 0) + int(scored.sum())
        if sheet is None:
            sheet = prediction_sheet(batch, out, sheet_samples)
    net.train(was_training)
    return {**{k: v / counts[k] if counts[k] else float("nan") for k, v in sums.items()}, "sheet": sheet}
