"""`prepare` stage: validate every raw file and normalise what is usable.

bg → RGB `image_size`² (cover-resize + centre crop), with its depth map when one is provided;
fg → RGBA trimmed to its alpha box, longest side `fg_size`, plus its mask. Each rejected file gets
one line naming it and the reason; `report.json` lists every file accepted or rejected.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fgbg.config import PrepareParams
from fgbg.convention import metric_to_inverse_u16
from fgbg.images import (
    IMAGE_SUFFIXES,
    MASK_THRESHOLD,
    BadImage,
    alpha_bbox,
    atomic_write_bytes,
    encode_png,
    extract_object_alpha,
    first_line,
    load_raw_image,
    mask_from_alpha,
    object_colour_at_soft_edge,
    resize_cover_crop,
    resize_rgba,
)
from fgbg.prepared import REPORT


class PrepareFailed(RuntimeError):
    """Raised in strict mode when any file was rejected (after the report is written)."""


@dataclass
class Rejection:
    file: str
    reason: str


def list_images(folder: Path) -> tuple[list[Path], list[Rejection]]:
    """Image files in `folder` (sorted by name), plus rejections for entries that are not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: raw image folder not found")
    files, rejected = [], []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.name.startswith("."):
            continue
        if not _is_utf8(p.name):
            rejected.append(Rejection(str(p), "file name is not valid UTF-8 (rename the file)"))
        elif p.suffix.lower() not in IMAGE_SUFFIXES:
            rejected.append(Rejection(str(p), f"not an image file extension ({p.suffix or 'none'})"))
        elif not p.is_file():  # directories, broken links, symlink loops (is_file is False for those)
            rejected.append(Rejection(str(p), "not a regular file (folder, broken link or link loop)"))
        else:
            files.append(p)
    return files, rejected


def _is_utf8(name: str) -> bool:
    """Names the OS gave us as undecodable bytes carry surrogates; JSON, CSV and tar reject them."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def shown(path: str | Path) -> str:
    """A path as printable text, whatever bytes its name holds."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def prepare_bg(path: Path, params: PrepareParams, depth_dir: Path | None):
    """One bg → (RGB image_size², depth uint16 or None, notes); BadImage if unusable."""
    raw = load_raw_image(path, **_limits(params))
    rgb = raw.pixels[..., :3]
    depth = None
    if depth_dir is not None:
        depth = _load_bg_depth(depth_dir, path.stem, rgb.shape[:2])
        depth = resize_depth_cover_crop(depth, params.image_size)
    return resize_cover_crop(rgb, params.image_size), depth, raw.notes


def resize_depth_cover_crop(depth: np.ndarray, size: int) -> np.ndarray:
    """A bg's 16-bit inverse depth cut like its image (resize_cover_crop), averaged over the pixels
    that have depth only: sky (0) where most of a pixel is sky, and never blended into the ground
    (a plain resize made up a depth between the skyline and the sky)."""
    has_depth = (depth > 0).astype(np.float32)
    total = resize_cover_crop(depth.astype(np.float32) * has_depth, size)
    share = resize_cover_crop(has_depth, size)
    mean = total / np.maximum(share, 1e-6)
    return np.where(share >= 0.5, np.clip(np.round(mean), 1, 65535), 0).astype(np.uint16)


DEPTH_SUFFIXES = (".png", ".npy")


def _load_bg_depth(depth_dir: Path, stem: str, shape: tuple[int, int]) -> np.ndarray:
    """A bg's depth: `<stem>.png` (16-bit, the project convention) or `<stem>.npy` (float metres)."""
    for suffix in DEPTH_SUFFIXES:
        path = depth_dir / f"{stem}{suffix}"
        if path.is_file():
            break
    else:
        raise BadImage(f"no depth map {depth_dir / stem}.png or .npy")
    if path.suffix == ".npy":
        try:
            metres = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise BadImage(f"depth map {path} is not a readable .npy ({first_line(e)})") from None
        if metres.ndim != 2 or not np.issubdtype(metres.dtype, np.number):
            raise BadImage(f"depth map {path} must be a 2-D array of metres")
        if not np.isfinite(metres).all():
            raise BadImage(f"depth map {path} has NaN or infinite values")
        depth = metric_to_inverse_u16(metres)
    else:
        depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if depth is None:
            raise BadImage(f"depth map {path} is not a decodable image")
        if depth.dtype != np.uint16 or depth.ndim != 2:
            raise BadImage(f"depth map {path} must be a 16-bit single-channel PNG")
    if depth.shape != shape:
        got, want = depth.shape, shape
        raise BadImage(f"depth map {path} is {got[1]}x{got[0]}, image is {want[1]}x{want[0]}")
    return depth


