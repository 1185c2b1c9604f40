"""Tone matching (fgbg.tone): what it buys on the real-photo check, and what it costs per pair.

    python benchmarks/tone.py --model models/model.pt --per-photo 16 --sides 192,1024,3000

Quality: `fgbg check-captures`' pairs (seed 0: the pairs the stage scores), each object's
conditions predicted as `fgbg check-captures` does with and without `match_tone`; the IoU per
check and the change paired over the same objects. Speed: fgbg.tone.match_tone on one pair of a
real photo enlarged to each short side, its exposure and white balance drifted (median of
`--repeats`).
"""

from __future__ import annotations

import argparse
import itertools
import time

import cv2
import numpy as np

from fgbg.capture_pairs import capture_pairs, real_photos
from fgbg.captures import CHECKS, check_object
from fgbg.config import resolve_device
from fgbg.model import load_model
from fgbg.predict import trained_tolerance_px
from fgbg.tone import match_tone


def quality(model: str, per_photo: int, device: str) -> None:
    loaded = load_model(model, resolve_device(device))
    tolerance = trained_tolerance_px(loaded)
    iou: dict[bool, dict[tuple[str, str], float]] = {True: {}, False: {}}
    pairs = capture_pairs(real_photos(), per_photo=per_photo, size=192, seed=0)
    for _, same_object in itertools.groupby(pairs, key=lambda pair: pair.name):
        same_object = list(same_object)
        for match in (False, True):
            for check, pair, _, record in check_object(loaded, same_object, "auto", tolerance, match):
                iou[match][pair.name, check] = record["iou"]
    print(f"{model}: {per_photo * 3} objects; IoU without → with tone matching (paired change ± s.e.m.)")
    for check in CHECKS:
        keys = [k for k in iou[False] if k[1] == check]
        if not keys:
            continue
        before = np.array([iou[False][k] for k in keys])
        after = np.array([iou[True][k] for k in keys])
        delta = after - before
        sem = delta.std(ddof=1) / np.sqrt(len(delta)) if len(delta) > 1 else 0.0
        changed = int(np.count_nonzero(delta))
        paired = f"{delta.mean():+.4f} ± {sem:.4f}; {changed} changed"
        print(f"  {check:20s} {before.mean():.4f} → {after.mean():.4f}  ({paired})")


def speed(sides: list[int], repeats: int) -> None:
    _, photo = real_photos()[0]
    for side in sides:
        scale = side / min(photo.shape[:2])
        bg = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        drifted = np.clip(bg * np.array([1.25, 1.1, 0.92]) + 6, 0, 255).astype(np.uint8)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _, found = match_tone(bg, drifted)
            times.append(time.perf_counter() - start)
        h, w = bg.shape[:2]
        print(f"match_tone {w}x{h}: {np.median(times) * 1000:.1f} ms (applied: {found.applied})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model.pt for the quality figures (left out: speed only)")
    parser.add_argument("--per-photo", type=int, default=16)
    parser.add_argument("--sides", default="192,1024,3000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    speed([int(s) for s in args.sides.split(",")], args.repeats)
    if args.model:
        quality(args.model, args.per_photo, args.device)


if __name__ == "__main__":
    main()
