"""Training throughput: end to end from shards vs the model-only ceiling on synthetic tensors.

    python benchmarks/train.py --data data --steps 10                  # params.yaml's model, quick
    python benchmarks/train.py --params presets/cpu-quality.yaml --data data --steps 32 --warmup 2 --augment
    python benchmarks/train.py --data data --steps 10 --input-skip     # the train.input_skip model
    python benchmarks/train.py --data data --steps 32 --augment --clean-by sample   # mixed batches
    python benchmarks/train.py --data data --steps 10 --augment --exact-convs
    python benchmarks/train.py --params presets/cpu-quality.yaml --data data --steps 32 --precision bf16   # a bf16 CPU
    python benchmarks/train.py --params presets/seed-scale.yaml --data /tmp/bench --steps 200 --batch-size 256 \
        --workers 14 --compile --augment                                # GPU

The model, training size, batch, flip and augmentation are `--params`' train section (default
params.yaml: what `fgbg train` would build); each flag given overrides its key.
--data is a folder with prepared/, composites/ and depth/ (e.g. `benchmarks/compose.py --workdir`).
Both loops run the same step (forward, loss, backward, AdamW; bf16 + channels_last where
train.precision says: on CUDA by default, on any device with --precision bf16); the
ratio says how much of the ceiling the data pipeline lets through. With --augment, the cost of the
capture augmentation twice: a third loop after the first two, and both loops interleaved in
alternating rounds on one loader (the figure to read: the machine's drift falls on both sides).
Figures only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import get_args

import torch

from fgbg.augment import CaptureAugment
from fgbg.config import Precision, TrainParams, load_params, resolve_device
from fgbg.data import Batch, ShardSamples, bg_table, make_loader, to_device
from fgbg.losses import total_loss
from fgbg.model import MaskDepthNet, Normaliser, build_model, infer


def timed_steps(step, batches, warmup: int, steps: int, batch_size: int, device) -> float:
    """samples/s over `steps` steps after `warmup` steps."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def interleaved(step, batches, augment, steps: int, device, rounds: int) -> float:
    """Throughput with `augment` over throughput without, timed in alternating rounds on one loader
    (ABBA order), so the machine's drift and the loader's start do not fall on one side."""
    it, per_round = iter(batches), max(1, steps // rounds)
    step(augment(next(it)))  # warm both paths
    step(next(it))
    seconds = {False: 0.0, True: 0.0}
    for r in range(rounds):
        for with_augment in (False, True) if r % 2 == 0 else (True, False):
            t0 = time.perf_counter()
            for _ in range(per_round):
                batch = next(it)
                step(augment(batch) if with_augment else batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[with_augment] += time.perf_counter() - t0
    return seconds[False] / seconds[True]


def bench_params(params: TrainParams, args: argparse.Namespace) -> TrainParams:
    """The params file's train section with the flags given on the command line put over it."""
    flags = {"encoder": args.encoder, "batch_size": args.batch_size, "workers": args.workers,
             "image_size": args.image_size, "input_skip": args.input_skip, "exact_input": args.exact_input,
             "exact_convs": args.exact_convs, "precision": args.precision}  # fmt: skip
    merged = params.model_dump() | {k: v for k, v in flags.items() if v is not None}
    if args.clean_by:
        merged["augment"]["clean_by"] = args.clean_by
    return TrainParams.model_validate(merged)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="its train section is the default")
    ap.add_argument("--encoder", help="train.encoder")
    ap.add_argument("--batch-size", type=int, help="train.batch_size")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, help="train.workers")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--augment", action="store_true", help="also end to end with train.augment on")
    ap.add_argument("--image-size", type=int, help="train.image_size: shrink, then perturb (0: the data's)")
    on_off = argparse.BooleanOptionalAction
    ap.add_argument("--input-skip", action=on_off, help="train.input_skip")
    ap.add_argument("--exact-input", action=on_off, help="train.exact_input (splits with --augment)")
    ap.add_argument("--exact-convs", action=on_off, help="train.exact_convs (with --exact-input)")
    ap.add_argument("--clean-by", choices=("sample", "batch"), help="train.augment.clean_by")
    ap.add_argument("--precision", choices=get_args(Precision), help="train.precision")
    ap.add_argument(
        "--progress",
        type=float,
        default=0.5,
        help="training progress the augmentation is drawn at (≥ shapes.start: shapes pasted, as in 60 %% of steps)",
    )
    args = ap.parse_args()
    params = bench_params(load_params(args.params).train, args)
    device = resolve_device("auto")
    model = MaskDepthNet(build_model(params), Normaliser(*[[0.5] * 3, [0.25] * 3] * 2)).to(device)
    model = model.set_precision(params.precision)  # as train sets it up
    net = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")

    augment = CaptureAugment(params.augment, seed=0)
    flip = torch.Generator().manual_seed(0) if params.augment_flip else None

    def step(batch: Batch) -> None:
        out = infer(net, batch.bg, batch.fg_bg, batch.exactness())  # as train does
        loss, _ = total_loss(out, batch, params.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_set = ShardSamples(args.data / "composites", args.data / "depth", "train", shuffle=True, verify=False)
    bgs = bg_table(args.data / "prepared", device)
    size = params.image_size or bgs.shape[-1]

    def synthetic():
        b = params.batch_size
        while True:
            mask = (torch.rand(b, 1, size, size, device=device) > 0.9).float()
            yield Batch(torch.rand(b, 3, size, size, device=device), torch.rand(b, 3, size, size, device=device),
                        mask, torch.rand(b, 1, size, size, device=device), mask)  # fmt: skip

    def from_shards():
        while True:
            for raw in make_loader(train_set, params.batch_size, params.workers, device):
                yield to_device(raw, bgs, device, size, flip)  # shrunk and mirrored as train does, then perturbed

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    exact = " + exact-pair norms" + (" and convs" if params.exact_convs else "") if params.exact_input else ""
    skip = " + input skip" if params.input_skip else ""
    name += ", bf16" if model.bf16 else ", float32"
    print(f"device: {name}; {args.params}: UNet-{params.encoder} decoder {params.decoder_channels}{skip}{exact} "
          f"at {size}x{size}, clean_by {params.augment.clean_by}, batch {params.batch_size}, "
          f"{'compiled' if args.compile else 'eager'}, {params.workers} workers")  # fmt: skip
    ceiling = timed_steps(step, synthetic(), args.warmup, args.steps, params.batch_size, device)
    print(f"model-only ceiling (synthetic tensors): {ceiling:,.1f} samples/s")
    e2e = timed_steps(step, from_shards(), args.warmup, args.steps, params.batch_size, device)
    print(f"end to end from shards: {e2e:,.1f} samples/s ({e2e / ceiling:.0%} of the ceiling)")
    if args.augment:
        augmented = (augment(b, args.progress) for b in from_shards())
        aug = timed_steps(step, augmented, args.warmup, args.steps, params.batch_size, device)
        print(f"end to end with capture augmentation: {aug:,.1f} samples/s ({aug / e2e:.1%} of without)")
        rounds = 8
        ratio = interleaved(step, from_shards(), lambda b: augment(b, args.progress), args.steps, device, rounds)
        print(f"interleaved, {rounds} rounds of {args.steps // rounds} steps each way: with augmentation "
              f"{ratio:.1%} of the throughput without")  # fmt: skip


if __name__ == "__main__":
    main()
