"""Training data from the shards: lean CPU workers, joining and normalisation on the device.

Workers decode only fg_bg (uint8), mask and alpha (uint8) and depth (uint16 bits carried as int16) and
send the bg's number; the bgs live once, as a uint8 table, on the device, and are joined there
by index (on an H100 this fed 4,602 samples/s, against ~3,000 when workers decode and stack
everything). Shards are read whole by one worker each,
in an order shuffled per epoch from the seed, so an epoch's samples depend only on seed + epoch;
which samples share a batch depends on the number of workers too (each builds batches from its own
shards), so `train.workers` is part of what makes a training reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fgbg.images import decode
from fgbg.prepared import PreparedSet, parse_key
from fgbg.shards import ShardRecord, iter_shard, read_manifest, verify_shard


class ShardSamples(IterableDataset):
    """(fg_bg uint8 H×W×3, mask uint8 H×W, alpha uint8 H×W, depth int16 H×W (uint16 bits), bg number, key)
    samples."""

    def __init__(
        self,
        composites_dir: Path,
        depth_dir: Path,
        split: str,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        verify: bool = True,
    ):
        self.composites_dir, self.depth_dir = Path(composites_dir), Path(depth_dir)
        comp, dep = read_manifest(composites_dir)["shards"], read_manifest(depth_dir)["shards"]
        self.names = [n for n in comp if n.startswith(f"{split}/")]
        missing = [n for n in self.names if n not in dep]
        if missing:
            raise FileNotFoundError(f"{depth_dir}: no depth shard {missing[0]}; rerun `fgbg depth`")
        if verify:  # a partial or corrupted shard must never be read as whole
            for folder, records in ((self.composites_dir, comp), (self.depth_dir, dep)):
                for n in self.names:
                    if not verify_shard(folder / n, ShardRecord(**records[n])):
                        raise ValueError(f"{folder / n}: size or checksum differs from shards.json")
        self.samples = sum(comp[n]["samples"] for n in self.names)
        self.shuffle, self.seed, self.rank, self.world = shuffle, seed, rank, world
        self.epoch = 0

    def __len__(self) -> int:
        return self.samples

    def __iter__(self):
        names = list(self.names)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.shuffle:
            names = [names[i] for i in rng.permutation(len(names))]
        names = names[self.rank :: self.world]
        info = get_worker_info()
        if info is not None:
            names = names[info.id :: info.num_workers]
        for name in names:
            comps = list(iter_shard(self.composites_dir / name))
            depths = dict(iter_shard(self.depth_dir / name))
            order = rng.permutation(len(comps)) if self.shuffle else range(len(comps))
            for i in order:
                key, files = comps[i]
                if "alpha.png" not in files:
                    raise ValueError(f"{self.composites_dir / name}: {key} has no alpha.png (composed before fgbg "
                                     "stored the alpha matte): rerun `fgbg compose` (or `dvc repro`)")  # fmt: skip
                depth = decode(depths[key]["depth.png"]).view(np.int16)
                yield (
                    torch.from_numpy(decode(files["jpg"])),
                    torch.from_numpy(decode(files["mask.png"])),
                    torch.from_numpy(decode(files["alpha.png"])),
                    torch.from_numpy(depth),
                    parse_key(key).bg_number,
                    key,
                )


def make_loader(
    dataset: ShardSamples, batch_size: int, workers: int, device: torch.device, drop_last: bool = False
) -> DataLoader:
    workers = min(workers, len(dataset.names))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )


def bg_table(prepared_dir: Path, device: torch.device) -> torch.Tensor:
    """All prepared bgs as one uint8 N×3×H×W tensor on the device (11 MB at seed scale)."""
    ps = PreparedSet(Path(prepared_dir))
    return torch.from_numpy(np.stack(ps.bg)).permute(0, 3, 1, 2).contiguous().to(device)


@dataclass
class Batch:
    """A batch on the device: bg, fg_bg in [0, 1]; mask in {0, 1}; depth (inverse) in [0, 1]; alpha (the
    soft matte fg_bg was blended with) in [0, 1], None where a caller has no matte."""

    bg: torch.Tensor
    fg_bg: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor | None = None
    exact: torch.Tensor | None = None  # B bool: the pair is identical outside the object (None: as composed, all are)

    def exactness(self) -> torch.Tensor:
        """`exact`, or all True for pairs as composed."""
        if self.exact is not None:
            return self.exact
        return torch.ones(self.bg.shape[0], dtype=torch.bool, device=self.bg.device)


def resize_depth(depth: torch.Tensor, size: int) -> torch.Tensor:
    """Area-resize inverse depth over pixels that have depth only: a pixel stays sky (0) where most
    of its area is sky, and sky never drags a depth towards "far" at the horizon."""
    valid = (depth > 0).float()
    total = F.interpolate(depth, size=(size, size), mode="area")
    share = F.interpolate(valid, size=(size, size), mode="area")
    return torch.where(share >= 0.5, total / share.clamp_min(1e-6), torch.zeros_like(total))


def resized(batch: Batch, size: int) -> Batch:
    """The batch area-shrunk to size×size as training sees it (mask re-thresholded, depth over the
    pixels that have it); itself when size is 0 or already the batch's."""
    if not size or size == batch.fg_bg.shape[-1]:
        return batch
    bg, fg_bg, alpha = (F.interpolate(t, size=(size, size), mode="area") for t in (batch.bg, batch.fg_bg, batch.alpha))
    mask = (F.interpolate(batch.mask, size=(size, size), mode="area") >= 0.5).float()
    return Batch(bg, fg_bg, mask, resize_depth(batch.depth, size), alpha, batch.exact)


def to_device(raw, bgs: torch.Tensor, device: torch.device, size: int = 0, flip: torch.Generator | None = None):
    """Collated worker output → Batch: join bgs by index, widen types, resize, optional flips."""
    fg_bg, mask, alpha, depth, bg_idx = raw[:5]
    fg_bg = fg_bg.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    mask = mask.to(device, non_blocking=True).unsqueeze(1).float().div_(255)
    alpha = alpha.to(device, non_blocking=True).unsqueeze(1).float().div_(255)
    depth = (depth.to(device, non_blocking=True).int() & 0xFFFF).unsqueeze(1).float().div_(65535)
    bg = bgs[bg_idx.to(device)].float().div_(255)
    small = resized(Batch(bg, fg_bg, mask, depth, alpha), size)
    bg, fg_bg, mask, depth, alpha = small.bg, small.fg_bg, small.mask, small.depth, small.alpha
    if flip is not None:  # the same mirror for bg, fg_bg, mask, alpha and depth of a sample
        coin = (torch.rand(fg_bg.shape[0], generator=flip) < 0.5).to(device).view(-1, 1, 1, 1)
        bg, fg_bg, mask, alpha, depth = (torch.where(coin, t.flip(-1), t) for t in (bg, fg_bg, mask, alpha, depth))
    return Batch(bg, fg_bg, mask, depth, alpha)
