"""Shared fixtures: a tiny synthetic raw set and the stages run on it (64 px, seconds on 2 CPUs)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path

import pytest

from fgbg.compose import run_compose
from fgbg.config import ComposeParams, DepthParams, PrepareParams, SplitParams, SynthParams
from fgbg.depth import run_depth
from fgbg.prepare import run_prepare
from fgbg.synth import run_synth

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_SYNTH = SynthParams(n_bg=6, n_fg=6, bg_size=64, fg_size=48)
TINY_PREPARE = dict(image_size=64, fg_size=32)
TINY_SPLIT = SplitParams(train=0.5, val=0.25, test=0.25)
TINY_COMPOSE = ComposeParams(positions=3, shard_size=40, jobs=1, preview_samples=4)


def quiet(*args, **kwargs) -> None:
    pass


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    run_synth(TINY_SYNTH, raw)
    return raw


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    run_prepare(PrepareParams(raw_dir=str(tiny_raw), **TINY_PREPARE), out, log=quiet)
    return out


@pytest.fixture(scope="session")
def tiny_composites(tiny_prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("composites") / "composites"
    run_compose(TINY_COMPOSE, TINY_SPLIT, tiny_prepared, out)
    return out


@pytest.fixture(scope="session")
def tiny_depth(tiny_prepared, tiny_composites, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("depth") / "depth"
    run_depth(DepthParams(jobs=1, preview_samples=4), tiny_prepared, tiny_composites, out)
    return out


@pytest.fixture(scope="session")
def tiny_stats(tiny_prepared, tiny_composites, tiny_depth, tmp_path_factory) -> Path:
    from fgbg.config import StatsParams
    from fgbg.stats import run_stats

    out = tmp_path_factory.mktemp("stats") / "stats.json"
    run_stats(StatsParams(jobs=1), tiny_prepared, tiny_composites, tiny_depth, out)
    return out


@pytest.fixture(scope="session")
def tiny_data(tiny_prepared, tiny_composites, tiny_depth, tiny_stats):
    return tiny_prepared, tiny_composites, tiny_depth, tiny_stats


@cache
def _migrated_mlflow_db() -> Path:
    """An empty MLflow SQLite store, created once: a new store runs seconds of schema migrations."""
    import mlflow

    db = Path(tempfile.mkdtemp(prefix="fgbg-mlflow-")) / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def fresh_mlflow_uri(folder: Path) -> str:
    """A test's own, empty MLflow store (a copy of the migrated one)."""
    db = Path(folder) / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    if not db.exists():
        shutil.copyfile(_migrated_mlflow_db(), db)
    return f"sqlite:///{db}"


def tiny_train_params(tmp_path: Path, **kw):
    """Tiny training params with their own MLflow store; the MLflow model is skipped unless a test
    asks for it with mlflow={..., "log_model": True}."""
    from fgbg.config import TrainParams

    mlflow = {"tracking_uri": fresh_mlflow_uri(tmp_path), "log_model": False, **kw.pop("mlflow", {})}
    base = dict(encoder="resnet18", decoder_channels=[16, 16, 8, 8, 8], image_size=32, epochs=2,
                steps_per_epoch=2, batch_size=4, workers=0, device="cpu", mlflow=mlflow)  # fmt: skip
    return TrainParams(**{**base, **kw})


def exact_pair_model(tmp_path: Path, stats: Path, input_size: int):
    """An untrained tiny model with exact-pair norms whose exact side differs from its capture side
    (as after training), saved as tmp_path/model.pt: (net in eval mode, model.pt path)."""
    import torch

    from fgbg.model import MaskDepthNet, Normaliser, build_model, save_model

    params = tiny_train_params(tmp_path, exact_input=True, augment={"clean": 0.5})
    torch.manual_seed(0)
    net = MaskDepthNet(build_model(params), Normaliser.from_stats(stats)).eval()
    for m in net.pair_layers:
        m.exact.running_mean.add_(0.5)
    save_model(tmp_path / "model.pt", net, params, epoch=1, input_size=input_size)
    return net, tmp_path / "model.pt"


def train_tiny(params, data, out: Path, **kw) -> dict:
    from fgbg.train import run_train

    prepared, composites, depth, stats = data
    return run_train(params, {"train": params.model_dump()}, prepared, composites, depth, stats, out,
                     history_csv=out / "history.csv", log=quiet, **kw)  # fmt: skip


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """One tiny model trained once (1 epoch, registered in its own MLflow store), shared by the
    evaluate, predict, export and tracking tests."""
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("trained")
    params = tiny_train_params(root, epochs=1, mlflow={"log_model": True})
    result = train_tiny(params, tiny_data, root / "models")
    return SimpleNamespace(model=root / "models" / "model.pt", params=params, run_id=result["mlflow_run_id"],
                           root=root, history=result["history"])  # fmt: skip


def isolated_env(tmp_path: Path) -> dict:
    """Environment for the tools a team test runs (git, dvc, mlflow, fgbg): its own HOME, no
    telemetry, offline, fake S3 credentials for the local S3 server."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
    }
