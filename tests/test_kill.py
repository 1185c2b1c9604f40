"""Killed stages rerun cleanly: SIGKILL compose, depth and train at several points, rerun, and the
outputs are byte-identical to an uninterrupted run (train: the same weights, via --resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_SPLIT, fresh_mlflow_uri, quiet

from fgbg.compose import run_compose
from fgbg.config import ComposeParams, DepthParams, TrainParams
from fgbg.depth import run_depth
from fgbg.shards import JOURNAL, MANIFEST, file_sha256
from fgbg.train import run_train

pytestmark = pytest.mark.slow
COMPOSE = ComposeParams(positions=600, shard_size=100, jobs=2, preview_samples=2)  # ~14k samples, 144 shards
DEPTH = DepthParams(jobs=2, preview_samples=2)


def hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fgbg.cli", *args]


def kill_after(cmd: list[str], cwd: Path, until) -> None:
    """Start cmd in its own process group and SIGKILL the group (workers too) as soon as
    `until()` is true: a point in the run's progress, not a time, so a faster machine cannot
    finish before the kill."""
    proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not until() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def journal_has(out: Path, n: int):
    """A trigger for kill_after: the stage has journalled n finished shards (of 144)."""

    def reached() -> bool:
        try:
            return (out / JOURNAL).read_bytes().count(b"\n") >= n
        except FileNotFoundError:
            return False

    return reached


def run_ok(cmd: list[str], cwd: Path) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump({"compose": COMPOSE.model_dump(mode="json"), "split": TINY_SPLIT.model_dump(),
                                    "depth": DEPTH.model_dump(mode="json")}))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def reference(tiny_prepared, tmp_path_factory) -> Path:
    ref = tmp_path_factory.mktemp("reference")
    run_compose(COMPOSE, TINY_SPLIT, tiny_prepared, ref / "composites")
    run_depth(DEPTH, tiny_prepared, ref / "composites", ref / "depth")
    return ref


def kill_and_rerun(stage_args: list[str], tmp_path: Path, expected: Path, kill_points: tuple[int, ...]) -> None:
    """For each kill point (the Nth shard journalled): run the stage, SIGKILL it there, rerun
    it; the output must equal `expected`. Every kill lands mid-run by construction."""
    for n in kill_points:
        out = tmp_path / f"killed-after-{n}"
        cmd = cli(*stage_args, "--out", str(out))
        kill_after(cmd, tmp_path, until=journal_has(out, n))
        assert not (out / MANIFEST).exists(), n  # killed before the end
        assert journal_has(out, n)(), n  # ... and after the Nth shard
        finished = {}
        for line in (out / JOURNAL).read_text().splitlines():
            try:
                path = out / json.loads(line)["path"]
            except json.JSONDecodeError:
                continue  # the line the kill cut short
            finished[path] = (path.stat().st_ino, path.stat().st_mtime_ns)
        run_ok(cmd, tmp_path)
        assert hashes(out) == hashes(expected), n
        # it resumed: the shards finished before the kill were verified and kept, not rebuilt
        assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished, n


def test_compose_killed_anywhere_reruns_to_identical_shards(tiny_prepared, reference, params_file, tmp_path):
    args = ["compose", "-p", str(params_file), "--prepared", str(tiny_prepared)]
    kill_and_rerun(args, tmp_path, reference / "composites", (1, 40, 120))


def test_depth_killed_anywhere_reruns_to_identical_shards(tiny_prepared, reference, params_file, tmp_path):
    args = ["depth", "-p", str(params_file), "--prepared", str(tiny_prepared),
            "--composites", str(reference / "composites")]  # fmt: skip
    kill_and_rerun(args, tmp_path, reference / "depth", (1, 70))


def test_train_killed_then_resumed_gives_the_same_weights(tiny_data, tmp_path):
    tiny_prepared, tiny_composites, tiny_depth, stats = tiny_data
    tracking = {"tracking_uri": fresh_mlflow_uri(tmp_path), "log_model": False}
    train = TrainParams(encoder="resnet18", decoder_channels=[16, 16, 8, 8, 8], image_size=32, epochs=3,
                        steps_per_epoch=2, batch_size=4, workers=0, device="cpu", mlflow=tracking)  # fmt: skip
    run_train(train, {}, tiny_prepared, tiny_composites, tiny_depth, stats, tmp_path / "straight",
              history_csv=tmp_path / "h.csv", log=quiet)  # fmt: skip

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": train.model_dump(mode="json")}))
    out = tmp_path / "killed"
    cmd = cli("train", "-p", str(params), "--prepared", str(tiny_prepared), "--composites", str(tiny_composites),
              "--depth", str(tiny_depth), "--stats", str(stats), "--out", str(out))  # fmt: skip
    kill_after(cmd, tmp_path, until=(out / "checkpoint.pt").exists)  # killed right after epoch 1's checkpoint
    killed_at = torch.load(out / "checkpoint.pt", weights_only=False)["epoch"]
    assert killed_at < 3
    run_ok([*cmd, "--resume"], tmp_path)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(out / "checkpoint.pt", weights_only=False)
    assert b["epoch"] == 3 and [r["epoch"] for r in b["history"]] == [1, 2, 3]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
