"""`depth` stage: a depth map for every composite, in shards keyed like the composites.

Convention (see convention.DEPTH_CONVENTION): 16-bit PNG of normalised inverse depth, near = bright.
Mode `compose` takes each bg's depth once (source `provided`: the prepared bg_depth maps; a
pretrained teacher plugs in at `bg_depth_maps`) and pastes the fg at the depth of the bg where
the fg touches the ground — the bottom of its mask — never behind the bg it covers.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from fgbg.config import DepthParams, resolve_device, resolve_jobs, uses_bf16
from fgbg.convention import DEPTH_CONVENTION
from fgbg.images import MASK_THRESHOLD, decode, encode_png
from fgbg.prepared import PreparedSet, fg_variant, iter_index, parse_key, sample_key
from fgbg.shards import (
    PREVIEW,
    Part,
    ShardJournal,
    ShardTask,
    ShardWriter,
    build_shards,
    code_fingerprint,
    fingerprint_of,
    finish_stage,
    folder_fingerprint,
    iter_shard,
    part_summary,
    preview_samples,
    read_manifest,
)
from fgbg.teacher import DepthTeacher, to_inverse_u16


def contact_point(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) where the object touches the ground: its lowest mask row, middle pixel there."""
    rows = np.flatnonzero(mask.any(axis=1))
    bottom = int(rows[-1])
    cols = np.flatnonzero(mask[bottom])
    return bottom, int(cols[len(cols) // 2])


def ground_depth(bg_depth: np.ndarray, row: int, col: int) -> int:
    """The depth the object stands at from (row, col), its contact point in the bg: the bg there,
    or where that is sky (0: the object was placed above the horizon), the first ground below it
    in that column, else the bg's farthest ground (its horizon); 0 only for a bg with no ground.
    Without the fallback a floating object took the sky's depth and vanished from the depth map."""
    below = bg_depth[row:, col]  # the contact pixel first
    ground = np.flatnonzero(below)
    if ground.size:
        return int(below[ground[0]])
    anywhere = bg_depth[bg_depth > 0]
    return int(anywhere.min()) if anywhere.size else 0


def paste_depth(bg_depth: np.ndarray, mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """bg depth with the object (bool `mask`, placed at x, y) standing at its ground-contact depth
    (ground_depth).

    Values are inverse depth (bigger = nearer), so `max` keeps the object in front of whatever
    bg it covers: it is never pushed behind a surface it is drawn over.
    """
    out = bg_depth.copy()
    if not mask.any():  # an fg whose mask vanished when compose shrank it: nothing to stand anywhere
        return out
    cy, cx = contact_point(mask)
    contact = ground_depth(bg_depth, y + cy, x + cx)
    h, w = mask.shape
    region = out[y : y + h, x : x + w]
    region[mask] = np.maximum(region[mask], contact)
    return out


def bg_depth_maps(ps: PreparedSet, params: DepthParams, teacher: DepthTeacher | None = None) -> list[np.ndarray]:
    """Each bg's depth in the project convention: provided maps, or the teacher once per bg."""
    if params.source == "provided":
        return ps.bg_depth
    teacher = teacher or load_teacher(params)
    maps = []
    for start in range(0, len(ps.bg), params.teacher.batch_size):
        batch = torch.from_numpy(np.stack(ps.bg[start : start + params.teacher.batch_size]))
        out = teacher.predict(batch)
        maps.extend(to_inverse_u16(out.maps, out.metric))  # relative teachers: normalised per bg
    return maps


def load_teacher(params: DepthParams) -> DepthTeacher:
    t = params.teacher
    return DepthTeacher(t.model, t.resolution, t.device, t.precision)


# ---------------------------------------------------------------- compose mode workers


class DepthPaster:
    """Writes a shard's depth maps in compose mode; one per worker process (see build_shards)."""

    def __init__(self, prepared_dir: Path, png_compression: int, bg_depth: list[np.ndarray]):
        self.ps = PreparedSet(Path(prepared_dir))
        self.bg_depth, self.png = bg_depth, png_compression
        self.mask = lru_cache(maxsize=4096)(self._mask)

    def _mask(self, fg: int, flip: int, w: int, h: int) -> np.ndarray:
        return fg_variant(self.ps.fg[fg], bool(flip), w, h)[..., 3] >= MASK_THRESHOLD

    def __call__(self, writer: ShardWriter, rows: np.ndarray) -> None:
        ps = self.ps
        for b, f, flip, pos, x, y, w, h in rows.tolist():
            depth = paste_depth(self.bg_depth[b], self.mask(f, flip, w, h), x, y)
            writer.add(sample_key(ps.bg_ids[b], ps.fg_ids[f], flip, pos), {"depth.png": _encode_depth(depth, self.png)})


def _encode_depth(depth: np.ndarray, compression: int) -> bytes:
    # PNG "up" filter suits depth's vertical gradients: ~0.15 ms per 192² map
    return encode_png(depth, compression, cv2.IMWRITE_PNG_FILTER_UP)


def _rows_by_shard(composites_dir: Path, shard_names, ps: PreparedSet) -> list[tuple[str, np.ndarray]]:
    """index.csv as one compact int32 array per shard: bg, fg (positions in the prepared set),
    flip, position, box."""
    bg_pos = {b: i for i, b in enumerate(ps.bg_ids)}
    fg_pos = {f: i for i, f in enumerate(ps.fg_ids)}
    by_shard: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    for r in iter_index(composites_dir):
        by_shard[r["shard"]].append((bg_pos[r["bg"]], fg_pos[r["fg"]], *(int(r[k]) for k in _ROW_FIELDS)))
    return [(name, np.array(by_shard.pop(name, []), np.int32).reshape(-1, 8)) for name in sorted(shard_names)]


_ROW_FIELDS = ("flip", "position", "x", "y", "w", "h")


# ---------------------------------------------------------------- per-image mode


class ShardImages(IterableDataset):
    """Batches of decoded fg_bg images, never crossing a shard; each DataLoader worker takes every
    n-th shard.

    Yields (shard names, index in shard, shard length, keys, uint8 B×H×W×3 tensor): only uint8
    pixels cross the process boundary, and a batch is a fixed slice of one shard, so its
    composition (and the teacher's output) depends neither on timing nor on how the shards are
    split over workers, parts or GPUs.
    """

    def __init__(self, composites_dir: Path, shard_names: list[str], batch_size: int):
        self.dir, self.names, self.batch_size = Path(composites_dir), list(shard_names), batch_size

    def __iter__(self):
        info = get_worker_info()
        names = self.names if info is None else self.names[info.id :: info.num_workers]
        for name in names:
            samples = list(iter_shard(self.dir / name))
            for start in range(0, len(samples), self.batch_size):
                batch = samples[start : start + self.batch_size]
                yield (
                    [name] * len(batch),
                    torch.arange(start, start + len(batch)),
                    torch.full((len(batch),), len(samples)),
                    [key for key, _ in batch],
                    torch.from_numpy(np.stack([decode(files["jpg"]) for _, files in batch])),
                )


def _run_per_image(params: DepthParams, teacher: DepthTeacher, composites_dir: Path, journal: ShardJournal) -> None:
    """The teacher on every composite, shards written whole and in order as they complete."""
    if not journal.todo:
        return
    workers = min(params.teacher.workers, len(journal.todo))
    loader = DataLoader(
        ShardImages(composites_dir, journal.todo, params.teacher.batch_size),
        batch_size=None,  # the dataset batches (within a shard)
        num_workers=workers,
        pin_memory=teacher.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    pending: dict[str, list] = {}
    in_flight: deque = deque()
    bar = tqdm(total=len(journal.todo), desc="depth (teacher, per image)", unit="shard", dynamic_ncols=True)

    def encode_batch(maps: np.ndarray) -> list[bytes]:
        return [_encode_depth(m, params.png_compression) for m in maps]

    def land(names, index, counts, keys, pngs) -> None:
        """File a batch's PNGs under their shards; write each shard whole once it is complete."""
        for name, i, n, key, png in zip(names, index.tolist(), counts.tolist(), keys, pngs, strict=True):
            slots = pending.setdefault(name, [n, [None] * n])
            slots[1][i] = (key, png)
            slots[0] -= 1
            if slots[0] == 0:
                writer = ShardWriter(journal.out_dir / name)
                for k, data in pending.pop(name)[1]:
                    writer.add(k, {"depth.png": data})
                journal.record(name, writer.commit())
                bar.update(1)

    # PNG encoding runs in threads (zlib releases the GIL) while the next batch is on the model
    with ThreadPoolExecutor(4) as encoders:
        for names, index, counts, keys, images in loader:
            out = teacher.predict(images)
            maps = to_inverse_u16(out.maps, out.metric)  # relative teachers: normalised per image
            in_flight.append((names, index, counts, keys, encoders.submit(encode_batch, maps)))
            while len(in_flight) > 4 or (in_flight and in_flight[0][-1].done()):
                *meta, future = in_flight.popleft()
                land(*meta, future.result())
        while in_flight:
            *meta, future = in_flight.popleft()
            land(*meta, future.result())
    bar.close()


# ---------------------------------------------------------------- stage


def run_depth(
    params: DepthParams, prepared_dir: Path, composites_dir: Path, out_dir: Path, part: Part | None = None, log=print
) -> dict:
    """One depth shard per composite shard, same name and keys; shards.json; preview.png. With a
    `part`, only that part's shards (fgbg.parts): the plain run merges them."""
    prepared_dir, composites_dir, out_dir = Path(prepared_dir), Path(composites_dir), Path(out_dir)
    composites = read_manifest(composites_dir)
    names = sorted(composites["shards"])
    fingerprint = fingerprint_of(
        "depth-v2",
        code_fingerprint("depth"),
        params.model_dump(exclude={"jobs": True, "preview_samples": True, "teacher": {"precision"}}),  # resolved below
        _teacher_fingerprint(params),
        composites["fingerprint"],
        folder_fingerprint(prepared_dir),
    )
    keep = (PREVIEW, "shards.json")
    teacher = load_teacher(params) if params.source == "teacher" else None  # fail before touching outputs
    if params.mode == "per_image":
        journal = ShardJournal(out_dir, names, fingerprint, keep, part, log)
        try:
            _run_per_image(params, teacher, composites_dir, journal)
        finally:
            records = journal.close()
    else:
        ps = PreparedSet(prepared_dir, depth=params.source == "provided")
        tasks = [ShardTask(name, rows) for name, rows in _rows_by_shard(composites_dir, names, ps)]
        records = build_shards(
            out_dir,
            tasks,
            partial(DepthPaster, prepared_dir, params.png_compression, bg_depth_maps(ps, params, teacher)),
            fingerprint=fingerprint,
            jobs=resolve_jobs(params.jobs),
            desc="depth",
            keep=keep,
            part=part,
            log=log,
        )
    if part is not None:
        return part_summary(part, records)
    preview = _preview_rows(out_dir, composites_dir, prepared_dir, names, params.preview_samples)
    manifest = finish_stage(out_dir, fingerprint, records, preview)
    manifest["convention"] = DEPTH_CONVENTION
    return manifest


def depth_agreement(params: DepthParams, prepared_dir: Path, composites_dir: Path, samples: int = 64) -> dict:
    """How far compose-mode depth is from per-image depth, with the same teacher, on a sample.

    Compose mode is aligned to per-image depth by least-squares scale and shift (both are
    relative), then AbsRel and δ<1.25 are measured inside the fg mask and outside it.
    """
    prepared_dir, composites_dir = Path(prepared_dir), Path(composites_dir)
    names = sorted(read_manifest(composites_dir)["shards"])
    picked = preview_samples(composites_dir, names, samples)
    if not picked:
        raise ValueError(f"{composites_dir}: no composites to sample")
    teacher_params = params.model_copy(update={"source": "teacher"})
    ps = PreparedSet(prepared_dir)
    teacher = load_teacher(teacher_params)
    bg_maps = bg_depth_maps(ps, teacher_params, teacher)
    sums = {region: np.zeros(3) for region in ("fg", "bg")}  # absrel sum, delta1 hits, pixels
    for start in range(0, len(picked), params.teacher.batch_size):
        chunk = picked[start : start + params.teacher.batch_size]
        images = torch.from_numpy(np.stack([decode(files["jpg"]) for _, _, files in chunk]))
        out = teacher.predict(images)
        per_image = to_inverse_u16(out.maps, out.metric).astype(np.float64)
        for (_, _, files), reference in zip(chunk, per_image, strict=True):
            meta = json.loads(files["json"])
            x, y, w, h = meta["box"]
            mask = decode(files["mask.png"]) > 0
            composed = paste_depth(bg_maps[ps.bg_ids.index(meta["bg"])], mask[y : y + h, x : x + w], x, y)
            aligned = _align(composed.astype(np.float64), reference)
            valid = reference > 0.01 * 65535
            for region, sel in (("fg", mask & valid), ("bg", ~mask & valid)):
                ratio = aligned[sel] / reference[sel]
                sums[region] += (
                    np.abs(ratio - 1).sum(),
                    (np.maximum(ratio, 1 / np.maximum(ratio, 1e-9)) < 1.25).sum(),
                    sel.sum(),
                )
    result = {"samples": len(picked), "teacher": params.teacher.model, "resolution": teacher.resolution}
    for region, (absrel, hits, n) in sums.items():
        result[f"{region}_absrel"] = round(absrel / max(n, 1), 4)
        result[f"{region}_delta1"] = round(hits / max(n, 1), 4)
    return result


def _align(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Least-squares scale and shift of `pred` onto `ref` (relative depth has neither)."""
    a = np.stack([pred.ravel(), np.ones(pred.size)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(a, ref.ravel(), rcond=None)
    return pred * scale + shift


def _teacher_fingerprint(params: DepthParams) -> str | None:
    """A local teacher folder's content is an input too: new weights, new depth. So are the device it
    runs on and its precision (bf16 and float32, a GPU's kernels and a CPU's give other bytes): parts
    built on a GPU machine and a CPU one must not be merged as one run."""
    if params.source != "teacher":
        return None
    folder = Path(params.teacher.model)
    weights = folder_fingerprint(folder) if folder.is_dir() else params.teacher.model
    device = resolve_device(params.teacher.device)
    return f"{weights}@{device.type}" + ("/bf16" if uses_bf16(device, params.teacher.precision) else "")


def _preview_rows(out_dir, composites_dir, prepared_dir, shard_names, n) -> list[list[np.ndarray]]:
    """bg | fg_bg | mask | depth for a few samples, read back from the shards as stored."""
    picked = preview_samples(composites_dir, shard_names, n)
    depth_of = {}
    for name in dict.fromkeys(name for name, _, _ in picked):
        wanted = {key for shard, key, _ in picked if shard == name}
        for key, files in iter_shard(out_dir / name):
            if key in wanted:
                depth_of[key] = decode(files["depth.png"])
                wanted.discard(key)
            if not wanted:
                break
    rows = []
    for _, key, files in picked:
        bg = decode((prepared_dir / "bg" / f"{parse_key(key).bg}.png").read_bytes())
        rows.append([bg, decode(files["jpg"]), decode(files["mask.png"]), depth_of[key]])
    return rows
