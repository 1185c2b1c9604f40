"""Losses: mask BCE + Dice + BCE on the outline's band; depth L1 + SSIM + image-gradient
(DenseDepth-style) + log-depth L1; alpha L1 + gradient L1; weights in params.

The band term (U-Net's border weight map, as a mean over the band): a pixel-mean BCE is decided by
the easy interior and background, so a network that must distrust small differences (capture
augmentation) draws the outline a pixel inside at little cost; averaged over the pixels within
`boundary_px` of the outline, that pixel is what the loss is about.

L1 on normalised inverse depth barely sees far pixels (at 50 m an error of 7 % is 0.001), yet the
test metrics (AbsRel, δ) are relative errors in metres: the log-depth term weighs every valid
pixel by its relative error, which is what those metrics measure."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fgbg.config import LossWeights
from fgbg.convention import DEPTH_VALID_MIN
from fgbg.convention import inverse_to_metres as to_metres
from fgbg.data import Batch
from fgbg.model import Outputs


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def boundary_band(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within `radius` px of the outline of a B×1×H×W {0, 1} mask (dilation − erosion), as 0/1."""
    k = 2 * radius + 1
    dilated = F.max_pool2d(mask, k, 1, radius)
    eroded = -F.max_pool2d(-mask, k, 1, radius)
    return dilated - eroded


def boundary_bce(logits: torch.Tensor, target: torch.Tensor, radius: int) -> torch.Tensor:
    """BCE averaged over the band around the outline (0 for a batch without any outline)."""
    band = boundary_band(target, radius)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * band).sum() / band.sum().clamp_min(1)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM map with a uniform window (inputs B×1×H×W)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pad = window // 2
    mu_x = F.avg_pool2d(x, window, 1, pad, count_include_pad=False)
    mu_y = F.avg_pool2d(y, window, 1, pad, count_include_pad=False)
    var_x = F.avg_pool2d(x * x, window, 1, pad, count_include_pad=False) - mu_x**2
    var_y = F.avg_pool2d(y * y, window, 1, pad, count_include_pad=False) - mu_y**2
    cov = F.avg_pool2d(x * y, window, 1, pad, count_include_pad=False) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(pred) - dx(target)).abs().mean() + (dy(pred) - dy(target)).abs().mean()


def log_depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |log z_pred − log z_gt| (z in metres) over pixels that have depth (not sky)."""
    valid = target >= DEPTH_VALID_MIN
    err = (to_metres(pred).log() - to_metres(target).log()).abs()
    return (err * valid).sum() / valid.sum().clamp_min(1)


def total_loss(out: Outputs, batch: Batch, w: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum and its parts (as floats, for logging). The alpha terms (BackgroundMattingV2's
    L1 on alpha and on its gradient) need the batch's matte; terms weighted 0 are not computed."""
    mask_logits, depth, alpha = (t.float() for t in out)
    mask, depth_gt = batch.mask, batch.depth
    terms = {
        "bce": lambda: F.binary_cross_entropy_with_logits(mask_logits, mask),
        "dice": lambda: dice_loss(mask_logits, mask),
        "boundary": lambda: boundary_bce(mask_logits, mask, w.boundary_px),
        "l1": lambda: (depth - depth_gt).abs().mean(),
        "ssim": lambda: ((1 - ssim(depth, depth_gt)) / 2).clamp(0, 1).mean(),
        "grad": lambda: gradient_loss(depth, depth_gt),
        "log_depth": lambda: log_depth_loss(depth, depth_gt),
        "alpha_l1": lambda: (alpha - batch.alpha).abs().mean(),
        "alpha_grad": lambda: gradient_loss(alpha, batch.alpha),
    }
    if batch.alpha is None and (w.alpha_l1 or w.alpha_grad):
        raise ValueError("the alpha loss needs the batch's alpha matte")
    parts = {k: term() for k, term in terms.items() if getattr(w, k)}
    total = sum(getattr(w, k) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}
