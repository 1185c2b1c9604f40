"""The mask + depth + alpha network and its file format: one home for build, normalisation, named
outputs, `model.pt` save/load and the inference forward that train, evaluate, predict, export,
the MLflow model and the benchmarks all call. Nothing here knows about training."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import segmentation_models_pytorch as smp
import torch
from pydantic import ValidationError

from fgbg.config import Precision, TrainParams, describe_errors, uses_bf16
from fgbg.images import atomic_write_bytes, first_line

RGB = ("r", "g", "b")
IN_CHANNELS = 6  # bg ⊕ fg_bg, RGB each


class Outputs(NamedTuple):
    """The network's named outputs, each B×1×H×W: mask logits, normalised inverse depth, alpha
    matte on [0, 1] (its own head, or the mask probability for a model built without one)."""

    mask_logits: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor


class Normaliser(torch.nn.Module):
    """bg, fg_bg (B×3×H×W on [0, 1]) → the 6-channel input, standardised with the train split's
    per-channel mean/std (stats.json). Its buffers travel with the model (device, export)."""

    NAMES = ("bg_mean", "bg_std", "fg_bg_mean", "fg_bg_std")

    def __init__(self, bg_mean, bg_std, fg_bg_mean, fg_bg_std):
        super().__init__()
        for name, value in zip(self.NAMES, (bg_mean, bg_std, fg_bg_mean, fg_bg_std), strict=True):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32).view(1, 3, 1, 1))

    @classmethod
    def from_stats(cls, stats_path: Path) -> Normaliser:
        stats = json.loads(Path(stats_path).read_text())
        return cls(*(list(stats[part][what][c] for c in RGB) for part in ("bg", "fg_bg") for what in ("mean", "std")))

    @classmethod
    def from_dict(cls, d: dict) -> Normaliser:
        return cls(*(d[name] for name in cls.NAMES))

    def as_dict(self) -> dict:
        return {name: getattr(self, name).flatten().tolist() for name in self.NAMES}

    def forward(self, bg: torch.Tensor, fg_bg: torch.Tensor) -> torch.Tensor:
        return torch.cat([(bg - self.bg_mean) / self.bg_std, (fg_bg - self.fg_bg_mean) / self.fg_bg_std], 1)


def build_model(params: TrainParams) -> torch.nn.Module:
    """U-Net with `in_channels=6` (bg, fg_bg) and 3 output maps: mask logits, depth, alpha logits
    (2 without `alpha_head`); with `input_skip`, wrapped in an InputSkip; with `exact_input`, every
    BatchNorm doubled into an ExactPairNorm, and with `exact_convs` the full-resolution convolutions
    into ExactPairs too."""
    classes = 3 if params.alpha_head else 2
    in_channels = IN_CHANNELS
    try:
        unet = smp.Unet(
            encoder_name=params.encoder,
            encoder_weights=params.encoder_weights,
            in_channels=in_channels,
            classes=classes,
            decoder_channels=tuple(params.decoder_channels),
        )
    except (KeyError, ValueError, RuntimeError) as e:
        raise ValueError(f"train.encoder: cannot build a U-Net with {params.encoder!r}: {e}") from None
    net = InputSkip(unet, in_channels, classes) if params.input_skip else unet
    if params.exact_convs:
        net = _with_exact_pair_convs(net)
    return _with_exact_pair_norms(net) if params.exact_input else net


class ExactPair(torch.nn.Module):
    """Two copies of one layer: `capture` for real captures (the default) and `exact` for pairs
    identical outside the object (composites, renders). Each sample goes through its kind's copy
    (domain-specific layers, as AdvProp keeps clean and perturbed inputs apart), so the rest is
    shared and the two behaviours need not be one compromise. `exact_first` (set by MaskDepthNet for
    one forward, which puts the exact samples first): how many of the batch's samples are exact."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.capture, self.exact = layer, copy.deepcopy(layer)
        self.exact_first = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.exact_first
        if k == 0:
            return self.capture(x)
        if k == x.shape[0]:
            return self.exact(x)
        return torch.cat([self._one(self.exact, x[:k]), self._one(self.capture, x[k:])])  # slices: views

    def _one(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer(x)


class ExactPairNorm(ExactPair):
    """A BatchNorm doubled: each kind of pair normalised by its own statistics and affine."""

    def _one(self, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _normalise(layer, x)


def _normalise(bn: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """`bn(x)`, except that a training sub-batch with one value per channel (one sample at 1×1,
    where batch statistics do not exist) is normalised with the running statistics: `bn` in eval
    mode for that call, so a norm that carries its own activation (timm's BatchNormAct2d) keeps it."""
    if bn.training and x.shape[0] * x.shape[2] * x.shape[3] <= 1:
        bn.train(False)
        try:
            return bn(x)
        finally:
            bn.train(True)
    return bn(x)


def _replace_children(net: torch.nn.Module, picked, wrap) -> torch.nn.Module:
    """Every submodule for which `picked(child)` holds replaced in place by `wrap(child)`."""
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if picked(child):
                setattr(parent, name, wrap(child))
    return net


def _with_exact_pair_norms(net: torch.nn.Module) -> torch.nn.Module:
    return _replace_children(net, lambda m: isinstance(m, torch.nn.BatchNorm2d), ExactPairNorm)


def _with_exact_pair_convs(net: torch.nn.Module) -> torch.nn.Module:
    """The convolutions that see pixels at full resolution doubled: the encoder's stem (where bg and
    fg_bg are first compared; its output is the U-Net's ½-resolution skip), the decoder's last
    block and the output head (where the outline is drawn). Exact pairs can then be differenced
    sharply while captures learn to tolerate a moved edge, at +0.2 % weights and no extra FLOPs."""
    unet = net.unet if isinstance(net, InputSkip) else net
    stem = next(m for m in unet.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    late = [unet.decoder.blocks[-1], net.head if isinstance(net, InputSkip) else unet.segmentation_head]
    targets = {id(stem)} | {id(m) for part in late for m in part.modules() if isinstance(m, torch.nn.Conv2d)}
    return _replace_children(net, lambda m: id(m) in targets, ExactPair)


class InputSkip(torch.nn.Module):
    """smp's U-Net takes its last skip at 1/2 resolution, so the object's edge is drawn from
    half-resolution features upsampled. Here the output head sees the input pixels again beside
    the decoder's last features (conv 3×3 → BN → ReLU → conv 3×3), so an edge can follow them."""

    def __init__(self, unet: smp.Unet, in_channels: int, classes: int):
        super().__init__()
        width = unet.segmentation_head[0].in_channels
        unet.segmentation_head = torch.nn.Identity()  # the U-Net now returns its decoder's features
        self.unet = unet
        self.head = torch.nn.Sequential(
            torch.nn.Conv2d(width + in_channels, width, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(width, classes, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.unet(x), x], 1))


class MaskDepthNet(torch.nn.Module):
    """bg, fg_bg (B×3×H×W on [0, 1], H and W multiples of 32) → Outputs: normalisation inside, so
    every caller feeds plain images.

    With `exact_input` the network's ExactPairs (the norms; with `exact_convs` some convolutions too)
    read whether each pair is exact (`exact`, B bool: identical outside the object, as composites,
    renders and screenshots are) or a real capture (the default, None): one model then compares
    exact pairs exactly and distrusts a capture's small differences, instead of one behaviour paid
    for by the other (README "Real captures")."""

    def __init__(self, unet: torch.nn.Module, norm: Normaliser):
        super().__init__()
        self.unet, self.norm = unet, norm
        self.pair_layers = [m for m in unet.modules() if isinstance(m, ExactPair)]
        self.bf16 = False  # set_precision: the forward in bf16 autocast on channels_last tensors

    def set_precision(self, precision: Precision = "auto") -> MaskDepthNet:
        """bf16 autocast on channels_last weights and inputs where `uses_bf16` says so for the device
        the net is on (move it there first), float32 otherwise; the outputs are float32 either way."""
        self.bf16 = uses_bf16(next(self.parameters()).device, precision)
        return self.to(memory_format=torch.channels_last if self.bf16 else torch.contiguous_format)

    def forward(self, bg: torch.Tensor, fg_bg: torch.Tensor, exact: torch.Tensor | None = None) -> Outputs:
        x = self.norm(bg, fg_bg)
        if self.bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        n_exact, order = 0, None
        if self.pair_layers and exact is not None:
            n_exact = int(exact.sum())  # one host sync per forward
            if 0 < n_exact < len(exact):  # a mixed batch: exact samples first, so each norm takes a slice
                order = torch.argsort((~exact).int(), stable=True)
                x = x[order]
        for m in self.pair_layers:
            m.exact_first = n_exact
        try:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self.unet(x).float()
        finally:
            for m in self.pair_layers:
                m.exact_first = 0
        if order is not None:
            out = out[order.argsort()]
        alpha_logits = out[:, 2:3] if out.shape[1] > 2 else out[:, :1]
        return Outputs(out[:, :1], out[:, 1:2], torch.sigmoid(alpha_logits))


def infer(net: torch.nn.Module, bg: torch.Tensor, fg_bg: torch.Tensor, exact: torch.Tensor | None = None) -> Outputs:
    """The forward pass everyone uses, in the net's precision (MaskDepthNet.set_precision), float32
    outputs. `net` is a MaskDepthNet or a wrapper of one (DDP, torch.compile); `exact` as
    MaskDepthNet's (left out for a net whose wrapper takes two inputs)."""
    return net(bg, fg_bg) if exact is None else net(bg, fg_bg, exact)


# ---------------------------------------------------------------- model.pt


@dataclass
class LoadedModel:
    net: MaskDepthNet  # eval mode, on the requested device
    params: TrainParams
    input_size: int  # the side it was trained at
    epoch: int


def model_file(net: MaskDepthNet, params: TrainParams, epoch: int, input_size: int) -> dict:
    """What predict/evaluate need: weights, architecture, normalisation, input size. Nothing
    run-specific (no run id, time or path): the same training gives the same bytes, so DVC
    and `dvc exp show` see the same model."""
    return {
        "input_size": int(input_size),
        "model": {k: v.detach().cpu() for k, v in net.unet.state_dict().items()},
        "train_params": params.model_dump(mode="json", exclude={"mlflow", "device", "precision"}),
        "normaliser": net.norm.as_dict(),
        "epoch": epoch,
    }


MODEL_KEYS = ("model", "normaliser", "train_params", "input_size", "epoch")  # what model_file writes


def save_model(path: Path, net: MaskDepthNet, params: TrainParams, epoch: int, input_size: int) -> None:
    buf = io.BytesIO()
    torch.save(model_file(net, params, epoch, input_size), buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_model(path: Path, device: torch.device, precision: Precision = "auto") -> LoadedModel:
    """model.pt → the network in eval mode on `device` in `precision`, with its params and input size."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file (train one with `fgbg train`, or `dvc pull`)")
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, or not a torch file: name it, no trace
        raise ValueError(f"{path}: not an fgbg model file ({type(e).__name__}: {first_line(e)})") from None
    missing = [key for key in MODEL_KEYS if key not in data] if isinstance(data, dict) else list(MODEL_KEYS)
    if missing:  # another program's checkpoint, or fgbg's checkpoint.pt
        raise ValueError(f"{path}: not an fgbg model file (no {', '.join(missing)}); give models/model.pt")
    older = dict.fromkeys(("alpha_head", "input_skip", "exact_input", "exact_convs"), False)  # keys older files lack
    saved = {**older, **data["train_params"]}
    try:
        params = TrainParams.model_validate(saved)
    except ValidationError as e:  # e.g. a key a newer fgbg wrote: name it, not a pydantic trace
        raise ValueError(
            f"{path}: its train params do not fit this fgbg ({describe_errors(e)}): was it saved by another version? "
            "Load it with that version, or retrain"
        ) from None
    unet = build_model(params.model_copy(update={"encoder_weights": None}))  # weights come from the file
    unet.load_state_dict(data["model"])
    net = MaskDepthNet(unet, Normaliser.from_dict(data["normaliser"]))
    net = net.to(device).set_precision(precision).eval()
    return LoadedModel(net, params, int(data["input_size"]), int(data["epoch"]))


# ---------------------------------------------------------------- deployment


class Deployable(torch.nn.Module):
    """bg, fg_bg (B×3×H×W, RGB on [0, 1]) → mask probability, depth, alpha (B×1×H×W each): for ONNX."""

    def __init__(self, net: MaskDepthNet):
        super().__init__()
        self.net = net

    def forward(self, bg: torch.Tensor, fg_bg: torch.Tensor):
        out = self.net(bg, fg_bg)
        return torch.sigmoid(out.mask_logits), out.depth.clamp(0, 1), out.alpha  # the depth head is linear