def prepare_fg(path: Path, params: PrepareParams):
    """One fg → (RGBA trimmed to its alpha box, longest side fg_size; notes); BadImage if unusable."""
    raw = load_raw_image(path, **_limits(params))
    rgba = raw.pixels
    if not raw.has_alpha:
        if params.fg_without_alpha == "reject":
            raise BadImage("foreground has no alpha channel (prepare.fg_without_alpha: reject)")
        alpha = extract_object_alpha(rgba, params.extract_threshold, params.extract_kernel)
        rgba = np.dstack([object_colour_at_soft_edge(rgba, alpha), alpha])
        raw.notes.append("no alpha channel: object cut from its plain background")
    box = alpha_bbox(rgba[..., 3] >= 8)
    if box is None or not mask_from_alpha(rgba[..., 3]).any():
        raise BadImage("foreground is fully transparent")
    x0, y0, x1, y1 = box
    if _alpha_only_at_border(rgba[..., 3]):
        raise BadImage("opaque only along the image border (a frame, not a cut-out object)")
    rgba = rgba[y0:y1, x0:x1]
    h, w = rgba.shape[:2]
    scale = params.fg_size / max(h, w)
    rgba = resize_rgba(rgba, max(1, round(w * scale)), max(1, round(h * scale)))
    if not mask_from_alpha(rgba[..., 3]).any():
        raise BadImage(f"object vanishes at fg_size {params.fg_size} (too thin)")
    return rgba, raw.notes


def _alpha_only_at_border(alpha: np.ndarray, ring: int = 3) -> bool:
    """True when every opaque pixel lies within `ring` px of the edge: a frame, not an object."""
    inner = alpha[ring:-ring, ring:-ring]
    return inner.size > 0 and not (inner >= MASK_THRESHOLD).any() and (alpha >= MASK_THRESHOLD).any()


def _limits(params: PrepareParams) -> dict:
    return {
        "min_side": params.min_side,
        "max_pixels": params.max_pixels,
        "max_aspect": params.max_aspect,
    }


def run_prepare(params: PrepareParams, out_dir: Path, log=print) -> dict:
    """Validate and normalise the raw folders into `out_dir`; return the report."""
    out_dir = Path(out_dir)
    Image.MAX_IMAGE_PIXELS = params.max_pixels
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a clean slate: nothing stale survives a rerun
    raw = Path(params.raw_dir)
    depth_dir = raw / "bg_depth" if (raw / "bg_depth").is_dir() else None
    report: dict = {"params": params.model_dump(), "bg": [], "fg": [], "rejected": []}

    def reject(kind: str, file: str, reason: str) -> None:
        report["rejected"].append({"kind": kind, "file": shown(file), "reason": reason})
        log(f"rejected {kind} {shown(file)}: {reason}", file=sys.stderr)

    for kind, folder in (("bg", raw / "bg"), ("fg", raw / "fg")):
        files, bad = list_images(folder)
        for r in bad:
            reject(kind, r.file, r.reason)
        seen: dict[str, str] = {}
        for path in files:
            name = path.name.lower()
            if name in seen:
                reject(kind, str(path), f"same name as {seen[name]} apart from letter case")
                continue
            seen[name] = str(path)
            item_id = f"{kind}{len(report[kind]):04d}"
            try:
                if kind == "bg":
                    rgb, depth, notes = prepare_bg(path, params, depth_dir)
                    atomic_write_bytes(out_dir / "bg" / f"{item_id}.png", encode_png(rgb, 3))
                    if depth is not None:
                        depth_png = encode_png(depth, 3)
                        atomic_write_bytes(out_dir / "bg_depth" / f"{item_id}.png", depth_png)
                else:
                    rgba, notes = prepare_fg(path, params)
                    atomic_write_bytes(out_dir / "fg" / f"{item_id}.png", encode_png(rgba, 3))
                    mask_png = encode_png(mask_from_alpha(rgba[..., 3]), 3)
                    atomic_write_bytes(out_dir / "fg_mask" / f"{item_id}.png", mask_png)
            except BadImage as e:
                reject(kind, str(path), str(e))
                continue
            for note in notes:
                log(f"note {kind} {path}: {note}", file=sys.stderr)
            report[kind].append({"id": item_id, "source": path.name, "notes": notes})
    report["has_bg_depth"] = depth_dir is not None
    report["counts"] = {k: len(report[k]) for k in ("bg", "fg", "rejected")}
    atomic_write_bytes(out_dir / REPORT, json.dumps(report, indent=1).encode() + b"\n")
    log(
        f"prepared {len(report['bg'])} bg, {len(report['fg'])} fg; "
        f"rejected {len(report['rejected'])} (see {out_dir / REPORT})",
        file=sys.stderr,
    )
    if params.strict and report["rejected"]:
        raise PrepareFailed(
            f"{len(report['rejected'])} raw file(s) rejected and prepare.strict is true; see {out_dir / REPORT}"
        )
    if not report["bg"] or not report["fg"]:
        raise PrepareFailed(f"no usable {'bg' if not report['bg'] else 'fg'} images; see {out_dir / REPORT}")
    return report
