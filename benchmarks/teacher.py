"""Depth-teacher throughput end to end: decode fg_bg JPEG → teacher → 16-bit PNG depth shards.

    python benchmarks/teacher.py --composites /tmp/bench/composites --prepared /tmp/bench/prepared
    python benchmarks/teacher.py ... --resolutions 266 518 --n 20000 --batch-size 256 --workers 12   # GPU
    python benchmarks/teacher.py ... --resolutions 266 --precision bf16     # a CPU with avx512_bf16 / AMX

Uses a Depth-Anything-V2-Small-sized model (DINOv2-S backbone + DPT head, ~25M parameters) built
from its config with random weights: the speed is that of the real model, no download needed.
Runs the real `depth` stage in per-image mode on the first --n composites, at each resolution,
on whatever device `auto` picks; then (--compose) compose mode, where the teacher sees only the
bgs. Composites come from `benchmarks/compose.py --workdir DIR` (DIR/composites, DIR/prepared).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import get_args

import safetensors.torch
import torch

from fgbg.compose import PreparedSet
from fgbg.config import DepthParams, Precision, TeacherParams
from fgbg.depth import bg_depth_maps, run_depth
from fgbg.shards import ShardWriter, iter_shard, read_manifest
from fgbg.teacher import save_random_depth_anything


def subset(composites: Path, n: int, out: Path) -> int:
    """A composites folder with the first n samples, in shards named as the source's."""
    manifest = read_manifest(composites)
    shards, keys = {}, set()
    for name in manifest["shards"]:
        if len(keys) == n:
            break
        writer = ShardWriter(out / name)
        for key, files in iter_shard(composites / name):
            if len(keys) == n:
                break
            writer.add(key, files)
            keys.add(key)
        shards[name] = asdict(writer.commit())
    lines = (composites / "index.csv").read_text().splitlines()
    rows = [ln for ln in lines[1:] if ln.split(",", 1)[0] in keys]
    (out / "index.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    (out / "shards.json").write_text(json.dumps({**manifest, "samples": len(keys), "shards": shards}))
    return len(keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--composites", type=Path, required=True)
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--n", type=int, default=200, help="composites for per-image mode")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[266, 518])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compose", action="store_true", help="also time compose mode on all composites")
    ap.add_argument("--precision", choices=get_args(Precision), default="auto", help="depth.teacher.precision")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fgbg-teacher-"))
    model = save_random_depth_anything(work / "model", "small")
    n_params = sum(t.numel() for t in safetensors.torch.load_file(model / "model.safetensors").values())
    print(f"model: Depth-Anything-V2-Small-sized, {n_params / 1e6:.1f}M parameters, random weights")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}, precision {args.precision}; batch {args.batch_size}; {args.workers} decode workers")
    n = subset(args.composites, args.n, work / "subset")
    for res in args.resolutions:
        teacher = TeacherParams(model=str(model), resolution=res, batch_size=args.batch_size, workers=args.workers,
                                precision=args.precision)  # fmt: skip
        params = DepthParams(source="teacher", mode="per_image", teacher=teacher, preview_samples=0)
        shutil.rmtree(work / "depth", ignore_errors=True)
        t0 = time.perf_counter()
        run_depth(params, args.prepared, work / "subset", work / "depth")
        dt = time.perf_counter() - t0
        print(f"per_image {res}x{res}: {n / dt:,.1f} images/s end to end ({n} images, {dt:.1f} s incl. model load)")
    if args.compose:
        total = read_manifest(args.composites)["samples"]
        teacher = TeacherParams(model=str(model), resolution=args.resolutions[0], batch_size=args.batch_size,
                                precision=args.precision)  # fmt: skip
        params = DepthParams(source="teacher", mode="compose", teacher=teacher, preview_samples=0)
        t0 = time.perf_counter()
        bgs = len(bg_depth_maps(PreparedSet(args.prepared), params))
        print(f"compose mode, teacher alone on the {bgs} bgs: {time.perf_counter() - t0:.1f} s incl. model load")
        t0 = time.perf_counter()
        run_depth(params, args.prepared, args.composites, work / "depth-compose")
        dt = time.perf_counter() - t0
        print(f"compose mode, teacher on the bgs only: {total:,} depth maps in {dt:.1f} s ({total / dt:,.0f} maps/s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
