"""The mask + depth network: a segmentation-models-pytorch U-Net on bg ⊕ fg_bg (6 channels)."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch

from fgbg.config import TrainParams


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
