"""Image I/O, validation and the pixel operations every stage shares.

In memory images are RGB(A) uint8 H×W×C and masks uint8 {0,255}; OpenCV's BGR is converted at
the encode/decode edge only. Raw user files are opened with Pillow, which reports truncation,
decompression bombs, modes and EXIF orientation far better than OpenCV does.
"""

from __future__ import annotations

import os
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

cv2.setNumThreads(1)  # stages parallelise over processes; threads inside each only contend

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 128  # mask = alpha >= 0.5

_JPEG_FLAGS = cv2.IMWRITE_JPEG_QUALITY


class BadImage(ValueError):
    """A file that cannot be used; str() is a one-line reason (the caller names the file)."""


# ---------------------------------------------------------------- atomic writes


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()


def open_temp_beside(path: Path) -> tuple[int, str]:
    """A temp file next to `path` (same filesystem, so rename is atomic), with normal permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; data files are shared with the team
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write via a temp file in the same folder + rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = open_temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> None:
    """Delete temp files a killed run left behind (names from atomic_write_bytes)."""
    for tmp in Path(folder).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- encode / decode


def encode_jpeg(img: np.ndarray, quality: int, *, bgr: bool = False) -> bytes:
    """JPEG of an RGB image (or a BGR one, which skips a copy: hot loops keep BGR)."""
    ok, buf = cv2.imencode(".jpg", img if bgr else img[..., ::-1], [_JPEG_FLAGS, quality])
    assert ok
    return buf.tobytes()


def encode_png(img: np.ndarray, compression: int = 1, png_filter: int | None = None) -> bytes:
    """PNG of a gray (uint8/uint16), RGB or RGBA array."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR if img.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    flags = [cv2.IMWRITE_PNG_COMPRESSION, compression]
    if png_filter is not None:
        flags += [cv2.IMWRITE_PNG_FILTER, png_filter]
    ok, buf = cv2.imencode(".png", img, flags)
    assert ok
    return buf.tobytes()


def encode_placed_png(plane: np.ndarray, x: int, y: int, width: int, height: int) -> bytes:
    """8-bit gray PNG of a width×height canvas that is 0 except `plane` placed at (x, y): a pasted
    object's mask or alpha, encoded without building the canvas (the compose stage writes two per
    sample). The part that costs, `deflate_plane`, does not depend on the position, so a caller
    that pastes one plane many times keeps it (fgbg.compose does)."""
    return placed_png(deflate_plane(plane, width), x, y, width, height)


class DeflatedPlane(NamedTuple):
    """A plane's scanline run, deflated on its own (see deflate_plane)."""

    data: bytes  # raw deflate, byte-aligned (sync flush): more blocks can follow
    adler_a: int  # its zlib checksum's two halves, from the standard start (1, 0)
    adler_b: int
    shape: tuple[int, int]  # the plane's h, w


def deflate_plane(plane: np.ndarray, width: int) -> DeflatedPlane:
    """The canvas bytes from the plane's first pixel to its last, which do not depend on where it
    is placed: its rows with the same W − w + 1 zeros between them (the rest of each scanline and
    the next one's filter byte). Run-length strategy: these planes are runs of 0 and 255 with soft
    edges (~3× faster than OpenCV's PNG, and smaller)."""
    h, w = plane.shape
    rows = np.zeros((h, int(width) + 1), np.uint8)
    rows[:, :w] = plane
    run = rows.reshape(-1)[: (h - 1) * (int(width) + 1) + w].tobytes()
    c = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    adler = zlib.adler32(run)
    return DeflatedPlane(c.compress(run) + c.flush(zlib.Z_SYNC_FLUSH), adler & 0xFFFF, adler >> 16, (h, w))


