"""The capture augmentation alone: milliseconds per batch, at three points of a training.

    python benchmarks/augment.py                              # B=16, 128 px (cpu-quality), params.yaml
    python benchmarks/augment.py --batch-size 256 --size 192  # on a GPU: the GPU preset's batch

Times `CaptureAugment(batch, progress)` (the draws, the one host→device copy and every perturbation)
on random bg / fg_bg / depth with a rectangular object, at progress 0.2 (before `shapes.start`: no
shapes), 0.5 (shapes pasted) and 0.9 (inside the anneal): the mean over --repeats batches after a warm-up
(a mean, not a median: with `clean_by: batch` half of the batches are left exact and cost ~nothing).
Compare it with a training step's time (benchmarks/train.py) to see its share. Figures only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fgbg.augment import CaptureAugment
from fgbg.config import load_params, resolve_device
from fgbg.data import Batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=80)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    augment = CaptureAugment(load_params(args.params).train.augment, seed=0)
    b, s = args.batch_size, args.size
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(b, 1, s, s)
    mask[:, :, s // 3 : s - s // 5, s // 4 : s // 2 + s // 8] = 1

    def rand(c: int) -> torch.Tensor:
        return torch.rand(b, c, s, s, generator=gen).to(device)

    batches = [Batch(rand(3), rand(3), mask.to(device), rand(1), mask.to(device)) for _ in range(4)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {b} at {s}x{s}, {args.params}'s train.augment, mean of {args.repeats}")
    for k in range(3):
        augment(batches[k % 4], 0.5)  # warm-up
    start = augment.get_state()
    for progress in (0.2, 0.5, 0.9):
        times = []
        augment.set_state(start)  # the same draws at every progress and in every version of the code
        for k in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            augment(batches[k % 4], progress)
            sync()
            times.append(time.perf_counter() - t0)
        print(f"progress {progress}: {statistics.fmean(times) * 1e3:.1f} ms per batch")


if __name__ == "__main__":
    main()
