"""The registered MLflow model: photo pairs in, `fgbg predict`'s full-size outputs out.

A `PythonModel` around model.pt and fgbg's own inference path (its code travels with the model),
so a user of the registry gets what `fgbg predict` gives: the network at its training scale, mask
and alpha refined to the photo's size. Exporting that path as one `torch.export` graph loaded in
10–30 s instead of 1 (symbolic sizes); the ONNX export (fgbg.export) is the network alone."""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch
from packaging.version import Version

from fgbg.config import resolve_device
from fgbg.images import check_dimensions
from fgbg.model import load_model
from fgbg.predict import PHOTO_LIMITS, align_bg, align_mode, alignment_tolerance, predict_tensors

_log = logging.getLogger(__name__)

# what `predict(x, params=...)` takes, as `fgbg predict`'s options: name → (MLflow type, default);
# align_above_px None is the model's trained range (`--align-above-px` left out)
SERVING_PARAMS = {
    "exact": ("boolean", False),
    "align": ("string", "auto"),
    "align_above_px": ("double", None),
    "refine": ("boolean", True),
    "match_tone": ("boolean", True),
}

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
    alpha (B×3×H×W) at the photos' size, as `fgbg predict` gives them: pairs read as real captures
    and a handheld bg registered to its fg_bg first (`params={"align": "auto"}`, or always / never;
    a pair that cannot be registered is logged as a warning under auto, an error under always;
    `align_above_px` as `--align-above-px`), `params={"exact": True}` for pairs identical outside the
    object, `params={"refine": False}` as `--no-refine`, `params={"match_tone": False}` as
    `--no-match-tone`. Device: `model_config=
    {"device": "cpu"}` at load time, else the GPU when there is one (bf16 there, as `fgbg predict`;
    `{"precision": "bf16"}` on a CPU with bf16 instructions, "float32" on a GPU)."""

    def load_context(self, context) -> None:
        config = context.model_config or {}
        device = resolve_device(config.get("device", "auto"))
        self.loaded = load_model(Path(context.artifacts["model"]), device, config.get("precision", "auto"))

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        options = {name: default for name, (_, default) in SERVING_PARAMS.items()} | (params or {})
        for name in ("exact", "refine", "match_tone"):
            if not isinstance(options[name], bool | np.bool_):
                raise ValueError(f"params {name}: true or false, not {options[name]!r}")
        exact = options["exact"]  # align_above_px checked here too: MLflow's schema casts, a direct call does not
        tolerance = alignment_tolerance(self.loaded, options["align_above_px"], "params align_above_px")
        align = align_mode(self.loaded, options["align"], exact, "the served model", flag="params ")
        x = np.asarray(model_input, dtype=np.float32)
        check_photos(x)
        match_tone = options["match_tone"] and not exact
        if align != "never" or match_tone:
            x = self._prepared(x, align, tolerance, match_tone)
        device = next(self.loaded.net.parameters()).device
        with torch.inference_mode():
            t = torch.from_numpy(x).to(device)
            outputs = predict_tensors(self.loaded, t[:, :3], t[:, 3:], exact, options["refine"])
        return torch.cat(outputs, 1).cpu().numpy()

    def _prepared(self, x: np.ndarray, align: str, tolerance: float, match_tone: bool) -> np.ndarray:
        """x with each bg registered to its fg_bg where the camera moved beyond `tolerance` px at
        the model's input size and, with `match_tone`, given fg_bg's tone (fgbg.predict.align_bg on
        the 8-bit pair, as predict reads files); other pairs stay as given."""
        out = None
        for i, pair in enumerate(x):
            bg, fg_bg = (np.rint(p.transpose(1, 2, 0) * 255).astype(np.uint8) for p in (pair[:3], pair[3:]))
            warped, report = align_bg(
                bg, fg_bg, align, tolerance, self.loaded.input_size, f"pair {i}", _log_line, match_tone
            )
            if report.aligned or report.tone_matched:
                out = x.copy() if out is None else out  # never write into the caller's array
                out[i, :3] = warped.transpose(2, 0, 1).astype(np.float32) / 255
        return x if out is None else out


def log_served_model(mlflow_module, model_path: Path, registered_model: str | None) -> None:
    """Log (and register) model.pt as a FullSizeModel in the active run: the weights, fgbg's
    inference code (it travels with them), a pinned environment and the tensor + params signature."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    import fgbg

    f32 = np.dtype(np.float32)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, 6, -1, -1))]),
        outputs=Schema([TensorSpec(f32, (-1, 3, -1, -1))]),
        params=ParamSchema([ParamSpec(name, kind, default) for name, (kind, default) in SERVING_PARAMS.items()]),
    )
    mlflow_module.pyfunc.log_model(
        name="model",
        python_model=FullSizeModel(),
        artifacts={"model": str(model_path)},
        code_paths=[str(Path(fgbg.__file__).parent)],  # the inference code travels with the weights
        model_config={"device": "auto", "precision": "auto"},  # load_model(..., model_config={...}) overrides
        signature=signature,
        input_example=(np.full((1, 6, 48, 80), 0.5, np.float32), {"align": "never"}),  # MLflow runs it as it logs
        pip_requirements=serving_requirements(),
        registered_model_name=registered_model,
    )


def _log_line(line: str) -> None:
    """align_bg's lines as log records: its warnings at WARNING, the alignment found at INFO."""
    if line.startswith("warning: "):
        _log.warning(line.removeprefix("warning: "))
    else:
        _log.info(line)
