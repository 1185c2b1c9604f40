"""The registered MLflow model: photo pairs in, `fgbg predict`'s full-size outputs out.

A `PythonModel` around model.pt and fgbg's own inference path (its code travels with the model),
so a user of the registry gets what `fgbg predict` gives: the network at its training scale, mask
and alpha refined to the photo's size. Exporting that path as one `torch.export` graph loaded in
10–30 s instead of 1 (symbolic sizes); the ONNX export (fgbg.export) is the network alone."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch
from packaging.version import Version

from fgbg.config import resolve_device
from fgbg.images import check_dimensions
from fgbg.model import load_model
from fgbg.predict import PHOTO_LIMITS, predict_tensors

# what fgbg.predict imports: the serving environment's pip requirements, pinned to this one's
SERVING_PACKAGES = ("torch", "torchvision", "numpy", "opencv-python-headless", "pillow", "pydantic", "pyyaml",
                    "segmentation-models-pytorch")  # fmt: skip


def serving_requirements() -> list[str]:
    """`name==version` for each, without local labels (`+cu126`) that PyPI does not serve."""
    return [f"{name}=={Version(importlib.metadata.version(name)).public}" for name in SERVING_PACKAGES]


def check_photos(x: np.ndarray) -> None:
    """A clear error for what the network would misread: not B×6×H×W, not finite, not on [0, 1]
    (8-bit values not divided by 255), or photos `fgbg predict` would reject."""
    if x.ndim != 4 or x.shape[1] != 6:
        raise ValueError(f"expected bg ⊕ fg_bg as B×6×H×W (RGB twice), got shape {x.shape}")
    check_dimensions(x.shape[3], x.shape[2], **PHOTO_LIMITS)
    if not np.isfinite(x).all():
        raise ValueError("input has NaN or infinite values")
    if x.min() < -1e-3 or x.max() > 1 + 1e-3:
        raise ValueError(f"expected RGB on [0, 1], got values in [{x.min():.3g}, {x.max():.3g}] (divide 8-bit by 255)")


class FullSizeModel(mlflow.pyfunc.PythonModel):
    """bg ⊕ fg_bg photos (B×6×H×W float32, RGB on [0, 1], any H, W) → mask probability ⊕ depth ⊕
    alpha (B×3×H×W) at the photos' size, each pair read as a real capture (`fgbg predict` without
    --exact; alignment is predict's own). Device: `model_config={"device": "cpu"}` at load time,
    else the GPU when there is one (bf16 there, as `fgbg predict`)."""

    def load_context(self, context) -> None:
        device = resolve_device((context.model_config or {}).get("device", "auto"))
        self.loaded = load_model(Path(context.artifacts["model"]), device)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        x = np.asarray(model_input, dtype=np.float32)
        check_photos(x)
        device = next(self.loaded.net.parameters()).device
        with torch.inference_mode():
            t = torch.from_numpy(x).to(device)
            outputs = predict_tensors(self.loaded, t[:, :3], t[:, 3:])
        return torch.cat(outputs, 1).cpu().numpy()
