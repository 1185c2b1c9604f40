"""Pretrained monocular depth teachers (any transformers depth-estimation model), batched.

The model is named by hub id or local folder (`depth.teacher.model`); offline machines use a
local folder or the HF cache. Inference: `torch.inference_mode`, bf16 autocast on CUDA, fp32 on
CPU, resize + normalise on the device (the processor's mean/std), prediction resized back.
Outputs are converted to the project's convention (16-bit inverse depth, near = bright).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fgbg.config import Precision, resolve_device, uses_bf16
from fgbg.convention import metres_to_inverse, unit_to_u16
from fgbg.images import first_line

# Model families whose `predicted_depth` is metric depth (bigger = farther); the rest (DPT,
# Depth Anything relative, ...) predict relative inverse depth (bigger = nearer).
METRIC_MODEL_TYPES = {"glpn", "zoedepth"}


class TeacherError(ValueError):
    """A teacher that cannot be loaded or run; the message names the param and the model."""


@dataclass
class TeacherOutput:
    """Raw predictions at input size and how to read them."""

    maps: torch.Tensor  # float32 B×H×W, on the teacher's device
    metric: bool  # True: metres (bigger = farther); False: relative inverse depth


class DepthTeacher:
    """A transformers depth model ready for batched uint8 RGB input."""

    def __init__(self, model: str, resolution: int, device: str = "auto", precision: Precision = "auto"):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        try:
            self.device = resolve_device(device)
        except ValueError as e:
            raise TeacherError(f"depth.teacher.device: {e}") from None
        self.bf16 = uses_bf16(self.device, precision)  # bf16 autocast on a channels_last model
        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(model)
        except Exception as e:  # transformers raises OSError, ValueError, KeyError... per cause
            raise TeacherError(
                f"depth.teacher.model: cannot load {model!r} as a depth-estimation model "
                f"(a local folder, or a hub id already in the HF cache when offline): {first_line(e)}"
            ) from None
        try:
            processor = AutoImageProcessor.from_pretrained(model)
            mean, std = processor.image_mean, processor.image_std
        except Exception:  # no processor saved with the model: ImageNet statistics
            mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        else:  # a model that takes [0, 1] pixels as they are (GLPN's processor has no mean at all)
            if not getattr(processor, "do_normalize", True) or mean is None or std is None:
                mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        cfg = self.model.config
        self.metric = cfg.model_type in METRIC_MODEL_TYPES or getattr(cfg, "depth_estimation_type", "") == "metric"
        multiple = getattr(cfg, "patch_size", None) or getattr(getattr(cfg, "backbone_config", None), "patch_size", 32)
        multiple = multiple[0] if isinstance(multiple, list | tuple) else int(multiple)
        self.resolution = max(multiple, round(resolution / multiple) * multiple)
        self.model.eval().to(self.device)
        if self.bf16:
            self.model.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.name = model

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> TeacherOutput:
        """images: uint8 B×H×W×3 RGB (CPU or device) → raw depth B×H×W at the input size."""
        b, h, w, _ = images.shape
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(pixel_values=x).predicted_depth
        out = out.float().reshape(b, 1, *out.shape[-2:])
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return TeacherOutput(out, self.metric)


@torch.inference_mode()
def to_inverse_u16(maps: torch.Tensor, metric: bool) -> np.ndarray:
    """Teacher output → the project's 16-bit inverse depth, one map at a time, on its device.

    Metric depth maps through the fixed range (comparable across images); relative inverse depth
    is stretched per map to [0, 65535] (per bg in compose mode, per image in per-image mode).
    Only the uint16 result (half of float32's bytes) comes back to the CPU.
    """
    maps = maps.float()
    if metric:
        return unit_to_u16(metres_to_inverse(maps))
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    return unit_to_u16((maps - lo) / (hi - lo).clamp_min(1e-12))


# Depth Anything shapes for tests and benchmarks: "small" is Depth-Anything-V2-Small's architecture
# (DINOv2-S/14 backbone + DPT head, ~25M parameters), "tiny" a CPU-test stand-in.
_DEPTH_ANYTHING = {
    "small": ({"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "mlp_ratio": 4},
              ["stage3", "stage6", "stage9", "stage12"], 384, [48, 96, 192, 384], 64, 32),
    "tiny": ({"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "mlp_ratio": 2},
             ["stage1", "stage2", "stage3", "stage4"], 32, [8, 16, 32, 32], 16, 8),
}  # fmt: skip


def save_random_depth_anything(folder: Path, size: str = "small", seed: int = 0) -> Path:
    """A Depth Anything model with random weights, saved like a downloaded one (model + processor).

    Its speed is the real architecture's; its depth is noise. For benchmarks and offline tests.
    """
    from transformers import AutoModelForDepthEstimation, DepthAnythingConfig, Dinov2Config, DPTImageProcessor

    backbone, stages, reassemble, neck, fusion, head = _DEPTH_ANYTHING[size]
    config = DepthAnythingConfig(
        backbone_config=Dinov2Config(**backbone, image_size=518, patch_size=14, out_features=stages,
                                     reshape_hidden_states=False),
        reassemble_hidden_size=reassemble,
        neck_hidden_sizes=neck,
        fusion_hidden_size=fusion,
        head_hidden_size=head,
    )  # fmt: skip
    torch.manual_seed(seed)
    AutoModelForDepthEstimation.from_config(config).save_pretrained(folder)
    DPTImageProcessor(ensure_multiple_of=14).save_pretrained(folder)
    return Path(folder)
