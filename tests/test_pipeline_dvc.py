"""End to end: the real `dvc repro` on the tiny profile in a temporary git repo, then push,
clone, pull — what a teammate does — and the pulled data must equal what was built."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def data_stages(lock: Path) -> dict:
    """dvc.lock's data stages (retraining for model.pt's bytes is test_train's job)."""
    stages = yaml.safe_load(lock.read_text())["stages"]
    return {k: v for k, v in stages.items() if k in ("synth", "prepare", "compose", "depth", "stats")}


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def env(tmp_path) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    return {
        **os.environ,
        "HOME": str(home),  # never touch the user's git/dvc config
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "HF_HUB_OFFLINE": "1",
    }


def test_dvc_repro_push_clone_pull_gives_identical_data(tmp_path, env):
    repo, remote, clone = tmp_path / "repo", tmp_path / "remote", tmp_path / "clone"
    repo.mkdir()
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "presets" / "tiny.yaml").read_text())
    params["train"]["mlflow"]["log_model"] = False  # the MLflow model is test_team's and test_tracking's
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["dvc", "remote", "add", "-d", "local", str(remote)], repo, env)

    out = run(["dvc", "repro"], repo, env)
    assert "Running stage 'evaluate'" in out and "Running stage 'check-captures'" in out
    captures = json.loads((repo / "metrics" / "captures.json").read_text())
    assert captures["objects"] == 6 and 0 <= captures["iou_handheld"] <= 1
    test_metrics = json.loads((repo / "metrics" / "test.json").read_text())
    assert test_metrics["samples"] > 0 and 0 <= test_metrics["iou"] <= 1
    assert "up to date" in run(["dvc", "repro"], repo, env)
    metrics = run(["dvc", "metrics", "show"], repo, env)
    assert "fg_bg.mean.r" in metrics and "depth.mean" in metrics and "delta1" in metrics
    assert "iou_tripod" in metrics  # the real-photo capture check is a DVC metric too

    built = tree_hashes(repo / "data")
    assert any(k.startswith("composites/train/shard-") for k in built)
    assert "depth/preview.png" in built and "stats.json" in built
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny pipeline"], repo, env)
    run(["dvc", "push"], repo, env)

    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    run(["dvc", "pull"], clone, env)
    assert tree_hashes(clone / "data") == built
    status = run(["dvc", "status"], clone, env)
    assert "up to date" in status, status

    # rebuilt from nothing in the clone, every stage's outputs hash the same: dvc.lock is unchanged
    for out in ("raw/synthetic", "prepared", "composites", "depth", "stats.json"):
        target = clone / "data" / out
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    run(["dvc", "repro", "--force", "--no-run-cache", "stats"], clone, env)  # the data stages, not the model
    assert data_stages(clone / "dvc.lock") == data_stages(repo / "dvc.lock")
    assert tree_hashes(clone / "data") == built
