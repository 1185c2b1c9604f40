"""The prepared set and the vocabulary every later stage shares: splits by identity, sample keys,
the pasted fg's form, and the composites' index table.

`prepare` writes the set; compose, depth, stats, data and evaluate read it through here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fgbg.config import SplitParams
from fgbg.images import read_image, resize_rgba

REPORT = "report.json"
SPLITS = ("train", "val", "test")
INDEX = "index.csv"  # the composites' table: key → shard, ids, placement, split
INDEX_FIELDS = ["key", "split", "shard", "bg", "fg", "bg_source", "fg_source", "flip", "position", "x", "y", "w", "h"]


def load_report(prepared_dir: Path) -> dict:
    path = Path(prepared_dir) / REPORT
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; run `fgbg prepare` first") from None


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


class PreparedSet:
    """The prepared bg/fg images in memory (small: ~11 MB at seed scale) with their splits."""

    def __init__(self, prepared_dir: Path, split: SplitParams | None = None, depth: bool = False):
        self.dir = Path(prepared_dir)
        report = load_report(self.dir)
        self.bg_ids = [e["id"] for e in report["bg"]]
        self.fg_ids = [e["id"] for e in report["fg"]]
        self.bg_sources = [e["source"] for e in report["bg"]]
        self.fg_sources = [e["source"] for e in report["fg"]]
        if depth and not report.get("has_bg_depth"):
            raise FileNotFoundError(f"{self.dir}: prepared set has no bg depth (add bg_depth/ to prepare.raw_dir)")
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # PNG decoding releases the GIL

            def read(folder: str, ids: list[str]) -> list[np.ndarray]:
                return list(pool.map(read_image, [self.dir / folder / f"{i}.png" for i in ids]))

            self.bg, self.fg = read("bg", self.bg_ids), read("fg", self.fg_ids)
            self.bg_depth = read("bg_depth", self.bg_ids) if depth else None
        if split is not None:
            self.bg_split = assign_splits("bg", self.bg_sources, split)
            self.fg_split = assign_splits("fg", self.fg_sources, split)

    @property
    def bg_size(self) -> tuple[int, int]:
        h, w = self.bg[0].shape[:2]
        return w, h

    def bg_of(self, key: str) -> np.ndarray:
        """The bg image a sample key names."""
        return self.bg[self.bg_ids.index(parse_key(key).bg)]


def fg_variant(fg_rgba: np.ndarray, flip: bool, w: int, h: int) -> np.ndarray:
    """The fg as it is pasted: resized to w×h (premultiplied, no halo), mirrored when flipped."""
    out = resize_rgba(fg_rgba, w, h)
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


class SampleKey(NamedTuple):
    bg: str  # "bg0042"
    fg: str  # "fg0017"
    flip: int
    position: int

    @property
    def bg_number(self) -> int:
        """ "bg0042" → 42: the prepared bg's position in the set."""
        return int(self.bg[2:])

    @property
    def fg_number(self) -> int:
        return int(self.fg[2:])


def sample_key(bg_id: str, fg_id: str, flip: int, pos: int) -> str:
    """`bg0042_fg0017_f1_p07`: a sample's origin, readable in `tar tf` and in file names."""
    return f"{bg_id}_{fg_id}_f{flip}_p{pos:02d}"


def parse_key(key: str) -> SampleKey:
    """The inverse of `sample_key`."""
    bg, fg, flip, pos = key.split("_")
    return SampleKey(bg, fg, int(flip[1:]), int(pos[1:]))


def iter_index(composites_dir: Path) -> Iterator[dict]:
    """Stream index.csv rows (400k rows at seed scale: never hold them all as dicts)."""
    with open(Path(composites_dir) / INDEX, newline="") as f:
        yield from csv.DictReader(f)


def read_index(composites_dir: Path) -> list[dict]:
    return list(iter_index(composites_dir))
