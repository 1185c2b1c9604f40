"""The network's outputs at the photo's full size, the mask and alpha along the photo's own edges.

The network runs at its training scale (128 px on the short side for cpu-quality); a photo is
many times larger. Upsampled bilinearly, the outline is a smooth interpolation of the coarse
one with all its errors (drawn a network pixel inside or outside, rounded where the photo's edge
is sharp). The fast guided filter (He & Sun 2015,
"Fast Guided Filter"; the local linear model of closed-form matting) fits, in each window of the
coarse grid, the output as a linear function of fg_bg's colour, then applies those coefficients to
the full-size fg_bg: where the object's colour differs from the scene's, the outline snaps to the
photo's edge. Radii are in network pixels, chosen on the val renders and on real-photo capture
pairs of another seed than `fgbg check-captures` scores (README "Full-size output").

`full_size` is the one path from a photo pair to full-size outputs: `fgbg predict`, `evaluate`'s
`iou_full_size` and the MLflow model all run it. It is written so `torch.export` keeps it whole
(sizes in integer arithmetic, the branch on the photo's size as `torch.cond`): the registered model
takes photos of any size, as `fgbg predict` does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

MASK_RADIUS = 4  # network px: the mask's outline follows the photo's edges within ±4 coarse pixels
ALPHA_RADIUS = 2  # the soft matte keeps more of the network's own edge profile (alpha SAD)
EPS = 1e-4  # regulariser: below it a colour change counts as an edge (colours on [0, 1])


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)² window, over the pixels inside the image at the borders."""
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def guided_upsample(
    coarse: torch.Tensor, guide_coarse: torch.Tensor, guide_full: torch.Tensor, radius: int, eps: float = EPS
) -> torch.Tensor:
    """`coarse` (N×1×h×w) at `guide_full`'s size (N×3×H×W), following its edges.

    `guide_coarse` is the guide at the coarse size (the network's own input). Per coarse window:
    q = A·I + b minimising |q − coarse|² + eps·|A|² (a 3×3 solve per pixel), then A and b are
    averaged over the windows, upsampled bilinearly and applied to the full-size guide.
    """
    n, _, h, w = guide_coarse.shape
    mean_i = _box(guide_coarse, radius)
    mean_p = _box(coarse, radius)
    cov_ip = _box(guide_coarse * coarse, radius) - mean_i * mean_p  # N×3×h×w
    pairs = [(i, j) for i in range(3) for j in range(3)]
    products = torch.stack([guide_coarse[:, i] * guide_coarse[:, j] for i, j in pairs], 1)
    var_i = _box(products, radius) - torch.stack([mean_i[:, i] * mean_i[:, j] for i, j in pairs], 1)
    sigma = var_i.permute(0, 2, 3, 1).reshape(n, h, w, 3, 3)
    sigma = sigma + eps * torch.eye(3, dtype=sigma.dtype, device=sigma.device)
    a = torch.linalg.solve(sigma, cov_ip.permute(0, 2, 3, 1).unsqueeze(-1)).squeeze(-1).permute(0, 3, 1, 2)
    b = mean_p - (a * mean_i).sum(1, keepdim=True)
    size = guide_full.shape[-2:]
    a, b = _box(a, radius), _box(b, radius)

    def full(t):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    out = full(b)
    for c in range(3):  # one full-size plane at a time: a 50 MP photo stays within a few hundred MB
        out += full(a[:, c : c + 1]) * guide_full[:, c : c + 1]
    return out


def network_size(h, w, size: int):
    """The photo's shape scaled so its short side is the model's input size, keeping the aspect
    ratio (the U-Net is fully convolutional), each side the nearest multiple of 32 as the encoder
    needs. Integer arithmetic, so it also works on `torch.export`'s symbolic sizes."""
    short = torch.sym_min(h, w)
    return tuple(torch.sym_max(32, (2 * side * size + 32 * short) // (64 * short) * 32) for side in (h, w))


def full_size(
    network: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
    bg: torch.Tensor, fg_bg: torch.Tensor, input_size: int, refine: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Mask probability, depth and alpha (N×1×H×W) for bg, fg_bg (N×3×H×W on [0, 1]): `network`
    (bg, fg_bg at the network's size → the same three) at the model's input scale, the
    outputs brought back to H×W. A larger photo is shrunk by area averaging, as training shrinks its
    data (+0.001–0.002 IoU), and its mask and alpha refined (`refine`); a smaller one is resized
    bilinearly both ways (refining at the network's own size would cost 0.005 IoU)."""
    h, w = fg_bg.shape[-2:]
    net_h, net_w = network_size(h, w, input_size)
    larger = (h >= net_h) & (w >= net_w) & ((h != net_h) | (w != net_w))

    def shrink(bg, fg_bg):
        return tuple(F.interpolate(t, size=(net_h, net_w), mode="area") for t in (bg, fg_bg))

    def resize(bg, fg_bg):
        return tuple(F.interpolate(t, size=(net_h, net_w), mode="bilinear", antialias=True) for t in (bg, fg_bg))

    def to_full(t):
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)

    def refined(prob, depth, alpha, fg_bg_net, fg_bg):
        return (guided_upsample(prob, fg_bg_net, fg_bg, MASK_RADIUS), to_full(depth),
                guided_upsample(alpha, fg_bg_net, fg_bg, ALPHA_RADIUS))  # fmt: skip

    def bilinear(prob, depth, alpha, fg_bg_net, fg_bg):
        return to_full(prob), to_full(depth), to_full(alpha)

    bg_net, fg_bg_net = torch.cond(larger, shrink, resize, (bg, fg_bg))
    outputs = (*network(bg_net, fg_bg_net), fg_bg_net, fg_bg)
    if not refine:
        return bilinear(*outputs)
    return torch.cond(larger, refined, bilinear, outputs)