def placed_png(plane: DeflatedPlane, x: int, y: int, width: int, height: int) -> bytes:
    """The PNG of the canvas with the deflated plane at (x, y). The canvas's bytes (each scanline a
    filter byte 0, then the pixels) are zeros, the plane's run, zeros: the zeros are deflate blocks
    made once per length (whole scanlines, and the part-line before and after the run), and they
    enter the zlib checksum arithmetically (n zero bytes leave adler's a and add n·a to its b,
    mod 65521). Every block is byte-aligned, so the pieces simply concatenate."""
    x, y, width, height = int(x), int(y), int(width), int(height)
    (h, w), line = plane.shape, width + 1
    before = 1 + x  # this scanline's filter byte and the x zeros left of the plane
    after, below = width - x - w, height - y - h  # right of its last row; whole scanlines under it
    deflated = [_zeros(line * y), _zeros(before), plane.data, _zeros(after), _zeros(line * below, last=True)]
    a = plane.adler_a
    b = (line * y + before + plane.adler_b + (after + line * below) * a) % 65521
    stream = b"\x78\x01" + b"".join(deflated) + (b << 16 | a).to_bytes(4, "big")
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=4096)
def _zeros(n: int, last: bool = False) -> bytes:
    """Raw deflate of n zero bytes, byte-aligned so more blocks can follow (or the final block; an
    empty one when n is 0). Nothing for n = 0 unless it is the last."""
    if n == 0 and not last:
        return b""
    c = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    return c.compress(bytes(n)) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def decode(data: bytes | np.ndarray, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode bytes written by this project (trusted) into RGB/RGBA/gray arrays."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None:
        raise BadImage("not a decodable image")
    if arr.ndim == 3:
        code = cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
        arr = cv2.cvtColor(arr, code)
    return arr


def read_image(path: Path) -> np.ndarray:
    """Read a file this project wrote (prepared set); RGB, RGBA, or gray as stored."""
    return decode(Path(path).read_bytes())


def write_png(path: Path, img: np.ndarray, compression: int = 3) -> None:
    atomic_write_bytes(path, encode_png(img, compression))


# ---------------------------------------------------------------- raw user files


@dataclass
class RawImage:
    """A raw file decoded to RGB or RGBA uint8, with notes on what was converted."""

    pixels: np.ndarray
    has_alpha: bool
    notes: list[str] = field(default_factory=list)


def load_raw_image(path: Path, *, min_side: int, max_pixels: int, max_aspect: float) -> RawImage:
    """Open any raw photo, upright and as 8-bit RGB(A); raise BadImage with a one-line reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BadImage(f"cannot read ({e.strerror})") from None
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                check_dimensions(w, h, min_side, max_pixels, max_aspect)
                im.load()
                im = _upright(im, notes)
                rgb_or_rgba = _to_8bit_rgb(im, notes)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"image too large (more than {max_pixels} pixels)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage(f"corrupt or truncated image ({first_line(e)})") from None
    return RawImage(rgb_or_rgba, rgb_or_rgba.shape[2] == 4, notes)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def check_dimensions(w: int, h: int, min_side: int, max_pixels: int, max_aspect: float) -> None:
    """BadImage unless a w×h image is within the limits (also applied to arrays, fgbg.serving)."""
    if min(w, h) < min_side:
        raise BadImage(f"too small ({w}x{h}; sides must be >= {min_side} px)")
    if w * h > max_pixels:
        raise BadImage(f"image too large ({w}x{h} > {max_pixels} pixels)")
    if max(w, h) / min(w, h) > max_aspect:
        raise BadImage(f"absurd aspect ratio ({w}x{h}; limit {max_aspect:g}:1)")


def _upright(im: Image.Image, notes: list[str]) -> Image.Image:
    orientation = im.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        notes.append(f"rotated upright (EXIF orientation {orientation})")
        return ImageOps.exif_transpose(im)
    return im


def _to_8bit_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    """Every Pillow mode → RGB or RGBA uint8, keeping transparency where the file has it."""
    mode = im.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        notes.append(f"converted {mode} (high bit depth gray) to 8-bit RGB")
        return np.repeat(gray[..., None], 3, axis=2)
    if mode not in ("RGB", "RGBA"):
        notes.append(f"converted from {mode} to {'RGBA' if has_alpha else 'RGB'}")
    if np.asarray(im).dtype != np.uint8 and mode in ("RGB", "RGBA"):  # 16-bit RGB via Pillow
        notes.append("converted 16-bit channels to 8-bit")
    im = im.convert("RGBA" if has_alpha else "RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


# ---------------------------------------------------------------- pixel operations


def resize_cover_crop(img: np.ndarray, size: int, width: int | None = None) -> np.ndarray:
    """Scale so the image covers size×size (bg normalisation) or size×`width` (height × width),
    then centre-crop to it."""
    h, w = img.shape[:2]
    out_h, out_w = size, width or size
    scale = max(out_h / h, out_w / w)
    nw, nh = max(out_w, round(w * scale)), max(out_h, round(h * scale))
    if (nw, nh) != (w, h):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (nw, nh), interpolation=interp)
    y0, x0 = (nh - out_h) // 2, (nw - out_w) // 2
    return np.ascontiguousarray(img[y0 : y0 + out_h, x0 : x0 + out_w])


def resize_rgba(rgba: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with premultiplied alpha so transparent pixels' colour never bleeds in (no halos)."""
    h, w = rgba.shape[:2]
    if (w, h) == (width, height):
        return rgba
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_LINEAR
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    premult = np.concatenate([rgba[..., :3].astype(np.float32) * a, a * 255.0], axis=2)
    out = cv2.resize(premult, (width, height), interpolation=interp)
    alpha = np.clip(out[..., 3:4], 0, 255)
    safe = np.where(alpha > 0, alpha / 255.0, 1.0)
    rgb = np.clip(out[..., :3] / safe, 0, 255)
    return np.concatenate([rgb, alpha], axis=2).round().astype(np.uint8)


def alpha_bbox(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the non-zero alpha, exclusive end; None when fully transparent."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(alpha.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def extract_object_alpha(rgb: np.ndarray, threshold: float, kernel: int) -> np.ndarray:
    """Alpha for an object photographed on a plain background (no alpha channel in the file).

    Object = pixels farther than `threshold` (RGB distance) from the border's median colour,
    cleaned by morphological open + close (seed 004: a 5×5 kernel), holes filled, specks
    dropped, then a 3×3 blur for an anti-aliased edge. BadImage when no object stands out.
    """
    px = rgb.astype(np.float32)
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
    colour = np.median(border, axis=0)
    if (np.linalg.norm(border - colour, axis=1) <= threshold).mean() < 0.9:
        raise BadImage("no alpha channel and no plain background to cut the object from")
    mask = np.where(np.linalg.norm(px - colour, axis=2) > threshold, np.uint8(255), np.uint8(0))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
    mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, k), cv2.MORPH_CLOSE, k)
    outside = cv2.copyMakeBorder(255 - mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=255)
    cv2.floodFill(outside, None, (0, 0), 0)  # what stays 255 is enclosed by the object: holes
    mask |= outside[1:-1, 1:-1]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        raise BadImage(f"no object differs from the background colour by more than {threshold:g}")
    areas = stats[1:, cv2.CC_STAT_AREA]
    mask = np.where(np.isin(labels, 1 + np.flatnonzero(areas >= 0.05 * areas.max())), np.uint8(255), np.uint8(0))
    fraction = mask.mean() / 255
    if fraction < 0.002:
        raise BadImage("object too small to use (under 0.2% of the image)")
    if fraction > 0.95:
        raise BadImage("object fills the whole image: no background to remove")
    return cv2.GaussianBlur(mask, (3, 3), 0)


