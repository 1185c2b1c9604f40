"""`fgbg predict`: bg + fg_bg photos (any size) → mask PNG, alpha matte, 16-bit depth PNG, colour depth,
overlay; with `--onto`, the object lifted onto another background.

Handheld pairs are registered first (fgbg.align) when the camera moved more than the model was
trained to tolerate, and every bg takes fg_bg's exposure and white balance (fgbg.tone); what was
found is written next to the outputs (`<name>.json`).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fgbg import tone
from fgbg.align import estimate_alignment, is_misaligned, warp_bg
from fgbg.config import ALIGN_MODES, Precision, resolve_device
from fgbg.convention import unit_to_u16
from fgbg.images import (
    IMAGE_SUFFIXES,
    BadImage,
    atomic_write_bytes,
    depth_to_colour,
    encode_png,
    load_raw_image,
    resize_cover_crop,
)
from fgbg.model import LoadedModel, infer, load_model
from fgbg.refine import ALPHA_RADIUS, MASK_RADIUS, guided_upsample

# the photos predict (and the MLflow model) accept; below 16 px a pair cannot be aligned (fgbg.align)
PHOTO_LIMITS = {"min_side": 16, "max_pixels": 50_000_000, "max_aspect": 8.0}
UNTRAINED_TOLERANCE_PX = 0.5  # a model trained without misalignment tolerates rounding only


def pairs(bg: Path, fg_bg: Path, log=print) -> list[tuple[Path, Path]]:
    """Two files, or two folders whose images are matched by file name (an fg_bg without a bg of
    its name is logged and left out)."""
    bg, fg_bg = Path(bg), Path(fg_bg)
    for path in (bg, fg_bg):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    if bg.is_file() and fg_bg.is_file():
        return [(bg, fg_bg)]
    if bg.is_dir() and fg_bg.is_dir():
        found = [(bg / p.name, p) for p in sorted(fg_bg.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        matched = [(b, f) for b, f in found if b.is_file()]
        if not matched:
            raise FileNotFoundError(f"{fg_bg}: no image with the same name in {bg}")
        for b, f in found:
            if not b.is_file():
                log(f"warning: {f}: no bg of the same name in {bg}, skipped")
        by_stem: dict[str, Path] = {}
        for _, f in matched:  # outputs are named by stem: two such pairs would overwrite each other's
            if f.stem in by_stem:
                raise ValueError(f"{by_stem[f.stem]}, {f}: both would write {f.stem}_mask.png …; rename one")
            by_stem[f.stem] = f
        return matched
    raise FileNotFoundError(f"{bg}, {fg_bg}: give two image files or two folders, not one of each")


def read_photo(path: Path, log=print) -> np.ndarray:
    """A photo as 8-bit RGB; a file that is not one is a BadImage naming it. A transparent one is
    read as the colours under its alpha (a photo has none), with a warning."""
    try:
        pixels = load_raw_image(Path(path), **PHOTO_LIMITS).pixels
    except BadImage as e:
        raise BadImage(f"{path}: {e}") from None
    if pixels.shape[-1] == 4 and (pixels[..., 3] < 255).any():
        log(f"warning: {path}: transparent pixels; its alpha is ignored (the colours under it are read)")
    return pixels[..., :3]


def network_size(h: int, w: int, size: int) -> tuple[int, int]:
    """The photo's shape scaled so its short side is the model's input size, keeping the aspect
    ratio (the U-Net is fully convolutional) up to rounding each side to the multiple of 32 the
    encoder needs (an 800×900 photo at input 96 is read at 96×96; outputs return to its own size)."""
    scale = size / min(h, w)
    return tuple(max(32, round(side * scale / 32) * 32) for side in (h, w))


class Prediction(NamedTuple):
    """One pair's outputs at fg_bg's size."""

    mask: np.ndarray  # uint8 {0, 255}
    depth: np.ndarray  # uint16, the project's inverse-depth convention
    alpha: np.ndarray  # uint8 0..255


def predict_pair(
    loaded: LoadedModel, bg_img: np.ndarray, fg_bg_img: np.ndarray, exact: bool = False, refine: bool = True
) -> Prediction:
    """Mask, depth and alpha at fg_bg's size, predicted at the model's input scale with the photo's
    aspect ratio kept (`exact`, `refine` as predict_batch's)."""
    return predict_batch(loaded, [bg_img], [fg_bg_img], exact, refine)[0]


def predict_batch(
    loaded: LoadedModel, bg_imgs: list[np.ndarray], fg_bg_imgs: list[np.ndarray], exact: bool = False,
    refine: bool = True,
) -> list[Prediction]:  # fmt: skip
    """predict_pair for pairs of one size in one forward pass. `exact`: the pairs are identical
    outside the object (renders, screenshots), for a model trained with `train.exact_input`.
    `refine`: mask and alpha follow the photo's edges at full size (fgbg.refine), else bilinear."""
    dev = next(loaded.net.parameters()).device

    def tensor(imgs):
        return torch.from_numpy(np.stack(imgs)).to(dev).permute(0, 3, 1, 2).float() / 255

    with torch.inference_mode():
        prob, depth, alpha = predict_tensors(loaded, tensor(bg_imgs), tensor(fg_bg_imgs), exact, refine)
        masks = ((prob[:, 0] >= 0.5).byte() * 255).cpu().numpy()
        alphas = (alpha[:, 0].clamp(0, 1) * 255).round().byte().cpu().numpy()
        return [Prediction(masks[i], unit_to_u16(depth[i, 0]), alphas[i]) for i in range(len(masks))]


def predict_tensors(
    loaded: LoadedModel, bg: torch.Tensor, fg_bg: torch.Tensor, exact: bool | torch.Tensor = False, refine: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask probability, depth and alpha (N×1×H×W) for bg, fg_bg (N×3×H×W on [0, 1], on the model's
    device): the network at its input scale, the outputs brought back to H×W. `exact`: a bool for
    the batch or one per pair."""
    h, w = fg_bg.shape[-2:]
    net_hw = network_size(h, w, loaded.input_size)
    larger = h >= net_hw[0] and w >= net_hw[1] and (h, w) != net_hw  # the photo is shrunk, its outputs upsampled

    def to_network(t):
        if larger:  # shrink as training does (fgbg.data.to_device): +0.001–0.002 IoU
            return F.interpolate(t, size=net_hw, mode="area")
        return F.interpolate(t, size=net_hw, mode="bilinear", antialias=True, align_corners=False)

    def to_full(t):
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)

    flags = None
    if loaded.params.exact_input:
        flags = torch.as_tensor(exact, dtype=torch.bool, device=bg.device).expand(bg.shape[0])
    fg_bg_net = to_network(fg_bg)
    out = infer(loaded.net, to_network(bg), fg_bg_net, flags)
    prob = torch.sigmoid(out.mask_logits)
    if refine and larger:  # let the photo's edges place the outline
        outputs = (guided_upsample(prob, fg_bg_net, fg_bg, MASK_RADIUS), to_full(out.depth),
                   guided_upsample(out.alpha, fg_bg_net, fg_bg, ALPHA_RADIUS))  # fmt: skip
    else:
        outputs = (to_full(prob), to_full(out.depth), to_full(out.alpha))
    # each on [0, 1] as documented: the guided filter overshoots at edges, the depth head is linear
    return tuple(t.clamp_(0, 1) for t in outputs)


def lift_onto(fg_bg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, new_bg: np.ndarray) -> np.ndarray:
    """The object of fg_bg composited onto `new_bg` (all H×W, uint8) with the matte `alpha`.

    Edge pixels of fg_bg are a blend I = a·F + (1 − a)·B of the object's colour F and the old
    background B; pasting I itself would carry a fringe of the old scene. The empty plate gives B,
    so F = (I − (1 − a)·B) / a (clipped; I where a is tiny) and the result is a·F + (1 − a)·new."""
    i, b, n = (x.astype(np.float32) for x in (fg_bg, bg, new_bg))
    a = alpha.astype(np.float32)[..., None] / 255
    solid = a > 0.05
    fg = np.where(solid, np.clip((i - (1 - a) * b) / np.maximum(a, 0.05), 0, 255), i)
    return np.clip(a * fg + (1 - a) * n, 0, 255).round().astype(np.uint8)


@dataclass
class AlignReport:
    """What `align_bg` found and did, in fg_bg pixels (and at the model's input scale)."""

    aligned: bool = False
    shift_px: float | None = None  # largest camera motion over the frame
    rotation_deg: float | None = None
    shift_at_model_px: float | None = None
    tolerance_at_model_px: float | None = None
    uncovered: float | None = None  # share of fg_bg the warped bg does not reach (filled from fg_bg)
    warning: str = ""
    tone_matched: bool = False  # the bg's exposure and white balance brought to fg_bg's (fgbg.tone)
    tone_change: float | None = None  # the largest level change of that curve (8-bit levels)
    tone_skipped: str = ""  # why a curve was found but not applied (the shots already match, ...)


def trained_tolerance_px(loaded: LoadedModel) -> float:
    """The camera shift (px at the model's input size) the model saw in training: its bg-only
    misalignment range (`train.augment.misalign.translate` × input size)."""
    aug = loaded.params.augment
    if not aug.enabled or aug.misalign.p == 0:
        return UNTRAINED_TOLERANCE_PX
    return max(UNTRAINED_TOLERANCE_PX, aug.misalign.translate * loaded.input_size)


def alignment_tolerance(loaded: LoadedModel, above_px, flag: str = "--align-above-px") -> float:
    """The camera shift beyond which `align: auto` aligns: `above_px` when given (a shift ≥ 0 px at
    the model's input; NaN would silently never align), else the model's trained range."""
    if above_px is None:
        return trained_tolerance_px(loaded)
    if isinstance(above_px, bool | np.bool_) or not isinstance(above_px, numbers.Real) or not 0 <= above_px < math.inf:
        raise ValueError(f"{flag}: a camera shift ≥ 0 (px at the model's input), not {above_px!r}")
    return float(above_px)


def align_mode(loaded: LoadedModel, align: str, exact: bool, model_name: str, flag: str = "--") -> str:
    """The align mode a prediction runs with (`never` for exact pairs), or a clear error for a
    combination that cannot be honoured (options named with `flag`: `--` for the CLI)."""
    if align not in ALIGN_MODES:
        raise ValueError(f"{flag}align: one of {', '.join(ALIGN_MODES)}, not {align!r}")
    if exact and not loaded.params.exact_input:
        raise ValueError(
            f"{flag}exact: {model_name} was trained without train.exact_input, so it reads every pair alike"
        )
    if exact and align == "always":
        raise ValueError(
            f"{flag}exact with {flag}align always: an exact pair has no camera motion, and a warped bg is no "
            "longer exact"
        )
    return "never" if exact else align


def align_bg(
    bg_img: np.ndarray, fg_bg_img: np.ndarray, mode: str, tolerance_px: float, input_size: int, names: str, log=print,
    match_tone: bool = True,
) -> tuple[np.ndarray, AlignReport]:  # fmt: skip
    """The bg brought to fg_bg's shot: registered onto its view when the camera moved more than
    `tolerance_px` at the model's input scale (`auto`), always (`always`) or never (`never`), and
    with `match_tone` matched to its exposure, gamma and white balance (fgbg.tone, fitted where the bg
    saw the scene).

    A pair that cannot be registered is an error under `always` and a warning under `auto`
    (naming the files): the mask would otherwise mark the camera motion as object.
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"align: one of {', '.join(ALIGN_MODES)}, not {mode!r}")
    bg_img, valid, report = (
        (bg_img, None, AlignReport())
        if mode == "never"
        else _register(bg_img, fg_bg_img, mode, tolerance_px, input_size, names, log)
    )
    if match_tone:
        bg_img, found = tone.match_tone(bg_img, fg_bg_img, valid)
        report.tone_matched = found.applied
        report.tone_change = round(found.change, 2)
        report.tone_skipped = found.reason
    if valid is not None:
        # Where the bg shot saw nothing, show the network fg_bg itself (no evidence of change)
        # rather than smeared border pixels, which it reads as object: +0.08 IoU for a
        # differencing model on handheld real-photo pairs (11 % of the frame uncovered).
        bg_img = np.where(valid[..., None] > 0, bg_img, fg_bg_img)
    return bg_img, report


def _register(
    bg_img: np.ndarray, fg_bg_img: np.ndarray, mode: str, tolerance_px: float, input_size: int, names: str, log
) -> tuple[np.ndarray, np.ndarray | None, AlignReport]:
    """align_bg's camera motion: (bg, the pixels the warped bg saw or None when not warped, report)."""
    found = estimate_alignment(bg_img, fg_bg_img)
    scale = min(network_size(*fg_bg_img.shape[:2], input_size)) / min(fg_bg_img.shape[:2])
    report = AlignReport(
        shift_px=round(found.max_shift_px, 2),
        rotation_deg=round(found.rotation_deg, 3),
        shift_at_model_px=round(found.max_shift_px * scale, 2),
        tolerance_at_model_px=round(tolerance_px, 2),
    )
    if not found.ok:
        message = f"{names}: cannot register the bg to the fg_bg ({found.reason})"
        if mode == "always":
            raise ValueError(f"{message}; are they shots of the same scene?")
        report.warning = found.reason
        log(f"warning: {message}; predicted unaligned, camera motion may show up as object")
        return bg_img, None, report
    if mode == "always" or is_misaligned(found, tolerance_px / scale):
        warped, valid = warp_bg(bg_img, found, fg_bg_img.shape)
        valid = cv2.erode(valid, np.ones((3, 3), np.uint8))
        report.aligned = True
        report.uncovered = round(1.0 - float(np.count_nonzero(valid)) / valid.size, 4)
        log(f"{names}: bg aligned to the fg_bg (camera moved {report.shift_px} px, {report.rotation_deg}°)")
        return warped, valid, report
    return bg_img, None, report


def run_predict(
    model_path: Path, bg: Path, fg_bg: Path, out_dir: Path, device: str = "auto", align: str = "auto",
    align_above_px: float | None = None, onto: Path | None = None, exact: bool = False, refine: bool = True,
    match_tone: bool = True, log=print, precision: Precision = "auto",
) -> list[Path]:  # fmt: skip
    """Predict each pair; outputs (mask, alpha, 16-bit depth, colour depth, overlay, `<name>.json` with
    the alignment, and with `onto` the object on that background) at the photo's size.
    `align_above_px` (at the model's input size) overrides the trained tolerance that triggers
    alignment under `align="auto"`. `exact`: the pairs are identical outside the object (renders,
    screenshots), for a model trained with `train.exact_input`. `refine`: mask and alpha follow the
    photo's edges at full size (fgbg.refine), else upsampled bilinearly. `match_tone`: the bg takes
    fg_bg's exposure and white balance first (fgbg.tone; never for `exact` pairs). `precision`: the
    network's arithmetic (config.uses_bf16: auto is bf16 on a GPU, float32 on the CPU)."""
    loaded = load_model(Path(model_path), resolve_device(device), precision)
    align = align_mode(loaded, align, exact, str(model_path))
    match_tone = match_tone and not exact  # an exact pair has no exposure change, and must stay exact
    tolerance = alignment_tolerance(loaded, align_above_px)
    new_bg = None if onto is None else read_photo(Path(onto), log)
    todo = pairs(bg, fg_bg, log)
    written, failed = [], []
    for bg_path, fg_bg_path in todo:
        try:
            written += _predict_one(loaded, bg_path, fg_bg_path, Path(out_dir), align, tolerance, new_bg, exact,
                                    refine, match_tone, log)  # fmt: skip
        except ValueError as e:  # BadImage among them
            if len(todo) == 1:
                raise
            log(f"error: {e}")  # one bad pair of a folder: the others are still predicted
            failed.append(str(e))
    if failed:
        raise ValueError(f"{len(failed)} of {len(todo)} pairs not predicted (the others are in {out_dir}): {failed[0]}")
    return written


def _predict_one(
    loaded: LoadedModel, bg_path: Path, fg_bg_path: Path, out_dir: Path, align: str, tolerance: float,
    new_bg: np.ndarray | None, exact: bool, refine: bool, match_tone: bool, log,
) -> list[Path]:  # fmt: skip
    """run_predict for one pair: its files written, their paths returned."""
    written = []
    bg_img = read_photo(bg_path, log)
    fg_bg_img = read_photo(fg_bg_path, log)
    h, w = fg_bg_img.shape[:2]
    bh, bw = bg_img.shape[:2]
    if abs(bh * w - h * bw) > 0.02 * h * bw:
        raise ValueError(f"{bg_path} is {bw}x{bh}, {fg_bg_path} is {w}x{h}: a bg and its fg_bg show the same view")
    if (bh, bw) != (h, w):
        bg_img = cv2.resize(bg_img, (w, h), interpolation=cv2.INTER_AREA)
    names = f"{bg_path}, {fg_bg_path}"
    bg_img, report = align_bg(bg_img, fg_bg_img, align, tolerance, loaded.input_size, names, log, match_tone)
    mask, depth16, alpha = predict_pair(loaded, bg_img, fg_bg_img, exact, refine)
    overlay = fg_bg_img.copy()
    tint = np.array([255, 40, 40], np.float32)
    overlay[mask > 0] = (0.5 * overlay[mask > 0] + 0.5 * tint).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (255, 255, 0), 1)
    stem = fg_bg_path.stem
    images = [("mask", mask), ("alpha", alpha), ("depth", depth16), ("depth_color", depth_to_colour(depth16)),
              ("overlay", overlay)]  # fmt: skip
    if new_bg is not None:
        images.append(("onto", lift_onto(fg_bg_img, bg_img, alpha, resize_cover_crop(new_bg, h, w))))
    for suffix, img in images:
        path = Path(out_dir) / f"{stem}_{suffix}.png"
        atomic_write_bytes(path, encode_png(img, 3))
        written.append(path)
    path = Path(out_dir) / f"{stem}.json"
    record = {"bg": str(bg_path), "fg_bg": str(fg_bg_path), "align": align, "exact": exact, "refine": refine,
              "match_tone": match_tone, **asdict(report)}  # fmt: skip
    atomic_write_bytes(path, json.dumps(record, indent=2).encode() + b"\n")
    written.append(path)
    return written
