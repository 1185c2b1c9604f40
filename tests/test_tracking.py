"""MLflow: a training run with params, tags, curves, pictures, checkpoint, registered model; the
evaluation logged into it; names a person can compare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from fgbg.capture_pairs import capture_pairs, real_photos
from fgbg.config import EvaluateParams, MlflowParams, TrainParams
from fgbg.evaluate import run_evaluate
from fgbg.model import load_model
from fgbg.predict import predict_tensors, run_predict
from fgbg.tone import match_tone
from fgbg.tracking import TrainRun, dvc_hashes, run_name


def test_run_has_params_metrics_artifacts_evaluation_and_registered_model(trained, tiny_data, tmp_path):
    prepared, composites, depth, _ = tiny_data
    run_evaluate(EvaluateParams(batch_size=8, sheet_samples=2), trained.model, prepared, composites, depth,
                 tmp_path / "metrics", device="cpu", mlflow=trained.params.mlflow, log=lambda *a: None)  # fmt: skip
    client = mlflow.tracking.MlflowClient(tracking_uri=trained.params.mlflow.tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.params["train.encoder"] == "resnet18"
    assert {"train_loss", "val_loss", "val_iou", "test_iou", "test_delta1"} <= set(run.data.metrics)
    assert "git_commit" in run.data.tags and len(run.data.tags["model_sha256"]) == 64
    assert run.info.run_name.startswith("resnet18-32px-1x2")
    store = Path(trained.params.mlflow.tracking_uri.removeprefix("sqlite:///")).resolve().parent
    assert run.info.artifact_uri.startswith((store / "mlruns").as_uri())  # beside the store, not in the cwd
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"predictions", "checkpoint", "test"} <= top
    sheets = [a.path for a in client.list_artifacts(run.info.run_id, "predictions")]
    assert sheets and sheets[0].endswith(".png")
    versions = client.search_model_versions("name='fgbg-mask-depth'")
    version = next(v for v in versions if v.run_id == run.info.run_id)

    # the registered model is model.pt's best weights with normalisation inside, and gives what
    # `fgbg predict` gives for photos of any size: larger (refined), smaller, other aspect ratios
    served = mlflow.pyfunc.load_model(f"models:/fgbg-mask-depth/{version.version}", model_config={"device": "cpu"})
    loaded = load_model(trained.model, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for shape in ((3, 6, 96, 64), (1, 6, 40, 130), (2, 6, 24, 24)):
        x = rng.random(shape, dtype=np.float32)
        got = served.predict(x, params={"align": "never"})
        with torch.no_grad():
            want = predict_tensors(loaded, torch.from_numpy(x[:, :3]), torch.from_numpy(x[:, 3:]))
        assert got.shape == (shape[0], 3, *shape[2:])  # mask probability, depth, alpha
        np.testing.assert_allclose(got, torch.cat(want, 1).numpy(), atol=1e-5)
    # params={"refine": False} as `--no-refine`: bilinear upsampling of a photo larger than the network's side
    big = rng.random((1, 6, 96, 64), dtype=np.float32)
    with torch.no_grad():
        bg_t, fg_bg_t = torch.from_numpy(big[:, :3]), torch.from_numpy(big[:, 3:])
        bilinear = torch.cat(predict_tensors(loaded, bg_t, fg_bg_t, refine=False), 1).numpy()
        refined = torch.cat(predict_tensors(loaded, bg_t, fg_bg_t), 1).numpy()
    np.testing.assert_allclose(served.predict(big, params={"align": "never", "refine": False}), bilinear, atol=1e-5)
    assert np.abs(bilinear - refined).max() > 1e-3  # the param changes what is served
    # a handheld pair is registered first, as `fgbg predict` does by default; params as its options
    pair = next(capture_pairs(real_photos()[:1], per_photo=1, size=192, seed=3, conditions=("handheld",)))
    bg8, fg_bg8 = pair.bg, pair.fg_bg
    x_pair = np.concatenate([bg8, fg_bg8], 2).transpose(2, 0, 1)[None].astype(np.float32) / 255
    written = run_predict(trained.model, *_write_pair(tmp_path / "pair", bg8, fg_bg8), tmp_path / "out", "cpu")
    assert json.loads(written[-1].read_text())["aligned"]
    want_mask = np.asarray(Image.open(tmp_path / "out" / "shot_mask.png")) > 0
    given = x_pair.copy()
    aligned, as_shot = served.predict(x_pair), served.predict(x_pair, params={"align": "never"})
    np.testing.assert_array_equal(x_pair, given)  # the caller's array is not written into
    assert ((aligned[0, 0] >= 0.5) != want_mask).mean() < 0.001 < ((as_shot[0, 0] >= 0.5) != want_mask).mean()
    with pytest.raises(Exception, match="params align: one of"):
        served.predict(x_pair, params={"align": "sometimes"})
    # params={"align_above_px": ...} as `--align-above-px`: auto registers only a camera moved beyond it
    np.testing.assert_allclose(served.predict(x_pair, params={"align_above_px": 1000.0}), as_shot, atol=1e-6)
    with pytest.raises(Exception, match="params align_above_px: a camera shift"):
        served.predict(x_pair, params={"align_above_px": -1.0})
    with pytest.raises(Exception, match="params exact: .*trained without train.exact_input"):
        served.predict(x_pair, params={"exact": True})
    # params={"match_tone": False} as `--no-match-tone`: by default a bg whose exposure drifted from
    # its fg_bg's takes the fg_bg's tone first (fgbg.tone), as `fgbg predict` does
    clean = next(capture_pairs(real_photos()[:1], per_photo=1, size=192, seed=3, conditions=("clean",)))
    drifted8 = np.clip(clean.fg_bg * 1.3 + 8, 0, 255).astype(np.uint8)
    x_drift = np.concatenate([clean.bg, drifted8], 2).transpose(2, 0, 1)[None].astype(np.float32) / 255
    matched8, found = match_tone(clean.bg, drifted8)
    assert found.applied
    with torch.no_grad():
        want_matched, want_plain = (
            torch.cat(predict_tensors(loaded, torch.from_numpy(b.transpose(2, 0, 1)[None] / 255).float(),
                                      torch.from_numpy(x_drift[:, 3:])), 1).numpy()
            for b in (matched8, clean.bg)
        )  # fmt: skip
    never = {"align": "never"}
    np.testing.assert_allclose(served.predict(x_drift, params=never), want_matched, atol=1e-4)
    np.testing.assert_allclose(served.predict(x_drift, params={**never, "match_tone": False}), want_plain, atol=1e-4)
    assert np.abs(want_matched - want_plain).max() > 1e-3
    with pytest.raises(Exception, match="match_tone"):  # MLflow's schema, or ours on a direct call
        served.predict(x_drift, params={"match_tone": "yes"})
    with pytest.raises(ValueError, match="nodevice"):  # the device is the loader's choice (default: auto)
        mlflow.pyfunc.load_model(f"models:/fgbg-mask-depth/{version.version}", model_config={"device": "nodevice"})
    # what the network would misread is refused with the reason (MLflow's schema check: the shape)
    wide = np.full((1, 6, 16, 200), 0.5, np.float32)  # 12.5:1, beyond the limit of 8:1
    for bad, reason in ((x[:, :5], "shape"), (x * 255, r"on \[0, 1\]"), (wide, "aspect"), (x * np.nan, "NaN")):
        with pytest.raises(Exception, match=reason):
            served.predict(bad)
    # the inference code and a pinned environment travel with the weights: a process that cannot
    # import the installed fgbg loads the model and predicts with the copy inside it
    logged = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model",
                                                      tracking_uri=trained.params.mlflow.tracking_uri))  # fmt: skip
    requirements = (logged / "requirements.txt").read_text()
    assert "segmentation-models-pytorch==" in requirements and "torch==" in requirements
    script = (
        "import sys, importlib.util, numpy as np\n"
        "sys.path = [p for p in sys.path if not (p and __import__('os').path.isdir(p + '/fgbg'))]\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()]\n"
        "assert importlib.util.find_spec('fgbg') is None\n"
        "import mlflow.pyfunc\n"
        f"m = mlflow.pyfunc.load_model({str(logged)!r}, model_config={{'device': 'cpu'}})\n"
        "print(m.predict(np.full((1, 6, 50, 70), 0.5, np.float32)).shape, sys.modules['fgbg'].__file__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1, 3, 50, 70)" in done.stdout and str(logged) in done.stdout


def test_run_names_follow_the_dvc_experiment_else_the_setup(monkeypatch):
    params = TrainParams(encoder="resnet34", image_size=192, epochs=5, steps_per_epoch=0)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert run_name(params, "0123456789abcdef") == "resnet34-192px-5xall-0123456"
    progressive = params.model_copy(update={"image_size": 128, "full_size_epochs": 1})
    assert run_name(progressive, "") == "resnet34-128px+1full-5xall"  # told apart from 128 px throughout
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-3")
    assert run_name(params, "0123456789abcdef") == "lr-sweep-3"


def test_registered_model_of_an_exact_pair_norm_model_reads_pairs_as_captures(tiny_stats, tmp_path):
    """The MLflow model of a model with exact-pair norms (the defaults) serves the capture side,
    as `fgbg predict` without --exact does: a deployed model is shown two camera shots; the exact
    side when asked, as with --exact."""
    from conftest import exact_pair_model

    _, model_pt = exact_pair_model(tmp_path, tiny_stats, input_size=32)
    params = load_model(model_pt, torch.device("cpu")).params.model_copy(
        update={"mlflow": MlflowParams(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", registered_model=None)}
    )
    run = TrainRun(params, {"train": params.model_dump(mode="json")}, None)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"checkpoint")
    run.finish(model_pt, ckpt, params.mlflow)

    served = mlflow.pyfunc.load_model(f"runs:/{run.run_id}/model")
    x = np.random.default_rng(1).random((2, 6, 64, 96), dtype=np.float32)
    got, got_exact = served.predict(x), served.predict(x, params={"exact": True})
    bg, fg_bg = torch.from_numpy(x[:, :3]), torch.from_numpy(x[:, 3:])
    loaded = load_model(model_pt, torch.device("cpu"))
    with torch.no_grad():
        capture, exact = (torch.cat(predict_tensors(loaded, bg, fg_bg, kind), 1).numpy() for kind in (False, True))
    assert abs(got - capture).max() < 1e-4 < abs(got - exact).max()
    assert abs(got_exact - exact).max() < 1e-4  # params={"exact": True} as `fgbg predict --exact`
    with pytest.raises(Exception, match="params exact with params align always"):
        served.predict(x, params={"exact": True, "align": "always"})


def test_the_served_model_class_is_typed_so_mlflow_does_not_warn():
    """MLflow warns about an untyped `predict` when the PythonModel class is defined (on import):
    a fresh process imports fgbg.serving without that warning, so whoever registers has a clean log."""
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import fgbg.serving\n"
        "print(sum('type hint' in str(w.message) for w in caught))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "0"


def _write_pair(folder: Path, bg: np.ndarray, fg_bg: np.ndarray) -> tuple[Path, Path]:
    for sub, img in (("bg", bg), ("fg_bg", fg_bg)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / sub / "shot.png")
    return folder / "bg" / "shot.png", folder / "fg_bg" / "shot.png"


def test_a_run_is_tagged_with_the_data_it_read_not_the_previous_runs_outputs(tmp_path):
    """dvc.lock still holds the previous model's and metrics' hashes while `fgbg train` runs under
    `dvc repro` (a stage's entry is written as it ends): only the train stage's inputs are tagged."""
    import yaml

    (tmp_path / "dvc.yaml").write_text((Path(__file__).parents[1] / "dvc.yaml").read_text())
    lock = {"schema": "2.0", "stages": {
        "compose": {"cmd": "fgbg compose", "outs": [{"path": "data/composites", "md5": "c0.dir"}]},
        "stats": {"cmd": "fgbg stats", "outs": [{"path": "data/stats.json", "md5": "s0"}]},
        "train": {"cmd": "fgbg train", "outs": [{"path": "models/model.pt", "md5": "old-model"}]},
        "evaluate": {"cmd": "fgbg evaluate", "outs": [{"path": "metrics/test.json", "md5": "old-metrics"}]},
    }}  # fmt: skip
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dvc_hashes(tmp_path / "dvc.lock") == {
        "dvc.compose.data/composites": "c0.dir",
        "dvc.stats.data/stats.json": "s0",
    }
    assert dvc_hashes(tmp_path / "missing.lock") == {}
