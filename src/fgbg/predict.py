"""`fgbg predict`: bg + fg_bg photos (any size) → mask PNG, 16-bit depth PNG, colour depth, overlay."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fgbg.config import resolve_device
from fgbg.convention import unit_to_u16
from fgbg.images import IMAGE_SUFFIXES, atomic_write_bytes, depth_to_colour, encode_png, load_raw_image
from fgbg.model import LoadedModel, infer, load_model

_LIMITS = {"min_side": 8, "max_pixels": 50_000_000, "max_aspect": 8.0}


def pairs(bg: Path, fg_bg: Path) -> list[tuple[Path, Path]]:
    """Two files, or two folders whose images are matched by file name."""
    bg, fg_bg = Path(bg), Path(fg_bg)
    if bg.is_file() and fg_bg.is_file():
        return [(bg, fg_bg)]
    if bg.is_dir() and fg_bg.is_dir():
        found = [(bg / p.name, p) for p in sorted(fg_bg.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        matched = [(b, f) for b, f in found if b.is_file()]
        if not matched:
            raise FileNotFoundError(f"{fg_bg}: no image with the same name in {bg}")
        return matched
    raise FileNotFoundError(f"{bg}, {fg_bg}: give two image files or two folders")


def network_size(h: int, w: int, size: int) -> tuple[int, int]:
    """The photo's shape scaled so its short side is the model's input size, keeping the aspect
    ratio (the U-Net is fully convolutional), each side a multiple of 32 as the encoder needs."""
    scale = size / min(h, w)
    return tuple(max(32, round(side * scale / 32) * 32) for side in (h, w))


def predict_pair(loaded: LoadedModel, bg_img: np.ndarray, fg_bg_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask uint8 {0, 255}, depth uint16) at fg_bg's size, predicted at the model's input scale
    with the photo's aspect ratio kept."""
    dev = next(loaded.net.parameters()).device
    h, w = fg_bg_img.shape[:2]
    net_hw = network_size(h, w, loaded.input_size)

    def tensor(img):
        t = torch.from_numpy(np.ascontiguousarray(img)).to(dev).permute(2, 0, 1)[None].float() / 255
        return F.interpolate(t, size=net_hw, mode="bilinear", antialias=True, align_corners=False)

    with torch.inference_mode():
        out = infer(loaded.net, tensor(bg_img), tensor(fg_bg_img))
        prob = F.interpolate(torch.sigmoid(out.mask_logits), size=(h, w), mode="bilinear", align_corners=False)
        depth = F.interpolate(out.depth, size=(h, w), mode="bilinear", align_corners=False)
        return ((prob[0, 0] >= 0.5).byte() * 255).cpu().numpy(), unit_to_u16(depth[0, 0])


def run_predict(model_path: Path, bg: Path, fg_bg: Path, out_dir: Path, device: str = "auto", log=print) -> list[Path]:
    """Predict each pair; outputs (mask, 16-bit depth, colour depth, overlay) at the photo's size."""
    dev = resolve_device(device)
    loaded = load_model(Path(model_path), dev)
    written = []
    for bg_path, fg_bg_path in pairs(bg, fg_bg):
        bg_img = load_raw_image(bg_path, **_LIMITS).pixels[..., :3]
        fg_bg_img = load_raw_image(fg_bg_path, **_LIMITS).pixels[..., :3]
        h, w = fg_bg_img.shape[:2]
        bh, bw = bg_img.shape[:2]
        if abs(bh * w - h * bw) > 0.02 * h * bw:
            raise ValueError(f"{bg_path} is {bw}x{bh}, {fg_bg_path} is {w}x{h}: a bg and its fg_bg show the same view")
        if (bh, bw) != (h, w):
            bg_img = cv2.resize(bg_img, (w, h), interpolation=cv2.INTER_AREA)
        mask, depth16 = predict_pair(loaded, bg_img, fg_bg_img)
        overlay = fg_bg_img.copy()
        tint = np.array([255, 40, 40], np.float32)
        overlay[mask > 0] = (0.5 * overlay[mask > 0] + 0.5 * tint).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(overlay, contours, -1, (255, 255, 0), 1)
        stem = fg_bg_path.stem
        for suffix, img in (("mask", mask), ("depth", depth16), ("depth_color", depth_to_colour(depth16)),
                            ("overlay", overlay)):  # fmt: skip
            path = Path(out_dir) / f"{stem}_{suffix}.png"
            atomic_write_bytes(path, encode_png(img, 3))
            written.append(path)
    return written
