"""Metrics and losses against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgbg.convention import inverse_to_metres
from fgbg.losses import log_depth_loss
from fgbg.metrics import alpha_metrics, depth_metrics, gaussian_gradient_kernels, gradient_magnitude, mask_metrics


def test_mask_metrics_match_hand_computed_values():
    pred = torch.zeros(1, 1, 4, 4)
    gt = torch.zeros(1, 1, 4, 4)
    pred[..., :2, :2] = 1  # 4 px
    gt[..., :2, :3] = 1  # 6 px, 4 shared
    m = mask_metrics(pred, gt)
    assert m["iou"].item() == pytest.approx(4 / 6) and m["dice"].item() == pytest.approx(8 / 10)
    assert mask_metrics(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))["iou"].item() == 1.0


def test_boundary_f_forgives_outlines_within_its_tolerance_and_no_further():
    """Boundary F (README: 2 px tolerance): an outline 1 or 2 px off is a perfect 1, 3 px off is not;
    with no tolerance 1 px off is not either."""
    gt = torch.zeros(1, 1, 40, 40)
    gt[..., 10:30, 10:30] = 1

    def shifted(px: int) -> torch.Tensor:
        return torch.roll(gt, shifts=(px, px), dims=(2, 3))

    bf = {px: mask_metrics(shifted(px), gt)["boundary_f"].item() for px in (0, 1, 2, 3)}
    assert bf[0] == bf[1] == bf[2] == 1.0 and bf[3] < 0.9
    assert mask_metrics(shifted(1), gt, tolerance=0)["boundary_f"].item() < 0.5


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


def test_an_all_sky_sample_has_no_depth_scores_and_the_means_skip_it(monkeypatch):
    """Depth metrics are over non-sky pixels: a sample with none is NaN (not a perfect 0 AbsRel)
    and the split's mean is over the samples that have them."""
    import fgbg.scoring

    gt = torch.full((2, 1, 2, 2), 0.5)
    gt[1] = 0.0  # all sky
    pred = torch.full((2, 1, 2, 2), 0.4)
    d = depth_metrics(pred, gt)
    for k in ("absrel", "rmse", "delta1", "delta2", "delta3"):
        assert torch.isnan(d[k][1]) and d[k][0] == pytest.approx(depth_metrics(pred[:1], gt[:1])[k].item())
    assert not torch.isnan(d["ssim"]).any()  # over the whole map, sky included

    per_batch = [{"absrel": torch.tensor([0.1, torch.nan]), "iou": torch.tensor([0.5, 1.0])},
                 {"absrel": torch.tensor([0.3]), "iou": torch.tensor([0.0])}]  # fmt: skip

    class Batch:  # what evaluate_split reads of a batch
        def __init__(self, n):
            self.bg = torch.zeros(n, 3, 1, 1)

    def fake_predictions(*args):
        for per in per_batch:
            yield [], Batch(len(per["iou"])), None, torch.tensor(2.0), per

    monkeypatch.setattr(fgbg.scoring, "predictions", fake_predictions)
    monkeypatch.setattr(fgbg.scoring, "prediction_sheet", lambda *a: None)
    means = fgbg.scoring.evaluate_split(torch.nn.Identity(), None, None, "cpu", 2, 0, 8, None)
    assert means["absrel"] == pytest.approx(0.2) and means["iou"] == pytest.approx(0.5) and means["loss"] == 2.0


def test_alpha_metrics_match_hand_computed_values():
    gt = torch.zeros(1, 1, 21, 21)
    pred = gt.clone()
    pred[..., 10, 10] = 0.5  # an impulse far from the border: every filter response is a kernel value
    pred[..., 0, :4] = 0.25  # and 4 px off by 0.25
    m = alpha_metrics(pred, gt, (gt >= 0.5).float())
    assert m["sad"].item() == pytest.approx((0.5 + 4 * 0.25) / 1000)
    assert m["mse"].item() == pytest.approx((0.25 + 4 * 0.0625) / 441)
    # gradient error of an impulse alone: Σ c²(hx² + hy²) = 2c² (unit-L2 kernels, DIM's gaussgradient)
    impulse = gt.clone()
    impulse[..., 10, 10] = 0.5
    assert alpha_metrics(impulse, gt, gt)["grad"].item() == pytest.approx(2 * 0.25 / 1000, rel=1e-5)
    assert alpha_metrics(gt, gt, gt)["grad"].item() == 0.0
    k = gaussian_gradient_kernels(1.4)
    assert k.shape == (2, 1, 9, 9)  # DIM: halfsize = ceil(σ·sqrt(−2 ln(sqrt(2π)·σ·0.01))) = 4
    # the alpha ≥ 0.5 mask: the impulse pixel only, against an empty gt mask → IoU 0
    assert m["iou_from_alpha"].item() == 0.0


def test_gradient_of_a_ramp_is_its_slope_times_the_kernel_gain():
    """Inside a linear ramp α = s·x the Gaussian derivative returns s·Σ_j u_j·hx(u) (a constant)."""
    s = 0.02
    ramp = (torch.arange(40, dtype=torch.float32) * s).expand(1, 1, 30, 40).contiguous()
    k = gaussian_gradient_kernels(1.4)[0, 0].double()
    u = torch.arange(-4, 5, dtype=torch.float64)
    gain = abs(float((k * u[None, :]).sum()))
    got = gradient_magnitude(ramp)[0, 0, 10:20, 10:30]
    torch.testing.assert_close(got, torch.full_like(got, s * gain), rtol=1e-4, atol=1e-7)
