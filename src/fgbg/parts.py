"""Parts: one shard stage built by N processes — a Slurm job array, a Kubernetes Indexed Job, torchrun
ranks — into one shared output folder, then merged into exactly what one machine would write.

The plan of a shard stage is deterministic and per shard, so part I of N is a fixed subset of the
shard names (every N-th, from the I-th: each part gets shards of every split). A part writes its
shards and its own journal (`.journal.part-I-of-N.jsonl`: name, size, sha256, file stamp) and
nothing else, so parts never touch each other's files. The plain command (what `dvc repro` runs) is
the merge: it reads every journal, keeps each shard that is still the file its part stamped (or,
when the stamp changed, whose size and sha256 match), builds the missing or damaged ones itself
(naming them), and writes index, preview and shards.json.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TypeVar

from fgbg.shards import Part

T = TypeVar("T")
TORCHRUN = "torchrun (RANK / WORLD_SIZE)"


def parse_part(text: str) -> Part | None:
    """`--part I/N` → Part; `--part all` → None (the whole stage, whatever the environment says)."""
    if text.strip().lower() == "all":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--part {text!r}: expected I/N (e.g. 0/4; I counts from 0) or 'all'")
    return Part(int(m[1]), int(m[2]))


def part_from_env(env: Mapping[str, str], count: int | None = None) -> Part | None:
    """The part a scheduler assigned this process, if any: a Slurm array task (of $FGBG_PARTS parts,
    else of the array's own task count: then a resubmitted subset would be renumbered), a Kubernetes
    Indexed Job's completion index (with `count` = --parts or $FGBG_PARTS), or a torchrun rank."""

    def number(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise ValueError(f"${name}={env[name]!r} is not a whole number") from None

    if "SLURM_ARRAY_TASK_ID" in env and "FGBG_PARTS" in env:  # the task id is the part: resubmitting --array=3 works
        return Part(number("SLURM_ARRAY_TASK_ID"), number("FGBG_PARTS"), "SLURM_ARRAY_TASK_ID / FGBG_PARTS")
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = number("SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        index = number("SLURM_ARRAY_TASK_ID") - first
        return Part(index, number("SLURM_ARRAY_TASK_COUNT"), "SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT")
    if "JOB_COMPLETION_INDEX" in env:
        if count is None and "FGBG_PARTS" in env:
            count = number("FGBG_PARTS")
        if count is None:
            raise ValueError("$JOB_COMPLETION_INDEX is set but not the number of parts: --parts N or $FGBG_PARTS")
        return Part(number("JOB_COMPLETION_INDEX"), count, "JOB_COMPLETION_INDEX")
    if "RANK" in env and "WORLD_SIZE" in env and number("WORLD_SIZE") > 1:
        return Part(number("RANK"), number("WORLD_SIZE"), TORCHRUN)
    return None


def resolve_part(option: str | None, count: int | None = None, env: Mapping[str, str] | None = None) -> Part | None:
    """--part wins; without it the scheduler's environment decides; neither → the whole stage.
    `count` (--parts) is the number of a Kubernetes Indexed Job's pods: anywhere else it is refused,
    not ignored."""
    env = os.environ if env is None else env
    if count is not None and (option is not None or "JOB_COMPLETION_INDEX" not in env):
        raise ValueError(
            f"--parts {count} numbers a Kubernetes Indexed Job's pods ($JOB_COMPLETION_INDEX, not set here"
            + (f"; --part {option} already says which part)" if option is not None else "); use --part I/N")
        )
    if option is not None:
        return parse_part(option)
    return part_from_env(env, count)


def run_in_parts(build: Callable[[Part | None], T], part: Part | None, log: Callable[[str], None] = print) -> T | None:
    """`build(part)`; under torchrun every rank builds its part, then rank 0 merges (`build(None)`)
    once all ranks are done. Elsewhere a part returns after its shards: the merge is its own step.
    Returns the merge's result, or None on a rank or part that did not merge."""
    if part is None:
        return build(None)
    log(f"part {part} (from {part.source}): building {'its' if part.count > 1 else 'every'} share of the shards")
    if part.source != TORCHRUN:
        build(part)
        return None
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # one GPU per rank: "cuda" means this one
    # gloo: a barrier needs no GPU backend; parts can differ by hours, so wait long (torchrun stops
    # every rank when one fails, so nobody waits for a dead one)
    dist.init_process_group("gloo", timeout=timedelta(days=1))
    try:
        build(part)
        dist.barrier()
        return build(None) if part.index == 0 else None
    finally:
        dist.destroy_process_group()
