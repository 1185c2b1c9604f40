"""Metrics and losses against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgbg.convention import inverse_to_metres
from fgbg.losses import log_depth_loss
from fgbg.metrics import depth_metrics, mask_metrics


def test_mask_metrics_match_hand_computed_values():
    pred = torch.zeros(1, 1, 4, 4)
    gt = torch.zeros(1, 1, 4, 4)
    pred[..., :2, :2] = 1  # 4 px
    gt[..., :2, :3] = 1  # 6 px, 4 shared
    m = mask_metrics(pred, gt)
    assert m["iou"].item() == pytest.approx(4 / 6) and m["dice"].item() == pytest.approx(8 / 10)
    assert mask_metrics(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))["iou"].item() == 1.0


def test_depth_metrics_and_log_loss_match_hand_computed_values():
    def inv(m):  # depth in metres → the stored normalised inverse depth
        return (1 / m - 1 / 200) / (1 - 1 / 200)

    gt_d = torch.tensor([[[[inv(2.0), inv(4.0)], [inv(10.0), 0.0]]]])
    pred_d = torch.tensor([[[[inv(2.0), inv(4.8)], [inv(20.0), 0.9]]]])  # sky pixel: ignored
    assert inverse_to_metres(gt_d)[0, 0, 1, 0].item() == pytest.approx(10.0)
    d = depth_metrics(pred_d, gt_d)
    assert d["absrel"].item() == pytest.approx((0 + 0.8 / 4 + 10 / 10) / 3, rel=1e-4)
    assert d["delta1"].item() == pytest.approx(2 / 3)  # ratios 1.0 and 1.2 pass, 2.0 does not
    assert d["delta3"].item() == pytest.approx(2 / 3)  # 2.0 > 1.25³
    assert d["rmse"].item() == pytest.approx(np.sqrt((0 + 0.64 + 100) / 3), rel=1e-4)
    # |log 2 − log 2| + |log 4.8 − log 4| + |log 20 − log 10|, sky ignored
    want = (0 + np.log(1.2) + np.log(2.0)) / 3
    assert log_depth_loss(pred_d, gt_d).item() == pytest.approx(want, rel=1e-4)
