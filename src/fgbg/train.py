"""`train` stage: the mask + depth U-Net on the train split, validated each epoch, tracked in MLflow.

Checkpoints hold model, optimiser, scheduler, epoch, history and every RNG state, so `--resume`
continues exactly where a killed run stopped (same weights as an uninterrupted run on CPU).
"""

from __future__ import annotations

import io
import json
import math
import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fgbg.augment import CaptureAugment
from fgbg.config import TrainParams, resolve_device
from fgbg.data import ShardSamples, bg_table, make_loader, to_device
from fgbg.images import atomic_write_bytes
from fgbg.losses import total_loss
from fgbg.model import MaskDepthNet, Normaliser, build_model, infer, save_model
from fgbg.scoring import evaluate_split
from fgbg.tracking import TrainRun

CHECKPOINT = "checkpoint.pt"
HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_iou", "val_delta1", "val_absrel", "lr"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_train(
    params: TrainParams,
    all_params: dict,
    prepared_dir: Path,
    composites_dir: Path,
    depth_dir: Path,
    stats_path: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    history_csv: Path = Path("metrics/train_history.csv"),
    log=print,
) -> dict:
    """Train, keep the best-val weights in `out_dir/model.pt`; return the history.

    Under `torchrun` (WORLD_SIZE > 1) each process trains on its share of the train shards with
    DistributedDataParallel (NCCL on GPUs, gloo on CPUs); rank 0 validates, logs and saves.
    """
    out_dir = Path(out_dir)
    rank, world, device = init_distributed(params.device)
    lead = rank == 0
    seed_everything(params.seed)
    unet = build_model(params)  # first: a bad encoder fails before any data is read
    train_set = ShardSamples(composites_dir, depth_dir, "train", shuffle=True, seed=params.seed, rank=rank, world=world)
    val_set = ShardSamples(composites_dir, depth_dir, "val", shuffle=False)
    if not train_set.names or not val_set.names:
        raise ValueError(f"{composites_dir}: training needs train and val shards (check split.*)")
    if len(train_set.names) < world:
        raise ValueError(f"{len(train_set.names)} train shards for {world} processes: lower compose.shard_size")
    bgs = bg_table(prepared_dir, device)
    model = MaskDepthNet(unet, Normaliser.from_stats(stats_path)).to(device).set_precision(params.precision)
    # full batches only (one shape per step: no recompiles under torch.compile); the loader starts
    # over if a process's workers run out first, so every DDP rank takes the same number of steps
    steps = max(1, len(train_set) // (params.batch_size * world))
    steps = min(steps, params.steps_per_epoch) if params.steps_per_epoch else steps
    opt = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=device.type == "cuda"
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=params.lr, total_steps=params.epochs * steps)
    flip_rng = torch.Generator().manual_seed(params.seed + rank)
    augment = CaptureAugment(params.augment, params.seed, rank)  # real-capture differences (README "Real captures")
    history: list[dict] = []
    start_epoch, best, stale, run_id = 1, math.inf, 0, None
    ckpt_path = out_dir / CHECKPOINT
    history_csv = Path(history_csv)
    run_params = _resumable_params(params)
    if not resume and lead:  # a new run: an older run's checkpoint must not be resumed into it later
        ckpt_path.unlink(missing_ok=True)
    if resume and ckpt_path.exists():
        # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["scheduler"]["total_steps"] != sched.total_steps:
            raise ValueError(
                f"{ckpt_path}: saved for {ckpt['scheduler']['total_steps']} steps, the params now give "
                f"{sched.total_steps} (train.epochs, steps_per_epoch, batch_size or the data changed): "
                "train without --resume"
            )
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise ValueError(
                f"{ckpt_path}: saved for another network (train.encoder, decoder_channels, alpha_head, "
                f"input_skip or exact_input changed): train without --resume ({str(e).splitlines()[0]})"
            ) from None
        changed = sorted(k for k, v in ckpt.get("params", run_params).items() if run_params.get(k) != v)
        if changed:
            raise ValueError(f"{ckpt_path}: saved by a run with other train params ({', '.join(changed)} changed): "
                             "train without --resume, or put them back")  # fmt: skip
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        own = ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0]  # each rank its own RNGs
        flip_rng.set_state(own["flip"])
        if "augment" in own:  # checkpoints from before capture augmentation have none
            augment.set_state(own["augment"])
        set_rng_state(own["global"])
        start_epoch, best, stale = ckpt["epoch"] + 1, ckpt["best"], ckpt["stale"]
        history, run_id = ckpt["history"], ckpt["mlflow_run_id"]
        if ckpt.get("finished"):
            log(f"{ckpt_path}: this run already finished; nothing to resume")
            if world > 1:
                torch.distributed.destroy_process_group()
            return {"history": history, "mlflow_run_id": run_id}
        log(f"resuming after epoch {ckpt['epoch']}")
    tracker = TrainRun(params, all_params, run_id) if lead else None
    if tracker is not None:
        tracker.catch_up(history)  # an epoch checkpointed just before the kill, not yet in MLflow
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=params.exact_input,  # a batch without exact pairs leaves their norms unused
        )
    net = torch.compile(net) if params.compile else net

    last_state = None  # the newest checkpoint's contents, marked finished at the end
    for epoch in range(start_epoch, params.epochs + 1):
        train_set.epoch = epoch
        size = params.size_at(epoch)
        if epoch > 1 and size != params.size_at(epoch - 1):  # val losses at two sizes do not compare:
            best, stale = math.inf, 0  # the best weights are chosen among the full-size epochs
        if stale >= params.patience and size == params.size_at(params.epochs):  # never skips the full-size epochs
            break
        model.train()
        loss_sum = torch.zeros((), device=device)  # summed on the device: no GPU sync per step
        bar = tqdm(
            total=steps, desc=f"epoch {epoch}/{params.epochs}", unit="step", dynamic_ncols=True, disable=not lead
        )
        for step, raw in zip(range(steps), _batches(train_set, params, device), strict=False):
            batch = to_device(raw, bgs, device, size, flip_rng if params.augment_flip else None)
            batch = augment(batch, progress=((epoch - 1) * steps + step) / (params.epochs * steps))
            out = infer(net, batch.bg, batch.fg_bg, batch.exactness())
            loss, _ = total_loss(out, batch, params.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr = sched.get_last_lr()[0]  # the rate this step takes (after sched.step, the next one's)
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            if step % 20 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            bar.update(1)
        bar.close()
        if lead:
            val = evaluate_split(  # the bare model: no DDP collectives
                model, val_set, bgs, device, params.batch_size, params.workers, size, params.loss
            )
            row = {"epoch": epoch, "train_loss": float(loss_sum) / steps, "val_loss": val["loss"],
                   "val_iou": val["iou"], "val_delta1": val["delta1"], "val_absrel": val["absrel"],
                   "lr": lr}  # fmt: skip
            history.append(row)
            _write_history(history, history_csv)
            log(json.dumps({k: round(x, 5) if isinstance(x, float) else x for k, x in row.items()}))
            if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
                raise ValueError(f"epoch {epoch}: the loss is not finite (train {row['train_loss']}, val "
                                 f"{row['val_loss']}): lower train.lr or check the data; no model saved")  # fmt: skip
            if val["loss"] < best:
                best, stale = val["loss"], 0
                save_model(out_dir / "model.pt", model, params, epoch, size or bgs.shape[-1])
            else:
                stale += 1
        rngs = _gather_rng_states(flip_rng, augment, world)  # every rank's, so a DDP resume is exact too
        if lead:
            last_state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "epoch": epoch, "best": best, "stale": stale, "history": history, "rng": rngs,
                          "mlflow_run_id": tracker.run_id, "params": run_params}  # fmt: skip
            save_atomic(last_state, ckpt_path)
            tracker.epoch(row, val["sheet"])  # after the checkpoint: a rerun epoch is never logged twice
        if world > 1:
            shared = [best, stale, history]
            torch.distributed.broadcast_object_list(shared, src=0)
            best, stale, history = shared
    run_id = None
    if lead:
        tracker.finish(out_dir / "model.pt", ckpt_path, params.mlflow)
        run_id = tracker.run_id
        if last_state is None:  # resumed after an early stop: no epoch ran in this process
            last_state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        save_atomic({**last_state, "finished": True}, ckpt_path)
    if world > 1:
        torch.distributed.destroy_process_group()
    return {"history": history, "mlflow_run_id": run_id}


