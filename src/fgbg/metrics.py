"""Per-sample test metrics. Mask: IoU, Dice, boundary F. Depth: AbsRel, RMSE (metres) and
δ<1.25^k on depth decoded through the project's fixed convention (inverse depth on [0, 1] ↔
1–200 m), over pixels that are not sky (gt > 0); SSIM on the inverse-depth maps themselves.
Alpha: the matting literature's SAD, MSE and gradient error (Rhemann et al. 2009; Deep Image
Matting's evaluation code), over the whole image (there is no trimap) at the size evaluated."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fgbg.convention import DEPTH_VALID_MIN
from fgbg.convention import inverse_to_metres as to_metres
from fgbg.losses import ssim

MASK_METRICS = ("iou", "dice", "boundary_f")
DEPTH_METRICS = ("absrel", "rmse", "delta1", "delta2", "delta3", "ssim")
ALPHA_METRICS = ("sad", "mse", "grad", "iou_from_alpha")


def _erode(m: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-m, 3, 1, 1)


def _dilate(m: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(m, 2 * radius + 1, 1, radius)


def mask_metrics(pred: torch.Tensor, gt: torch.Tensor, tolerance: int = 2) -> dict[str, torch.Tensor]:
    """pred, gt: B×1×H×W in {0, 1} → per-sample IoU, Dice, boundary F-score (tolerance in px)."""
    inter = (pred * gt).flatten(1).sum(1)
    ps, gs = pred.flatten(1).sum(1), gt.flatten(1).sum(1)
    union = ps + gs - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    dice = torch.where(ps + gs > 0, 2 * inter / (ps + gs).clamp_min(1), torch.ones_like(union))
    bp, bg = pred - _erode(pred), gt - _erode(gt)
    hit_p = (bp * _dilate(bg, tolerance)).flatten(1).sum(1)
    hit_g = (bg * _dilate(bp, tolerance)).flatten(1).sum(1)
    n_p, n_g = bp.flatten(1).sum(1), bg.flatten(1).sum(1)
    precision = torch.where(n_p > 0, hit_p / n_p.clamp_min(1), (n_g == 0).float())
    recall = torch.where(n_g > 0, hit_g / n_g.clamp_min(1), (n_p == 0).float())
    bf = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    return {"iou": iou, "dice": dice, "boundary_f": bf}


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """pred, gt: B×1×H×W inverse depth on [0, 1] → per-sample AbsRel, RMSE (m), δ1–3, SSIM. A sample
    with no pixel that is not sky has no AbsRel, RMSE or δ: NaN, which the split means leave out."""
    valid = (gt >= DEPTH_VALID_MIN).float()
    count = valid.flatten(1).sum(1)
    n = torch.where(count > 0, count, torch.nan)
    p, g = to_metres(pred), to_metres(gt)
    absrel = ((p - g).abs() / g * valid).flatten(1).sum(1) / n
    ratio = torch.maximum(p / g, g / p)
    rmse = (((p - g) ** 2 * valid).flatten(1).sum(1) / n).sqrt()
    out = {"absrel": absrel, "rmse": rmse}
    for k in (1, 2, 3):
        out[f"delta{k}"] = ((ratio < 1.25**k).float() * valid).flatten(1).sum(1) / n
    out["ssim"] = ssim(pred.clamp(0, 1), gt).flatten(1).mean(1)
    return out


def gaussian_gradient_kernels(sigma: float = 1.4, epsilon: float = 1e-2) -> torch.Tensor:
    """Deep Image Matting's `gaussgradient`: first derivative of a Gaussian along x (and its
    transpose along y), each scaled to unit L2 norm; 2×1×K×K (K = 9 for σ = 1.4)."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon)))
    u = torch.arange(-half, half + 1, dtype=torch.float64)
    gauss = torch.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    hx = gauss[:, None] * (-u * gauss / sigma**2)[None, :]  # rows: Gaussian; columns: its derivative
    hx = hx / hx.square().sum().sqrt()
    return torch.stack([hx, hx.T]).unsqueeze(1).float()


def gradient_magnitude(alpha: torch.Tensor, sigma: float = 1.4) -> torch.Tensor:
    """|∇α| through Gaussian-derivative filters, borders replicated (B×1×H×W → B×1×H×W)."""
    k = gaussian_gradient_kernels(sigma).to(alpha.device)
    half = k.shape[-1] // 2
    g = F.conv2d(F.pad(alpha, (half, half, half, half), mode="replicate"), k)
    return g.square().sum(1, keepdim=True).sqrt()


def alpha_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """pred, gt: B×1×H×W alpha on [0, 1]; mask: the binary gt mask → per-sample SAD (Σ|Δα| / 1000),
    MSE (mean Δα²), gradient error (Σ(|∇α̂| − |∇α|)² / 1000, σ = 1.4) and the IoU of α̂ ≥ 0.5 with the
    mask (what a mask derived from the alpha would score)."""
    pred, gt = pred.float(), gt.float()
    diff = pred - gt
    grad = (gradient_magnitude(pred) - gradient_magnitude(gt)).square()
    return {
        "sad": diff.abs().flatten(1).sum(1) / 1000,
        "mse": diff.square().flatten(1).mean(1),
        "grad": grad.flatten(1).sum(1) / 1000,
        "iou_from_alpha": mask_metrics((pred >= 0.5).float(), mask)["iou"],
    }
