"""Compose (and depth) throughput at seed scale, against the seeds' naive per-file way.

    python benchmarks/compose.py                 # 400k triplets: 100 bg x 100 fg x 2 x 20
    python benchmarks/compose.py --n 40000       # quicker: fewer positions
    python benchmarks/compose.py --parts 4 --no-depth   # + the same compose in 4 parts, one after
                                                        #   another, then the merge: the split's cost
    python benchmarks/compose.py --parts 4 --repeat 3 --no-depth   # 3 rounds between one runs (noisy VMs)

Prints triplets/s, peak RSS and file counts for the real `compose` and `depth` stages, then the
same fg_bg + mask work done as the seeds did it (PIL open / paste / save, one file per image,
one process) on --naive-n samples, and the ratio. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from fgbg.compose import run_compose
from fgbg.config import ComposeParams, DepthParams, PrepareParams, SplitParams, SynthParams, resolve_jobs
from fgbg.depth import run_depth
from fgbg.prepare import run_prepare
from fgbg.shards import Part, read_manifest
from fgbg.synth import run_synth


def peak_rss_mb() -> tuple[float, float]:
    """(this process, largest finished child) peak resident set size in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, child


def naive(prepared: Path, out: Path, n: int, positions: int) -> float:
    """The seeds' loop: open bg and fg files, paste, save fg_bg JPEG and mask file per sample."""
    bgs = sorted((prepared / "bg").glob("*.png"))
    fgs = sorted((prepared / "fg").glob("*.png"))
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    t0 = time.perf_counter()
    for i in range(n):
        bg_path, fg_path = bgs[i % len(bgs)], fgs[(i // len(bgs)) % len(fgs)]
        bg = Image.open(bg_path).convert("RGB")
        fg = Image.open(fg_path).convert("RGBA")
        if (i // positions) % 2:
            fg = fg.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = rnd.randint(0, bg.width - fg.width)
        y = rnd.randint(0, bg.height - fg.height)
        bg.paste(fg, (x, y), fg)
        bg.save(out / f"fg_bg_{i:07d}.jpg", quality=90)
        mask = Image.new("L", bg.size, 0)
        mask.paste(fg.getchannel("A").point(lambda a: 255 if a >= 128 else 0), (x, y))
        mask.save(out / f"mask_{i:07d}.png")
    return n / (time.perf_counter() - t0)


def parts_vs_one(
    compose, split, prepared: Path, out: Path, count: int, one_run_s: float, one_run: Path, repeat: int
) -> None:
    """The stage in `count` parts (what a Slurm array runs), one after another on this machine,
    then the merge: the split's overhead (prepared set + plan per part, worker start, the merge).

    Bracketed and repeated: one run, parts, one run, parts, one run, … Each parts round is compared
    with the mean of the one runs on either side of it, and each phase's output is removed once
    checked, because on this VM whichever phase runs later after GBs of writes is slower (parts
    first, then one run: the parts were 4.7 % faster) and the same one run varies by ±10 %."""
    ones, ratios = [one_run_s], []
    for _ in range(repeat):
        times = []
        for i in range(count):
            os.sync()  # earlier writes' flush to disk is not this part's cost (nor the one run's: see main)
            t0 = time.perf_counter()
            run_compose(compose, split, prepared, out, part=Part(i, count), log=lambda m: None)
            times.append(time.perf_counter() - t0)
        os.sync()
        t0 = time.perf_counter()
        run_compose(compose, split, prepared, out, log=print)
        merge = time.perf_counter() - t0
        total = sum(times) + merge
        same = read_manifest(out)["shards"] == read_manifest(one_run)["shards"]
        shutil.rmtree(out)
        again_dir = out.with_name(out.name + "_one_again")
        os.sync()
        t0 = time.perf_counter()
        run_compose(compose, split, prepared, again_dir, log=lambda m: None)
        ones.append(time.perf_counter() - t0)
        shutil.rmtree(again_dir)
        mean = (ones[-2] + ones[-1]) / 2
        ratios.append(total / mean)
        print(f"compose in {count} parts: {' + '.join(f'{t:.1f}' for t in times)} s, merge {merge:.1f} s "
              f"= {total:.1f} s vs one run {ones[-2]:.1f} s before and {ones[-1]:.1f} s after (mean {mean:.1f} s): "
              f"{100 * (ratios[-1] - 1):+.1f} % (shards identical to the one run: {same})")  # fmt: skip
    if repeat > 1:
        print(f"parts vs one run over {repeat} rounds: median {100 * (statistics.median(ratios) - 1):+.1f} %, "
              f"each {', '.join(f'{100 * (x - 1):+.1f} %' for x in ratios)}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400_000, help="composites to build (100x100x2xP)")
    ap.add_argument("--naive-n", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: temp)")
    ap.add_argument("--no-depth", action="store_true")
    ap.add_argument("--parts", type=int, default=0, help="also build it in N parts one after another + merge")
    ap.add_argument("--repeat", type=int, default=1, help="--parts rounds, each between two timed one runs")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="fgbg-bench-"))
    jobs = resolve_jobs(args.jobs)
    positions = max(1, math.ceil(args.n / (100 * 100 * 2)))
    raw, prepared = work / "raw", work / "prepared"
    if not (raw / "index.json").exists():
        t0 = time.perf_counter()
        run_synth(SynthParams(n_bg=100, n_fg=100), raw)
        print(f"synth 100 bg + 100 fg: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    run_prepare(PrepareParams(raw_dir=str(raw)), prepared, log=lambda *a, **k: None)

    all_train = SplitParams(train=1.0, val=0.0, test=0.0)
    compose = ComposeParams(positions=positions, jobs=jobs)
    os.sync()
    t0 = time.perf_counter()
    manifest = run_compose(compose, all_train, prepared, work / "composites")
    dt = time.perf_counter() - t0
    n = manifest["samples"]
    own, child = peak_rss_mb()
    stored = [p for p in (work / "composites").rglob("*") if p.is_file()]
    files, size = len(stored), sum(p.stat().st_size for p in stored)
    print(f"machine: {os.cpu_count()} cores; jobs={jobs}; seed scale 192/96; {n} triplets")
    print(f"compose: {n / dt:,.0f} triplets/s ({dt:.1f} s), {files} files, {size / 1e9:.2f} GB "
          f"({size / n / 1e3:.1f} kB per sample: fg_bg JPEG + mask + alpha PNG + JSON)")  # fmt: skip
    print(f"compose peak RSS: main {own:,.0f} MB, largest worker {child:,.0f} MB")

    if args.parts:
        parts_out = work / "composites_parts"
        parts_vs_one(compose, all_train, prepared, parts_out, args.parts, dt, work / "composites", args.repeat)

    if not args.no_depth:
        t0 = time.perf_counter()
        run_depth(DepthParams(jobs=jobs), prepared, work / "composites", work / "depth")
        dt_depth = time.perf_counter() - t0
        files_depth = sum(1 for _ in (work / "depth").rglob("*") if _.is_file())
        own, child = peak_rss_mb()
        print(f"depth (provided, compose mode): {n / dt_depth:,.0f} maps/s ({dt_depth:.1f} s), {files_depth} files")
        print(f"depth peak RSS: main {own:,.0f} MB, largest worker {child:,.0f} MB")
        print(f"triplets stored in {files + files_depth} files")

    naive_rate = naive(prepared, work / "naive", args.naive_n, positions)
    print(f"naive per-file PIL (1 process): {naive_rate:,.0f} triplets/s on {args.naive_n} samples")
    print(f"ratio fgbg/naive: {n / dt / naive_rate:.1f}x ({n / dt / jobs / naive_rate:.1f}x per core)")


if __name__ == "__main__":
    main()
