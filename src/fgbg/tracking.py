"""MLflow in one place: tracking URI, experiment, run names, params, tags, metrics, images, the
registered model (built by fgbg.serving), and evaluate's results logged into the training run. Telemetry is off here,
before mlflow is imported, for every caller (offline machines: no phoning home)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np

from fgbg.config import MlflowParams, TrainParams
from fgbg.images import atomic_write_bytes, encode_png
from fgbg.shards import file_sha256

MODEL_SHA_TAG = "model_sha256"  # links model.pt (a DVC out, with no run id inside) to its run


def quiet_telemetry() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")


def _mlflow(params: MlflowParams):
    """mlflow, pointed at the params' tracking URI, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    quiet_telemetry()
    import mlflow

    mlflow.set_tracking_uri(params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    return mlflow


def _use_experiment(mlflow, name: str) -> None:
    """Set the experiment, creating it with its artifacts beside a SQLite store (`mlflow.db` →
    `mlruns/` next to it), not in whatever folder the process runs from (MLflow's default)."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        root = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns"
        mlflow.create_experiment(name, artifact_location=root.as_uri())
    mlflow.set_experiment(name)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: str(v)})
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def dvc_hashes(lock: Path = Path("dvc.lock"), reader: str = "train") -> dict[str, str]:
    """The md5 in dvc.lock of each output that stage `reader` reads (its deps in dvc.yaml beside
    it): which data this run trained on. `dvc repro` writes a stage's lock entry as the stage ends,
    so those upstream entries are this run's; the reader's own outputs and later stages' would still
    be the previous run's, and are left out."""
    import yaml

    pipeline = lock.with_name("dvc.yaml")
    if not lock.exists() or not pipeline.exists():
        return {}
    stages = (yaml.safe_load(pipeline.read_text()) or {}).get("stages", {})
    reads = {str(dep) for dep in (stages.get(reader) or {}).get("deps", [])}
    tags = {}
    for stage, spec in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).items():
        for out in spec.get("outs", []):
            if out["path"] in reads:
                tags[f"dvc.{stage}.{out['path']}"] = out.get("md5", "")
    return tags


def run_name(params: TrainParams, commit: str) -> str:
    """The DVC experiment's name under `dvc exp run`, else what tells runs apart at a glance:
    `resnet18-96px-3x40-1a2b3c4`."""
    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        return experiment
    steps = params.steps_per_epoch or "all"
    size = f"{params.image_size}px" if params.image_size else "full"
    size += f"+{params.full_size_epochs}full" if params.full_size_epochs and params.image_size else ""
    return f"{params.encoder}-{size}-{params.epochs}x{steps}" + (f"-{commit[:7]}" if commit else "")


class TrainRun:
    """A training run: started (or resumed by id), per-epoch metrics and sheets, then the
    checkpoint and the registered model."""

    def __init__(self, params: TrainParams, all_params: dict, run_id: str | None):
        self.mlflow = _mlflow(params.mlflow)
        _use_experiment(self.mlflow, params.mlflow.experiment)
        commit = git_commit()
        self.run = self.mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name(params, commit))
        if run_id is None:
            tags = {"git_commit": commit, **dvc_hashes()}
            if os.environ.get("DVC_EXP_NAME"):  # lines MLflow up with `dvc exp show`
                tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
            self.mlflow.log_params(flatten(all_params))
            self.mlflow.set_tags(tags)
        self.run_id = self.run.info.run_id

    def epoch(self, row: dict, sheet: np.ndarray | None = None) -> None:
        epoch = int(row["epoch"])
        self.mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=epoch)
        if sheet is not None:
            self.mlflow.log_image(sheet, f"predictions/epoch_{epoch:03d}.png")

    def catch_up(self, history: list[dict]) -> None:
        """Log the checkpointed epochs a resumed run has not logged yet (killed between the two),
        without their prediction sheets, which the checkpoint does not keep."""
        if not history:  # a new run: nothing to ask the server about
            return
        logged = {m.step for m in self.mlflow.tracking.MlflowClient().get_metric_history(self.run_id, "val_loss")}
        for row in history:
            if int(row["epoch"]) not in logged:
                self.epoch(row)

    def finish(self, model_path: Path, checkpoint: Path, params: MlflowParams) -> None:
        """Log the checkpoint, tag the run with model.pt's sha256 (evaluate finds the run by it)
        and log (and register) model.pt as fgbg.serving's model: bg ⊕ fg_bg photos on [0, 1] in,
        mask prob ⊕ depth ⊕ alpha out at the photos' size, any batch and H, W."""
        self.mlflow.log_artifact(str(checkpoint), "checkpoint")
        self.mlflow.set_tag(MODEL_SHA_TAG, file_sha256(model_path))
        if not params.log_model:
            self.mlflow.end_run()
            return
        from fgbg.serving import log_served_model

        log_served_model(self.mlflow, model_path, params.registered_model)
        self.mlflow.end_run()


def log_evaluation(
    params: MlflowParams, model_path: Path, metrics: dict, artifacts: list[Path], metric_prefix: str, artifact_dir: str
) -> str:
    """Log test metrics and pictures into the run that trained `model_path` (found by the
    model's sha256), so MLflow shows one story per model. Returns the run id, "" if none."""
    mlflow = _mlflow(params)
    experiment = mlflow.get_experiment_by_name(params.experiment)
    if experiment is None:
        return ""
    runs = mlflow.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.{MODEL_SHA_TAG} = '{file_sha256(model_path)}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        return ""
    with mlflow.start_run(run_id=runs[0].info.run_id):
        mlflow.log_metrics({f"{metric_prefix}_{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        for path in artifacts:
            mlflow.log_artifact(str(path), artifact_dir)
    return runs[0].info.run_id


def record_results(
    out_dir: Path, name: str, result: dict, rows: list[dict], fields: tuple[str, ...], sheet: np.ndarray,
    mlflow: MlflowParams | None, model_path: Path,
) -> list[Path]:  # fmt: skip
    """An evaluation's files — `<name>.json` (means, DVC metrics), `<name>_samples.csv` (one row per
    sample), `<name>_sheet.png` — written atomically, then logged into the model's MLflow run
    (metrics prefixed `<name>_`, files under `<name>/`) when `mlflow` is given."""
    out_dir = Path(out_dir)
    files = [out_dir / f"{name}.json", out_dir / f"{name}_samples.csv", out_dir / f"{name}_sheet.png"]
    atomic_write_bytes(files[0], json.dumps(result, indent=2).encode() + b"\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in fields} for r in rows)
    atomic_write_bytes(files[1], buf.getvalue().encode())
    atomic_write_bytes(files[2], encode_png(sheet, 6))
    if mlflow is not None:
        log_evaluation(mlflow, Path(model_path), result, files, name, name)
    return files
