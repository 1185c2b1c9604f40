"""How far the model's tolerance of a changing scene goes: `check-captures`' `light` and `motion`
conditions at larger sizes than the check draws.

    python benchmarks/tolerance.py --model models/model.pt --per-photo 16

The same composites as `fgbg check-captures` (seed 0; 3 photos × `--per-photo` objects), each
predicted clean and under the condition with its range widened (inference only; the range constants
of fgbg.capture_pairs are patched for the sweep): the IoU gap to clean paired over the objects,
± s.e.m., and the worst object's gap. `light`: largest |log gain| of the uneven light change;
`motion`: largest displacement (px at the pair's side) of the scene's moving parts, for flows
varying over 1/24, 1/12 (the check) and 1/6 of the frame.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from unittest import mock

import numpy as np

import fgbg.capture_pairs as cp
from fgbg.captures import check_object
from fgbg.config import resolve_device
from fgbg.model import load_model
from fgbg.predict import trained_tolerance_px

LIGHT_RANGES = ((0.10, 0.25), (0.25, 0.4), (0.4, 0.6), (0.6, 0.9))
MOTION_RANGES = ((1.0, 4.0), (4.0, 8.0), (8.0, 16.0))
MOTION_CELLS = (24, 12, 6)


def gaps(loaded, condition: str, per_photo: int, size: int) -> np.ndarray:
    """clean − condition IoU per composite, predicted as check-captures predicts them."""
    tolerance = trained_tolerance_px(loaded)
    pairs = cp.capture_pairs(cp.real_photos(), per_photo=per_photo, size=size, seed=0, conditions=("clean", condition))
    out = []
    for _, same in itertools.groupby(pairs, key=lambda pair: pair.name):
        iou = {check: record["iou"] for check, _, _, record in check_object(loaded, list(same), "never", tolerance)}
        out.append(iou["clean"] - iou[condition])
    return np.array(out)


def report(label: str, gap: np.ndarray) -> None:
    sem = gap.std(ddof=1) / np.sqrt(len(gap))
    print(f"{label}: gap {gap.mean():.3f} ± {sem:.3f}, worst object {gap.max():.3f} ({len(gap)} objects)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--per-photo", type=int, default=16, help="objects per photo (16: cpu-quality's check)")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    loaded = load_model(args.model, resolve_device(args.device))
    for lo, hi in LIGHT_RANGES:
        with mock.patch.object(cp, "LIGHT_CHANGE", (lo, hi)):
            report(f"light, largest |log gain| {lo}–{hi}", gaps(loaded, "light", args.per_photo, args.size))
    for cells, (lo, hi) in itertools.product(MOTION_CELLS, MOTION_RANGES):
        if cells != 12 and hi > 8:
            continue  # the widest range only for the check's own flow
        with mock.patch.object(cp, "SCENE_MOTION_PX", (lo, hi)), mock.patch.object(cp, "SCENE_MOTION_CELLS", cells):
            label = f"motion ≤ {lo:g}–{hi:g} px, flow over 1/{cells} of the frame"
            report(label, gaps(loaded, "motion", args.per_photo, args.size))


if __name__ == "__main__":
    main()
