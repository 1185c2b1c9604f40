"""Full-size output: the network's mask and alpha upsampled bilinearly or refined (fgbg.refine).

    python benchmarks/refine.py --model models/model.pt --sizes 192,384 --seed 0 --time-side 3000

Quality: real-photo capture pairs (fgbg.capture_pairs, the photos shipped in scikit-learn /
matplotlib; seed 0 is what `fgbg check-captures` scores, seed 1 the pairs the radii were chosen on)
at each size, each through predict_pair (the network and full-size outputs of `fgbg predict`, without
the alignment and tone matching it adds by default) with and without the refinement: mask IoU per
condition, alpha SAD and MSE against the matte the object was pasted with, the gain paired over
the same pairs. Speed: one pair of a real photo enlarged to `--time-side` on its short side,
predict_pair with and without the refinement (median of `--repeats`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from fgbg.capture_pairs import capture_pairs, real_photos
from fgbg.captures import mask_iou
from fgbg.config import resolve_device
from fgbg.model import load_model
from fgbg.predict import predict_batch, predict_pair

CONDITIONS = ("clean", "shift", "photometric", "shadow", "tripod")


def quality(loaded, size: int, seed: int) -> None:
    """Mask IoU per condition and alpha errors, bilinear against refined, on the same pairs."""
    pairs = list(capture_pairs(real_photos(), per_photo=16, size=size, seed=seed, conditions=CONDITIONS))
    scores = {}
    for refine in (False, True):
        rows = []
        for i in range(0, len(pairs), len(CONDITIONS)):  # one object's conditions per batch
            batch = pairs[i : i + len(CONDITIONS)]
            predicted = predict_batch(loaded, [p.bg for p in batch], [p.fg_bg for p in batch], refine=refine)
            for pair, (mask, _, alpha) in zip(batch, predicted, strict=True):
                error = alpha / 255.0 - pair.alpha
                sad, mse = np.abs(error).sum() / 1000, np.square(error).mean()
                rows.append((pair.condition, mask_iou(mask, pair.mask), sad, mse))
        scores[refine] = rows
    gain = np.array([r[1] for r in scores[True]]) - np.array([r[1] for r in scores[False]])
    for refine in (False, True):
        rows = scores[refine]
        iou, sad, mse = (np.mean([r[k] for r in rows]) for k in (1, 2, 3))
        per = " ".join(f"{c} {np.mean([r[1] for r in rows if r[0] == c]):.4f}" for c in CONDITIONS)
        how = "refined " if refine else "bilinear"
        print(f"size {size} seed {seed} {how}: mask IoU {iou:.4f} ({per}); alpha SAD {sad:.3f} MSE {mse:.5f}")
    sem = gain.std(ddof=1) / np.sqrt(len(gain))
    print(f"size {size} seed {seed}: refined − bilinear {gain.mean():+.4f} ± {sem:.4f} (paired over {len(gain)} pairs)")


def speed(loaded, side: int, repeats: int) -> None:
    """Seconds per pair at a camera-sized photo, with and without the refinement."""
    pair = next(capture_pairs(real_photos(), per_photo=1, size=384, seed=0, conditions=("tripod",)))
    size = (side, round(side * 4 / 3))  # a 3:4 camera frame, width × height
    bg, fg_bg = (cv2.resize(im, size, interpolation=cv2.INTER_CUBIC) for im in (pair.bg, pair.fg_bg))
    for refine in (False, True):
        predict_pair(loaded, bg, fg_bg, refine=refine)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predict_pair(loaded, bg, fg_bg, refine=refine)
            times.append(time.perf_counter() - start)
        h, w = fg_bg.shape[:2]
        how = "refined " if refine else "bilinear"
        print(f"{w}x{h} ({h * w / 1e6:.1f} MP), {how}: {np.median(times):.3f} s per pair (median of {repeats})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--sizes", default="192,384", help="capture pair sides, comma-separated (multiples of 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-side", type=int, default=3000, help="short side of the timed photo; 0 skips timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    loaded = load_model(args.model, resolve_device(args.device))
    with torch.inference_mode():
        for size in (int(s) for s in args.sizes.split(",") if s):
            quality(loaded, size, args.seed)
        if args.time_side:
            speed(loaded, args.time_side, args.repeats)


if __name__ == "__main__":
    main()
