"""`compose` stage: every bg × fg × {plain, flipped} × position → fg_bg + mask, in tar shards.

The whole plan (who goes where) is computed up front from the seed, vectorised; workers only
render and encode their shard's rows, so the bytes of every shard are the same for any `jobs`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from fgbg.config import ComposeParams, SplitParams, resolve_jobs
from fgbg.images import (
    alpha_blend_into,
    atomic_write_bytes,
    blend_premultiplied,
    contact_sheet,
    decode,
    encode_jpeg,
    encode_mask_png,
    encode_png,
    mask_from_alpha,
    premultiply,
    read_image,
    resize_rgba,
)
from fgbg.prepare import load_report
from fgbg.shards import (
    ShardTask,
    ShardWriter,
    build_shards,
    fingerprint_of,
    folder_fingerprint,
    iter_shard,
    read_manifest,
    write_manifest,
)

SPLITS = ("train", "val", "test")
INDEX = "index.csv"
PREVIEW = "preview.png"
PLAN_DTYPE = np.dtype(
    [
        ("split", "u1"),
        ("bg", "i4"),
        ("fg", "i4"),
        ("flip", "u1"),
        ("pos", "i2"),
        ("x", "i2"),
        ("y", "i2"),
        ("w", "i2"),
        ("h", "i2"),
    ]
)

# ---------------------------------------------------------------- geometry


def assign_splits(kind: str, names: list[str], split: SplitParams) -> list[str]:
    """train/val/test for each bg (or fg), by identity.

    Items are ranked by a seeded hash of their source name and cut at the exact ratios, so a
    split's membership depends on names, not on file order, and small sets still get a test
    split (20 items at 0.8/0.1/0.1 → 16/2/2).
    """

    def rank(name: str) -> bytes:
        return hashlib.sha256(f"{split.seed}:{kind}:{name}".encode()).digest()

    n = len(names)
    n_test, n_val = round(split.test * n), round(split.val * n)
    n_train = n - n_val - n_test
    order = sorted(range(n), key=lambda i: rank(names[i]))
    out = [""] * n
    for position, i in enumerate(order):
        out[i] = "train" if position < n_train else "val" if position < n_train + n_val else "test"
    return out


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


def fg_variant(fg_rgba: np.ndarray, flip: bool, w: int, h: int) -> np.ndarray:
    """The fg as it is pasted: resized to w×h (premultiplied, no halo), mirrored when flipped."""
    out = resize_rgba(fg_rgba, w, h)
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


def compose_one(bg: np.ndarray, fg: np.ndarray, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """fg_bg = a·fg + (1−a)·bg at (x, y); mask = (a ≥ 0.5) at the same place."""
    fg_bg = bg.copy()
    alpha_blend_into(fg_bg, fg, x, y)
    mask = np.zeros(bg.shape[:2], np.uint8)
    h, w = fg.shape[:2]
    mask[y : y + h, x : x + w] = mask_from_alpha(fg[..., 3])
    return fg_bg, mask


def sample_key(bg_id: str, fg_id: str, flip: int, pos: int) -> str:
    return f"{bg_id}_{fg_id}_f{flip}_p{pos:02d}"


# ---------------------------------------------------------------- prepared set


class PreparedSet:
    """The prepared bg/fg images in memory (small: ~11 MB at seed scale) with their splits."""

    def __init__(self, prepared_dir: Path, split: SplitParams | None = None, depth: bool = False):
        self.dir = Path(prepared_dir)
        report = load_report(self.dir)
        self.bg_ids = [e["id"] for e in report["bg"]]
        self.fg_ids = [e["id"] for e in report["fg"]]
        self.bg_sources = [e["source"] for e in report["bg"]]
        self.fg_sources = [e["source"] for e in report["fg"]]
        self.bg = [read_image(self.dir / "bg" / f"{i}.png") for i in self.bg_ids]
        self.fg = [read_image(self.dir / "fg" / f"{i}.png") for i in self.fg_ids]
        self.bg_depth = None
        if depth:
            if not report.get("has_bg_depth"):
                raise FileNotFoundError(f"{self.dir}: prepared set has no bg depth (add bg_depth/ to prepare.raw_dir)")
            self.bg_depth = [read_image(self.dir / "bg_depth" / f"{i}.png") for i in self.bg_ids]
        if split is not None:
            self.bg_split = assign_splits("bg", self.bg_sources, split)
            self.fg_split = assign_splits("fg", self.fg_sources, split)

    @property
    def bg_size(self) -> tuple[int, int]:
        h, w = self.bg[0].shape[:2]
        return w, h


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
        rows = np.empty(b.size, PLAN_DTYPE)
        rows["split"], rows["bg"], rows["fg"], rows["flip"], rows["pos"] = s_index, b, f, fl, p
        rows["x"], rows["y"], rows["w"], rows["h"] = x, y, w, h
        parts.append(rows[rng.permutation(b.size)])
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

_STATE: dict = {}


def _init_worker(prepared_dir: str, split: SplitParams, jpeg_quality: int) -> None:
    ps = PreparedSet(Path(prepared_dir), split)
    # workers keep BGR(A) so the JPEG encoder takes the canvas as it is (no channel-swap copy)
    _STATE.update(ps=ps, quality=jpeg_quality, bg_bgr=[np.ascontiguousarray(b[..., ::-1]) for b in ps.bg])
    _variant.cache_clear()


@lru_cache(maxsize=4096)
def _variant(fg: int, flip: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(premultiplied BGR, 255−alpha, mask) of one pasted fg form, computed once per worker."""
    rgba = fg_variant(_STATE["ps"].fg[fg], bool(flip), w, h)
    premult, inv_alpha = premultiply(rgba[..., [2, 1, 0, 3]])
    return premult, inv_alpha, mask_from_alpha(rgba[..., 3])


