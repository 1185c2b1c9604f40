"""The project's depth convention and 16-bit scaling, written once (NumPy and torch alike).

Depth is stored as 16-bit normalised *inverse* depth, near = bright (what MiDaS / Depth Anything
output). Metric z-depth maps through a fixed range, so values compare across images; 0 is sky
or anything farther. Imports neither OpenCV nor torch: losses and images both use it.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

DEPTH_NEAR_M = 1.0  # metric depth mapped to 65535 (nearer is clipped)
DEPTH_FAR_M = 200.0  # metric depth mapped to 0; sky and anything farther
DEPTH_CONVENTION = (
    "16-bit PNG of normalised inverse depth, near = bright: "
    f"v = 65535 * (1/d - 1/{DEPTH_FAR_M:g}) / (1/{DEPTH_NEAR_M:g} - 1/{DEPTH_FAR_M:g}), "
    f"d = z-depth in metres clipped to [{DEPTH_NEAR_M:g}, {DEPTH_FAR_M:g}]"
)
DEPTH_CONVENTION_SHORT = f"inverse depth u16, near=bright, {DEPTH_NEAR_M:g}-{DEPTH_FAR_M:g} m"
U16_MAX = 65535
DEPTH_VALID_MIN = 1.0 / U16_MAX  # smaller normalised inverse depth is sky (stored as 0): no metres

_LO, _HI = 1.0 / DEPTH_FAR_M, 1.0 / DEPTH_NEAR_M
Array = TypeVar("Array")  # np.ndarray or torch.Tensor: both have .clip and arithmetic


def metres_to_inverse(depth_m: Array) -> Array:
    """z-depth in metres → normalised inverse depth on [0, 1] (nearer than 1 m / farther than
    200 m clipped)."""
    return (1.0 / depth_m.clip(DEPTH_NEAR_M, DEPTH_FAR_M) - _LO) / (_HI - _LO)


def inverse_to_metres(inverse: Array) -> Array:
    """Normalised inverse depth on [0, 1] → z-depth in metres."""
    return 1.0 / (inverse.clip(0, 1) * (_HI - _LO) + _LO)


def unit_to_u16(values) -> np.ndarray:
    """[0, 1] values (NumPy array or torch tensor, any device) → uint16 NumPy, rounded; a tensor
    is rounded on its device and only the 16-bit result is copied back."""
    if isinstance(values, np.ndarray):
        return np.round(np.clip(values, 0, 1) * float(U16_MAX)).astype(np.uint16)
    import torch

    u16 = (values.detach().float().clamp(0, 1) * U16_MAX).round().to(torch.int32)
    return u16.cpu().numpy().astype(np.uint16)


def metric_to_inverse_u16(depth_m: np.ndarray) -> np.ndarray:
    """Metric z-depth → the project's 16-bit inverse-depth encoding (fixed range, comparable)."""
    return np.round(metres_to_inverse(depth_m.astype(np.float64)) * float(U16_MAX)).astype(np.uint16)


def inverse_u16_to_metric(v: np.ndarray) -> np.ndarray:
    """The 16-bit encoding → metric z-depth (sky, stored as 0, comes back as 200 m)."""
    return inverse_to_metres(v.astype(np.float64) / float(U16_MAX))
