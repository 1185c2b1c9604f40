"""`compose` stage: every bg × fg × {plain, flipped} × position → fg_bg + mask + alpha, in tar shards.

The whole plan (who goes where) is computed up front from the seed, vectorised; workers only
render and encode their shard's rows, so the bytes of every shard are the same for any `jobs`.
One compositing path: `Composer` (what the shards hold), `Composer.render` and `compose_one` all
blend through `blend_premultiplied` from one pasted fg form; the shards' mask and alpha PNGs are
that form's planes, placed (`images.placed_png`; a test decodes every shard sample against `render`).
"""

from __future__ import annotations

import csv
import io
import json
from functools import lru_cache, partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fgbg.config import ComposeParams, SplitParams, resolve_jobs
from fgbg.images import (
    DeflatedPlane,
    atomic_write_bytes,
    blend_premultiplied,
    decode,
    deflate_plane,
    encode_jpeg,
    mask_from_alpha,
    placed_png,
    premultiply,
)
from fgbg.prepared import INDEX, INDEX_FIELDS, SPLITS, PreparedSet, fg_variant, sample_key
from fgbg.shards import (
    PREVIEW,
    Part,
    ShardTask,
    ShardWriter,
    build_shards,
    code_fingerprint,
    fingerprint_of,
    finish_stage,
    folder_fingerprint,
    part_summary,
    preview_samples,
)

PLAN_DTYPE = np.dtype(
    [("split", "u1"), ("bg", "i4"), ("fg", "i4"), ("flip", "u1"), ("pos", "i2"),
     ("x", "i2"), ("y", "i2"), ("w", "i2"), ("h", "i2")]
)  # fmt: skip

# ---------------------------------------------------------------- compositing


class PastedFg(NamedTuple):
    """One fg form as it is pasted, computed once and reused for every position."""

    premult: np.ndarray  # colour·a, uint16
    inv_alpha: np.ndarray  # 255 − a, uint16
    mask: np.ndarray  # (a ≥ 0.5) as {0, 255}
    alpha: np.ndarray  # a, uint8 (the soft matte the blend used)


def pasted_fg(fg_rgba: np.ndarray) -> PastedFg:
    premult, inv_alpha = premultiply(fg_rgba)
    alpha = np.ascontiguousarray(fg_rgba[..., 3])
    return PastedFg(premult, inv_alpha, mask_from_alpha(alpha), alpha)


