"""Losses: the outline band term charges errors at the object's outline, and only there."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fgbg.config import LossWeights
from fgbg.data import Batch
from fgbg.losses import boundary_band, boundary_bce, total_loss
from fgbg.model import Outputs


def _blob(h: int = 48, w: int = 48) -> np.ndarray:
    """A {0, 1} object touching the image's left edge, with a concave notch."""
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (14, 24), (18, 12), 15, 0, 360, 1, -1)
    m[20:28, 24:34] = 0
    return m


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32))[None, None]


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_band_is_the_pixels_within_radius_of_the_outline(radius):
    m = _blob()
    kernel = np.ones((2 * radius + 1,) * 2, np.uint8)
    # OpenCV's own morphology, an independent implementation; the image border is not an outline
    dilated = cv2.dilate(m, kernel, borderType=cv2.BORDER_REPLICATE)
    eroded = cv2.erode(m, kernel, borderType=cv2.BORDER_REPLICATE)
    expected = dilated - eroded
    got = boundary_band(_t(m), radius)[0, 0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got[24, 0] == 0  # where the object meets the image border there is no outline


def test_an_outline_drawn_inside_costs_more_than_as_many_wrong_pixels_far_away():
    """Pixel-mean BCE charges both the same; the band term only the one at the outline."""
    m = _blob()
    inside = cv2.erode(m, np.ones((3, 3), np.uint8))  # the outline one pixel inside
    wrong = int((m != inside).sum())
    far = m.copy()
    far.reshape(-1)[np.flatnonzero(m.reshape(-1) == 0)[-wrong:]] = 1  # as many false positives, bottom right
    assert (far != m).sum() == wrong and boundary_band(_t(m), 2)[0, 0].numpy()[far != m].sum() == 0

    def logits(pred: np.ndarray) -> torch.Tensor:
        return _t(pred) * 8 - 4

    target = _t(m)
    plain = [float(F.binary_cross_entropy_with_logits(logits(p), target)) for p in (inside, far)]
    band = [float(boundary_bce(logits(p), target, 2)) for p in (inside, far)]
    assert plain[0] == pytest.approx(plain[1], rel=1e-6)
    assert band[0] > 5 * band[1]


def test_band_weight_zero_leaves_the_loss_as_it_was_and_an_empty_mask_costs_nothing_extra():
    m = torch.zeros(2, 1, 16, 16)
    m[0, :, 4:10, 4:10] = 1
    out = Outputs(torch.randn(2, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    rand = torch.rand
    batch = Batch(rand(2, 3, 16, 16), rand(2, 3, 16, 16), m, rand(2, 1, 16, 16), rand(2, 1, 16, 16))
    with_band, parts = total_loss(out, batch, LossWeights())  # on by default
    without, parts_off = total_loss(out, batch, LossWeights(boundary=0.0))
    assert "boundary" in parts and "boundary" not in parts_off and "boundary_px" not in parts
    assert float(with_band - without) == pytest.approx(parts["boundary"], rel=1e-5)
    assert float(boundary_bce(torch.randn(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), 2)) == 0.0


def test_each_term_compares_its_output_with_its_own_target():
    """A perfect prediction costs ~0 in every term; spoiling one output (depth, mask or alpha) raises
    exactly that output's terms: each term reads the right tensors, against the ground truth."""
    m = _t(_blob())
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    depth_gt = (0.2 + 0.5 * yy + 0.1 * torch.sin(6 * xx))[None, None]
    alpha_gt = F.avg_pool2d(m, 3, 1, 1)  # a soft edge
    rgb = torch.zeros(1, 3, 48, 48)
    batch = Batch(rgb, rgb, m, depth_gt, alpha_gt)
    perfect = Outputs(m * 16 - 8, depth_gt.clone(), alpha_gt.clone())
    w = LossWeights(bce=1, dice=1, boundary=1, l1=1, ssim=1, grad=1, log_depth=1, alpha_l1=1, alpha_grad=1)
    _, base = total_loss(perfect, batch, w)
    assert set(base) == {"bce", "dice", "boundary", "l1", "ssim", "grad", "log_depth", "alpha_l1", "alpha_grad"}
    assert all(v < 1e-3 for v in base.values()), base
    spoiled = {
        "depth": perfect._replace(depth=depth_gt * 0.7 + 0.05 * torch.cos(9 * xx)[None, None]),
        "mask": perfect._replace(mask_logits=-perfect.mask_logits),
        "alpha": perfect._replace(alpha=1 - alpha_gt),
    }
    owners = {"depth": {"l1", "ssim", "grad", "log_depth"}, "mask": {"bce", "dice", "boundary"},
              "alpha": {"alpha_l1", "alpha_grad"}}  # fmt: skip
    for output, out in spoiled.items():
        _, parts = total_loss(out, batch, w)
        raised = {k for k, v in parts.items() if v > base[k] + 0.01}
        assert raised == owners[output], (output, parts)