def object_colour_at_soft_edge(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """rgb with the soft edge's outer half (0 < alpha < 0.5, the plain background's own pixels in a
    cut-out photo) given the mean colour of the object pixels beside it: pasted, that rim then
    fades the object into the new scene instead of carrying the studio colour (a grey or white
    ring on a dark bg)."""
    body = (alpha >= MASK_THRESHOLD).astype(np.float32)
    around = np.ones((3, 3), np.float32)
    weight = cv2.filter2D(body, -1, around, borderType=cv2.BORDER_CONSTANT)
    colour = cv2.filter2D(rgb.astype(np.float32) * body[..., None], -1, around, borderType=cv2.BORDER_CONSTANT)
    rim = (alpha > 0) & (alpha < MASK_THRESHOLD) & (weight > 0)
    out = rgb.copy()
    out[rim] = np.clip(np.round(colour[rim] / weight[rim][:, None]), 0, 255).astype(np.uint8)
    return out


def mask_from_alpha(alpha: np.ndarray) -> np.ndarray:
    return np.where(alpha >= MASK_THRESHOLD, np.uint8(255), np.uint8(0))


def premultiply(fg_rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(colour·a, 255−a) as uint16: the per-fg half of the blend, computed once and reused."""
    a = fg_rgba[..., 3:4].astype(np.uint16)
    return fg_rgba[..., :3].astype(np.uint16) * a, 255 - a


def blend_premultiplied(canvas: np.ndarray, premult: np.ndarray, inv_alpha: np.ndarray, x: int, y: int):
    """canvas[y:y+h, x:x+w] = round((fg·a + canvas·(255−a)) / 255), exact integer arithmetic.

    (t + 128 + ((t + 128) >> 8)) >> 8 equals round(t / 255) for every t ≤ 255², without a division.
    """
    h, w = premult.shape[:2]
    region = canvas[y : y + h, x : x + w]
    t = region.astype(np.uint16)
    t *= inv_alpha
    t += premult
    t += 128
    t += t >> 8
    t >>= 8
    region[...] = t


# ---------------------------------------------------------------- contact sheets


def depth_to_colour(depth_u16: np.ndarray) -> np.ndarray:
    """A 16-bit depth map as an RGB picture, stretched per image so near/far read at a glance."""
    d = depth_u16.astype(np.float32)
    lo, hi = float(d.min()), float(d.max())
    gray = ((d - lo) / max(hi - lo, 1.0) * 255).astype(np.uint8)
    return cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO)[..., ::-1]


def contact_sheet(rows: list[list[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Tile rows of same-size images (RGB, gray uint8 or depth uint16) into one RGB picture."""

    def rgb(img: np.ndarray) -> np.ndarray:
        if img.dtype == np.uint16:
            return depth_to_colour(img)
        return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]

    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + gap) - gap, ncols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            sheet[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = rgb(img)
    return sheet