def _fill_shard(writer: ShardWriter, rows: np.ndarray) -> None:
    ps: PreparedSet = _STATE["ps"]
    quality = _STATE["quality"]
    for split, bg, fg, flip, pos, x, y, w, h in rows.tolist():
        premult, inv_alpha, fg_mask = _variant(fg, flip, w, h)
        fg_bg = _STATE["bg_bgr"][bg].copy()
        blend_premultiplied(fg_bg, premult, inv_alpha, x, y)
        mask = np.zeros(fg_bg.shape[:2], np.uint8)
        mask[y : y + h, x : x + w] = fg_mask
        meta = {
            "bg": ps.bg_ids[bg],
            "fg": ps.fg_ids[fg],
            "flip": flip,
            "position": pos,
            "box": [x, y, w, h],
            "split": SPLITS[split],
        }
        writer.add(
            sample_key(ps.bg_ids[bg], ps.fg_ids[fg], flip, pos),
            {
                "jpg": encode_jpeg(fg_bg, quality, bgr=True),
                "mask.png": encode_mask_png(mask),
                "json": json.dumps(meta, separators=(",", ":")).encode(),
            },
        )


# ---------------------------------------------------------------- stage


def run_compose(compose: ComposeParams, split: SplitParams, prepared_dir: Path, out_dir: Path) -> dict:
    """Build the composite shards, index.csv, shards.json and preview.png in `out_dir`."""
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    ps = PreparedSet(prepared_dir, split)
    plan = make_plan(ps, compose)
    tasks = shard_tasks(plan, compose.shard_size)
    fingerprint = fingerprint_of(
        "compose-v1",
        compose.model_dump(exclude={"jobs", "preview_samples"}),
        split.model_dump(),
        folder_fingerprint(prepared_dir),
    )
    records = build_shards(
        out_dir,
        tasks,
        _fill_shard,
        fingerprint=fingerprint,
        jobs=resolve_jobs(compose.jobs),
        init=_init_worker,
        init_args=(str(prepared_dir), split, compose.jpeg_quality),
        desc="compose",
        keep=(INDEX, PREVIEW, "shards.json"),
    )
    _write_index(out_dir, ps, tasks)
    _write_compose_preview(out_dir, ps, tasks, compose.preview_samples)
    write_manifest(out_dir, fingerprint, records)
    return read_manifest(out_dir)


INDEX_FIELDS = [
    "key",
    "split",
    "shard",
    "bg",
    "fg",
    "bg_source",
    "fg_source",
    "flip",
    "position",
    "x",
    "y",
    "w",
    "h",
]


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


def iter_index(composites_dir: Path) -> Iterator[dict]:
    """Stream index.csv rows (400k rows at seed scale: never hold them all as dicts)."""
    with open(Path(composites_dir) / INDEX, newline="") as f:
        yield from csv.DictReader(f)


def read_index(composites_dir: Path) -> list[dict]:
    return list(iter_index(composites_dir))


def preview_samples(out_dir: Path, shard_names: list[str], n: int):
    """(shard, key, files) for n samples spread over the shards, so every split is shown."""
    per_shard = max(1, -(-n // max(len(shard_names), 1)))
    picked = []
    for name in shard_names:
        for i, (key, files) in enumerate(iter_shard(out_dir / name)):
            if i >= per_shard or len(picked) >= n:
                break
            picked.append((name, key, files))
    return picked


def _write_compose_preview(out_dir: Path, ps: PreparedSet, tasks, n: int) -> None:
    rows = []
    for _, key, files in preview_samples(out_dir, [t.name for t in tasks], n):
        bg = ps.bg[ps.bg_ids.index(key.split("_")[0])]
        rows.append([bg, decode(files["jpg"]), decode(files["mask.png"])])
    if rows:
        atomic_write_bytes(out_dir / PREVIEW, encode_png(contact_sheet(rows), 6))
