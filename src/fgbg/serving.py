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

from fgbg.model import load_model
from fgbg.predict import predict_tensors

# what fgbg.predict imports: the serving environment's pip requirements, pinned to this one's
SERVING_PACKAGES = ("torch", "torchvision", "numpy", "opencv-python-headless", "pillow", "pydantic", "pyyaml",
                    "tqdm", "segmentation-models-pytorch")  # fmt: skip


def serving_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in SERVING_PACKAGES]


class FullSizeModel(mlflow.pyfunc.PythonModel):
    """bg ⊕ fg_bg photos (B×6×H×W float32, RGB on [0, 1], any H, W) → mask probability ⊕ depth ⊕
    alpha (B×3×H×W) at the photos' size, each pair read as a real capture (`fgbg predict` without
    --exact; alignment is predict's own). Runs on the GPU when there is one."""

    def load_context(self, context) -> None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.loaded = load_model(Path(context.artifacts["model"]), device)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        device = next(self.loaded.net.parameters()).device
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32), device=device)
        with torch.inference_mode():
            outputs = predict_tensors(self.loaded, x[:, :3], x[:, 3:])
        return torch.cat(outputs, 1).cpu().numpy()
