"""The mask + depth network: a segmentation-models-pytorch U-Net on bg ⊕ fg_bg (6 channels)."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch

from fgbg.config import TrainParams
from fgbg.data import Normaliser


def build_model(params: TrainParams) -> torch.nn.Module:
    """U-Net with `in_channels=6` (bg, fg_bg) and 2 output maps: mask logits, depth."""
    try:
        return smp.Unet(
            encoder_name=params.encoder,
            encoder_weights=params.encoder_weights,
            in_channels=6,
            classes=2,
            decoder_channels=tuple(params.decoder_channels),
        )
    except (KeyError, ValueError, RuntimeError) as e:
        raise ValueError(f"train.encoder: cannot build a U-Net with {params.encoder!r}: {e}") from None


def split_outputs(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask logits, depth) from the model's 2-channel output, each B×1×H×W."""
    return out[:, :1], out[:, 1:2]


class Deployable(torch.nn.Module):
    """bg, fg_bg (B×3×H×W, RGB on [0, 1]) → mask probability, depth (B×1×H×W each): the trained
    network with its normalisation inside, so users feed plain images (ONNX export, MLflow)."""

    def __init__(self, model: torch.nn.Module, norm: Normaliser):
        super().__init__()
        self.model = model
        for name, value in norm.as_dict().items():
            self.register_buffer(name, torch.tensor(value).view(1, 3, 1, 1))

    def forward(self, bg: torch.Tensor, fg_bg: torch.Tensor):
        x = torch.cat([(bg - self.bg_mean) / self.bg_std, (fg_bg - self.fg_bg_mean) / self.fg_bg_std], 1)
        out = self.model(x)
        return torch.sigmoid(out[:, :1]), out[:, 1:2]


class PackedDeployable(torch.nn.Module):
    """One array in, one out, for MLflow's pyfunc: bg ⊕ fg_bg (B×6×H×W on [0, 1], H and W
    multiples of 32) → mask probability ⊕ depth (B×2×H×W)."""

    def __init__(self, deployable: Deployable):
        super().__init__()
        self.deployable = deployable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.deployable(x[:, :3], x[:, 3:]), 1)