def paste_fg(canvas: np.ndarray, fg: PastedFg, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """canvas[y:y+h, x:x+w] ← a·fg + (1−a)·canvas (in place, exact integer rounding); returns the
    mask (a ≥ 0.5) and the alpha a at the same place, on the canvas's grid (0 outside the fg)."""
    blend_premultiplied(canvas, fg.premult, fg.inv_alpha, x, y)
    mask = np.zeros(canvas.shape[:2], np.uint8)
    alpha = np.zeros(canvas.shape[:2], np.uint8)
    h, w = fg.mask.shape
    mask[y : y + h, x : x + w] = fg.mask
    alpha[y : y + h, x : x + w] = fg.alpha
    return mask, alpha


def compose_one(bg: np.ndarray, fg_rgba: np.ndarray, x: int, y: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fg_bg = a·fg + (1−a)·bg at (x, y); mask = (a ≥ 0.5) and alpha = a at the same place."""
    fg_bg = bg.copy()
    return fg_bg, *paste_fg(fg_bg, pasted_fg(fg_rgba), x, y)


# ---------------------------------------------------------------- geometry


def fit_size(fw, fh, scale, bg_w: int, bg_h: int):
    """fg size after `scale`, shrunk (keeping aspect) to fit inside the bg when it is larger."""
    w = np.maximum(1, np.round(np.asarray(fw) * scale)).astype(np.int64)
    h = np.maximum(1, np.round(np.asarray(fh) * scale)).astype(np.int64)
    shrink = np.minimum(1.0, np.minimum(bg_w / w, bg_h / h))
    w = np.clip(np.floor(w * shrink + 1e-9), 1, bg_w).astype(np.int64)
    h = np.clip(np.floor(h * shrink + 1e-9), 1, bg_h).astype(np.int64)
    return w, h


def grid_positions(bg_w: int, bg_h: int, w, h, cols: int, rows: int, pos):
    """Seed-004 grid: x step (W−w)/(cols−1), y step (H−h)/(rows−1); position p = row·cols + col."""
    col, row = np.asarray(pos) % cols, np.asarray(pos) // cols
    x = np.round(col * (bg_w - w) / max(cols - 1, 1)) if cols > 1 else (bg_w - w) // 2
    y = np.round(row * (bg_h - h) / max(rows - 1, 1)) if rows > 1 else (bg_h - h) // 2
    return np.asarray(x, np.int64), np.asarray(y, np.int64)


# ---------------------------------------------------------------- plan


def make_plan(ps: PreparedSet, params: ComposeParams) -> np.ndarray:
    """All samples, split by identity (no sample mixes splits), shuffled within each split."""
    bg_w, bg_h = ps.bg_size
    fw = np.array([f.shape[1] for f in ps.fg])
    fh = np.array([f.shape[0] for f in ps.fg])
    flips = [0, 1] if params.flip else [0]
    parts = []
    for s_index, split in enumerate(SPLITS):
        bgs = [i for i, s in enumerate(ps.bg_split) if s == split]
        fgs = [i for i, s in enumerate(ps.fg_split) if s == split]
        if not bgs or not fgs:
            continue
        rng = np.random.default_rng([params.seed, s_index])
        b, f, fl, p = (a.ravel() for a in np.meshgrid(bgs, fgs, flips, range(params.n_positions), indexing="ij"))
        scale = 1.0
        if params.scale_jitter:
            scale = rng.uniform(1 - params.scale_jitter, 1 + params.scale_jitter, b.size)
        w, h = fit_size(fw[f], fh[f], scale, bg_w, bg_h)
        if params.placement == "grid":
            x, y = grid_positions(bg_w, bg_h, w, h, *params.grid, p)
        else:
            x = np.floor(rng.random(b.size) * (bg_w - w + 1)).astype(np.int64)
            y = np.floor(rng.random(b.size) * (bg_h - h + 1)).astype(np.int64)
        order = rng.permutation(b.size)  # shuffled column by column: a gather of records is ~10× slower
        rows = np.empty(b.size, PLAN_DTYPE)
        rows["split"] = s_index
        for name, column in zip(PLAN_DTYPE.names[1:], (b, f, fl, p, x, y, w, h), strict=True):
            rows[name] = column[order]
        parts.append(rows)
    if not parts:
        raise ValueError("no split has both a bg and a fg: add images or change split ratios")
    return np.concatenate(parts)


def shard_tasks(plan: np.ndarray, shard_size: int) -> list[ShardTask]:
    """Consecutive rows of each split → `<split>/shard-000000.tar`, `…000001.tar`, …"""
    tasks = []
    for s_index, split in enumerate(SPLITS):
        rows = plan[plan["split"] == s_index]
        for i, start in enumerate(range(0, len(rows), shard_size)):
            tasks.append(ShardTask(f"{split}/shard-{i:06d}.tar", rows[start : start + shard_size]))
    return tasks


# ---------------------------------------------------------------- workers


class Composer:
    """Renders and encodes plan rows into a shard; one per worker process (see build_shards).

    Keeps the bgs and fg forms in BGR(A) so the JPEG encoder takes the canvas as it is (no
    channel-swap copy per sample), and caches each pasted fg form (size × flip) once.
    """

    def __init__(self, ps: PreparedSet, jpeg_quality: int):
        self.ps = ps  # the stage's own, already loaded: a part (or a run) reads the prepared set once
        self.quality = jpeg_quality
        self.bg_bgr = [np.ascontiguousarray(b[..., ::-1]) for b in self.ps.bg]
        self.pasted = lru_cache(maxsize=4096)(self._pasted)
        self.height, self.width = self.bg_bgr[0].shape[:2]
        self.deflated = lru_cache(maxsize=4096)(self._deflated)  # per fg form, like `pasted`

    def _pasted(self, fg: int, flip: int, w: int, h: int) -> PastedFg:
        return pasted_fg(fg_variant(self.ps.fg[fg], bool(flip), w, h)[..., [2, 1, 0, 3]])

    def _deflated(self, fg: int, flip: int, w: int, h: int) -> tuple[DeflatedPlane, DeflatedPlane]:
        pasted = self.pasted(fg, flip, w, h)
        return deflate_plane(pasted.mask, self.width), deflate_plane(pasted.alpha, self.width)

    def render(self, row: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One plan row → (fg_bg as BGR, mask, alpha): exactly the pixels the shard encodes."""
        _, bg, fg, flip, _, x, y, w, h = row
        fg_bg = self.bg_bgr[bg].copy()
        return fg_bg, *paste_fg(fg_bg, self.pasted(fg, flip, w, h), x, y)

    def __call__(self, writer: ShardWriter, rows: np.ndarray) -> None:
        """Blend each row like `render`; its mask and alpha PNGs come from the fg form's deflated
        planes (images.encode_placed_png's parts: no canvas, no deflate per sample)."""
        ps, width, height = self.ps, self.width, self.height
        for row in rows.tolist():
            split, bg, fg, flip, pos, x, y, w, h = row
            pasted = self.pasted(fg, flip, w, h)
            fg_bg = self.bg_bgr[bg].copy()
            blend_premultiplied(fg_bg, pasted.premult, pasted.inv_alpha, x, y)
            mask_png, alpha_png = self.deflated(fg, flip, w, h)
            meta = {"bg": ps.bg_ids[bg], "fg": ps.fg_ids[fg], "flip": flip, "position": pos,
                    "box": [x, y, w, h], "split": SPLITS[split]}  # fmt: skip
            writer.add(
                sample_key(ps.bg_ids[bg], ps.fg_ids[fg], flip, pos),
                {
                    "jpg": encode_jpeg(fg_bg, self.quality, bgr=True),
                    "mask.png": placed_png(mask_png, x, y, width, height),
                    "alpha.png": placed_png(alpha_png, x, y, width, height),
                    "json": json.dumps(meta, separators=(",", ":")).encode(),
                },
            )


# ---------------------------------------------------------------- stage


def run_compose(
    compose: ComposeParams, split: SplitParams, prepared_dir: Path, out_dir: Path, part: Part | None = None, log=print
) -> dict:
    """Build the composite shards, index.csv, shards.json and preview.png in `out_dir`; with a
    `part`, only that part's shards (fgbg.parts): the plain run merges them."""
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    ps = PreparedSet(prepared_dir, split)
    plan = make_plan(ps, compose)
    tasks = shard_tasks(plan, compose.shard_size)
    fingerprint = fingerprint_of(
        "compose-v2",
        code_fingerprint("compose"),
        compose.model_dump(exclude={"jobs", "preview_samples"}),
        split.model_dump(),
        folder_fingerprint(prepared_dir),
    )
    records = build_shards(
        out_dir,
        tasks,
        partial(Composer, ps, compose.jpeg_quality),
        fingerprint=fingerprint,
        jobs=resolve_jobs(compose.jobs),
        desc="compose",
        keep=(INDEX, PREVIEW, "shards.json"),
        part=part,
        log=log,
    )
    if part is not None:
        return part_summary(part, records)
    _write_index(out_dir, ps, tasks)
    picked = preview_samples(out_dir, [t.name for t in tasks], compose.preview_samples)
    shown = ("jpg", "mask.png", "alpha.png")
    preview = [[ps.bg_of(key), *(decode(files[f]) for f in shown)] for _, key, files in picked]
    return finish_stage(out_dir, fingerprint, records, preview)


def _write_index(out_dir: Path, ps: PreparedSet, tasks: list[ShardTask]) -> None:
    """key → shard, ids, placement and split: one row per sample, in shard order."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(INDEX_FIELDS)
    for t in tasks:
        for split, bg, fg, flip, pos, x, y, w, h in t.payload.tolist():
            key = sample_key(ps.bg_ids[bg], ps.fg_ids[fg], flip, pos)
            out.writerow(
                [key, SPLITS[split], t.name, ps.bg_ids[bg], ps.fg_ids[fg], ps.bg_sources[bg],
                 ps.fg_sources[fg], flip, pos, x, y, w, h]
            )  # fmt: skip
    atomic_write_bytes(out_dir / INDEX, buf.getvalue().encode())
