"""`stats` stage: mean/std per channel of bg, fg_bg, mask, alpha and depth over the train split.

Streamed shard by shard in worker processes; sums are exact integers (no float drift), so the
figures are identical for any number of workers. Values are on a [0, 1] scale, as the model's
normalisation uses them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fgbg.config import StatsParams, resolve_jobs
from fgbg.convention import DEPTH_CONVENTION_SHORT
from fgbg.images import atomic_write_bytes, decode
from fgbg.prepared import PreparedSet, iter_index
from fgbg.shards import iter_shard, read_manifest

RGB = ("r", "g", "b")


class _Hist:
    """Per-channel value histograms: exact, cheap to add (cv2.calcHist) and to merge."""

    def __init__(self, channels: int, levels: int):
        self.counts = np.zeros((channels, levels), np.int64)

    def add(self, img: np.ndarray, weight: int = 1) -> None:
        img = img if img.ndim == 3 else img[..., None]
        levels = self.counts.shape[1]
        if levels == 65536:  # calcHist takes 8-bit or float; bincount is exact for uint16
            self.counts[0] += weight * np.bincount(img.ravel(), minlength=levels)
            return
        for c in range(self.counts.shape[0]):
            h = cv2.calcHist([img], [c], None, [levels], [0, levels])
            self.counts[c] += weight * np.asarray(h).reshape(-1).astype(np.int64)

    def merge(self, other: _Hist) -> None:
        self.counts += other.counts

    def result(self, scale: float, names=None) -> dict:
        """Mean and std on [0, 1]; sums in Python ints, so nothing overflows or drifts."""
        values = np.arange(self.counts.shape[1], dtype=object)
        means, stds = [], []
        for counts in self.counts:
            c = counts.astype(object)
            n, s, sq = int(c.sum()), int((c * values).sum()), int((c * values * values).sum())
            mean = s / n
            means.append(round(mean / scale, 6))
            stds.append(round(math.sqrt(max(sq / n - mean * mean, 0.0)) / scale, 6))
        if names is None:
            return {"mean": means[0], "std": stds[0]}
        return {"mean": dict(zip(names, means, strict=True)), "std": dict(zip(names, stds, strict=True))}


def _new_totals() -> dict[str, _Hist]:
    return {"fg_bg": _Hist(3, 256), "mask": _Hist(1, 2), "alpha": _Hist(1, 256), "depth": _Hist(1, 65536)}


def _shard_moments(args: tuple[str, str]) -> dict[str, _Hist]:
    comp_path, depth_path = args
    acc = _new_totals()
    pairs = zip(iter_shard(Path(comp_path)), iter_shard(Path(depth_path)), strict=True)
    for (key, comp), (dkey, depth) in pairs:
        if key != dkey:
            raise ValueError(f"{depth_path}: sample {dkey} where {comp_path} has {key}")
        acc["fg_bg"].add(decode(comp["jpg"]))
        acc["mask"].add(decode(comp["mask.png"]) // 255)
        acc["alpha"].add(decode(comp["alpha.png"]))
        acc["depth"].add(decode(depth["depth.png"]))
    return acc


def run_stats(params: StatsParams, prepared_dir: Path, composites_dir: Path, depth_dir: Path, out: Path) -> dict:
    """Write `out` (DVC metrics) with the train split's mean/std of every input and target."""
    composites_dir, depth_dir = Path(composites_dir), Path(depth_dir)
    shards = [n for n in read_manifest(composites_dir)["shards"] if n.startswith("train/")]
    if not shards:
        raise ValueError(f"{composites_dir}: no train shards; the train split is empty")
    depth_shards = read_manifest(depth_dir)["shards"]
    missing = [n for n in shards if n not in depth_shards]
    if missing:
        raise FileNotFoundError(f"{depth_dir}: no depth shard for {missing[0]}; rerun `fgbg depth`")

    totals = _new_totals()
    jobs = [(str(composites_dir / n), str(depth_dir / n)) for n in shards]
    workers = min(resolve_jobs(params.jobs), len(jobs))
    bar = tqdm(total=len(jobs), desc="stats", unit="shard", dynamic_ncols=True)
    if workers <= 1:
        results = map(_shard_moments, jobs)
    else:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("fork"))
        results = pool.map(_shard_moments, jobs)  # ordered: sums are merged in shard order
    for acc in results:
        for k in totals:
            totals[k].merge(acc[k])
        bar.update(1)
    bar.close()
    if workers > 1:
        pool.shutdown()

    # bg: each bg counted once per train sample it appears in (what the model sees)
    ps = PreparedSet(Path(prepared_dir))
    uses = Counter(r["bg"] for r in iter_index(composites_dir) if r["split"] == "train")
    bg = _Hist(3, 256)
    for bg_id, count in sorted(uses.items()):
        bg.add(ps.bg[ps.bg_ids.index(bg_id)], weight=count)

    stats = {
        "split": "train",
        "samples": sum(uses.values()),
        "bg": bg.result(255.0, RGB),
        "fg_bg": totals["fg_bg"].result(255.0, RGB),
        "mask": totals["mask"].result(1.0),
        "alpha": totals["alpha"].result(255.0),
        "depth": totals["depth"].result(65535.0),
        "depth_convention": DEPTH_CONVENTION_SHORT,
    }
    atomic_write_bytes(Path(out), json.dumps(stats, indent=2).encode() + b"\n")
    return stats
