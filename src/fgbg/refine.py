"""The network's mask and alpha brought to the photo's full size along the photo's own edges.

The network runs at its training scale (128 px on the short side for cpu-quality); a photo is
many times larger. Upsampled bilinearly, the outline is a smooth interpolation of the coarse
one with all its errors (drawn a network pixel inside or outside, rounded where the photo's edge
is sharp). The fast guided filter (He & Sun 2015,
"Fast Guided Filter"; the local linear model of closed-form matting) fits, in each window of the
coarse grid, the output as a linear function of fg_bg's colour, then applies those coefficients to
the full-size fg_bg: where the object's colour differs from the scene's, the outline snaps to the
photo's edge. Radii are in network pixels, chosen on the val renders and on real-photo capture
pairs of another seed than `fgbg check-captures` scores (README "Full-size output").
"""

from __future__ import annotations

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