def _resumable_params(params: TrainParams) -> dict:
    """The train params a resumed run must share with the run it continues (all but where it runs
    and how it is tracked: device, precision, workers, compile, mlflow), as comparable JSON values."""
    dumped = params.model_dump(mode="json", exclude={"device", "precision", "workers", "compile", "mlflow"})
    return {k: json.dumps(v, sort_keys=True) for k, v in dumped.items()}


def _batches(dataset: ShardSamples, params: TrainParams, device: torch.device):
    """The epoch's full batches, starting over if this process's shards run out first (DDP ranks
    must take the same number of steps)."""
    while True:
        produced = 0
        for batch in make_loader(dataset, params.batch_size, params.workers, device, drop_last=True):
            produced += 1
            yield batch
        if not produced:
            raise ValueError(
                f"{dataset.composites_dir}: no full batch of {params.batch_size} in this process's train shards "
                "(each DataLoader worker batches its own shards): lower train.batch_size or train.workers"
            )


def _gather_rng_states(flip_rng: torch.Generator, augment: CaptureAugment, world: int) -> list[dict]:
    """[{global RNGs, flip generator}] of every rank, gathered for rank 0's checkpoint."""
    mine = {"global": rng_state(), "flip": flip_rng.get_state(), "augment": augment.get_state()}
    if world == 1:
        return [mine]
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return gathered


def save_atomic(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def init_distributed(device_param: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) — from torchrun's environment, or a single process."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_param)
    if world == 1:
        return 0, 1, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    # rank 0 validates and logs while the others wait: allow it more than the 10-minute default
    torch.distributed.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30)
    )
    return rank, world, device


def _write_history(history: list[dict], path: Path) -> None:
    """Per-epoch curves for `dvc plots`."""
    lines = [",".join(HISTORY_FIELDS)] + [",".join(f"{row[k]:.6g}" for k in HISTORY_FIELDS) for row in history]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
