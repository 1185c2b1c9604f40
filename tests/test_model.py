"""The mask + depth model: learning, metrics, resume, evaluate, predict and MLflow tracking."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from fgbg.config import EvaluateParams, StatsParams, TrainParams
from fgbg.data import Normaliser, ShardSamples, bg_table, make_loader, to_device
from fgbg.evaluate import run_evaluate
from fgbg.losses import total_loss
from fgbg.metrics import depth_metrics, mask_metrics
from fgbg.model import build_model
from fgbg.predict import network_size, run_predict
from fgbg.stats import run_stats
from fgbg.train import forward, run_train


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def tiny_stats(tiny_prepared, tiny_composites, tiny_depth, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stats") / "stats.json"
    run_stats(StatsParams(jobs=1), tiny_prepared, tiny_composites, tiny_depth, out)
    return out


def tiny_params(tmp_path: Path, **kw) -> TrainParams:
    base = dict(encoder="resnet18", decoder_channels=[16, 16, 8, 8, 8], image_size=32, epochs=2,
                steps_per_epoch=2, batch_size=4, workers=0, device="cpu",
                mlflow={"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})  # fmt: skip
    return TrainParams(**{**base, **kw})


def unregistered(tmp_path: Path) -> dict:
    return {"tracking_uri": f"sqlite:///{tmp_path}/m.db", "registered_model": None}


def train(params, data, out: Path, **kw):
    prepared, composites, depth, stats = data
    return run_train(params, {"train": params.model_dump()}, prepared, composites, depth, stats, out,
                     history_csv=out / "history.csv", log=quiet, **kw)  # fmt: skip


@pytest.fixture
def data(tiny_prepared, tiny_composites, tiny_depth, tiny_stats):
    return tiny_prepared, tiny_composites, tiny_depth, tiny_stats


def test_metrics_match_hand_computed_values():
    pred = torch.zeros(1, 1, 4, 4)
    gt = torch.zeros(1, 1, 4, 4)
    pred[..., :2, :2] = 1  # 4 px
    gt[..., :2, :3] = 1  # 6 px, 4 shared
    m = mask_metrics(pred, gt)
    assert m["iou"].item() == pytest.approx(4 / 6) and m["dice"].item() == pytest.approx(8 / 10)
    assert mask_metrics(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))["iou"].item() == 1.0

    from fgbg.metrics import to_metres

    # depth in metres 2, 4, 10 and sky; as stored: normalised inverse depth
    def inv(m):
        return (1 / m - 1 / 200) / (1 - 1 / 200)

    gt_d = torch.tensor([[[[inv(2.0), inv(4.0)], [inv(10.0), 0.0]]]])
    pred_d = torch.tensor([[[[inv(2.0), inv(4.8)], [inv(20.0), 0.9]]]])  # sky pixel: ignored
    assert to_metres(gt_d)[0, 0, 1, 0].item() == pytest.approx(10.0)
    d = depth_metrics(pred_d, gt_d)
    assert d["absrel"].item() == pytest.approx((0 + 0.8 / 4 + 10 / 10) / 3, rel=1e-4)
    assert d["delta1"].item() == pytest.approx(2 / 3)  # ratios 1.0 and 1.2 pass, 2.0 does not
    assert d["delta3"].item() == pytest.approx(2 / 3)  # 2.0 > 1.25³
    assert d["rmse"].item() == pytest.approx(np.sqrt((0 + 0.64 + 100) / 3), rel=1e-4)

    from fgbg.losses import log_depth_loss

    # |log 2 − log 2| + |log 4.8 − log 4| + |log 20 − log 10|, sky ignored
    want = (0 + np.log(1.2) + np.log(2.0)) / 3
    assert log_depth_loss(pred_d, gt_d).item() == pytest.approx(want, rel=1e-4)


def test_depth_is_resized_over_pixels_that_have_depth():
    from fgbg.data import resize_depth

    depth = torch.tensor([[[[0.0, 0.4, 0.0, 0.0], [0.4, 0.4, 0.2, 0.0]] * 2]]).view(1, 1, 4, 4)
    small = resize_depth(depth, 2)  # 2×2 blocks: 3 of 4 with depth → their mean; 1 of 4 → sky
    assert small[0, 0, 0, 0].item() == pytest.approx(0.4) and small[0, 0, 0, 1].item() == 0.0


def test_an_optimisation_step_lowers_the_loss_on_a_fixed_batch(data, tmp_path):
    prepared, composites, depth, stats = data
    params = tiny_params(tmp_path)
    torch.manual_seed(0)
    model = build_model(params)
    dev = torch.device("cpu")
    batch = to_device(next(iter(make_loader(ShardSamples(composites, depth, "train", shuffle=False), 4, 0, dev))),
                      bg_table(prepared, dev), dev, 32)  # fmt: skip
    norm = Normaliser.from_stats(stats, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss():
        return total_loss(*forward(model, norm, batch, dev), batch.mask, batch.depth, params.loss)[0]

    before = loss()
    for _ in range(3):
        opt.zero_grad()
        step_loss = loss()
        step_loss.backward()
        opt.step()
    assert loss().item() < before.item()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data, tmp_path, monkeypatch):
    params = tiny_params(tmp_path)
    train(params, data, tmp_path / "straight")

    import fgbg.train as train_module

    real_epoch = train_module.MlflowRun.epoch

    def killed_in_epoch_2(self, row, sheet):
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # as if the machine went away after epoch 1's checkpoint
        real_epoch(self, row, sheet)

    monkeypatch.setattr(train_module.MlflowRun, "epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(params, data, tmp_path / "resumed")
    mlflow.end_run()
    monkeypatch.setattr(train_module.MlflowRun, "epoch", real_epoch)
    result = train(params, data, tmp_path / "resumed", resume=True)
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    client = mlflow.tracking.MlflowClient(tracking_uri=params.mlflow.tracking_uri)
    versions = len(client.search_model_versions("name='fgbg-mask-depth'"))
    again = train(params, data, tmp_path / "resumed", resume=True)  # finished: nothing to do, nothing logged
    assert again["history"] == result["history"]
    assert len(client.search_model_versions("name='fgbg-mask-depth'")) == versions
    with pytest.raises(ValueError, match="without --resume"):  # a longer schedule is a new run
        train(params.model_copy(update={"epochs": 3}), data, tmp_path / "resumed", resume=True)


def test_mlflow_run_has_params_metrics_artifacts_and_registered_model(data, tmp_path):
    params = tiny_params(tmp_path, epochs=1)
    result = train(params, data, tmp_path / "m")
    prepared, composites, depth, _ = data
    run_evaluate(EvaluateParams(batch_size=8, sheet_samples=2), tmp_path / "m" / "model.pt", prepared, composites,
                 depth, tmp_path / "metrics", device="cpu", log=quiet)  # fmt: skip
    client = mlflow.tracking.MlflowClient(tracking_uri=params.mlflow.tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.params["train.encoder"] == "resnet18"
    assert {"train_loss", "val_loss", "val_iou", "test_iou", "test_delta1"} <= set(run.data.metrics)
    assert "git_commit" in run.data.tags
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"predictions", "checkpoint", "evaluate"} <= top
    sheets = [a.path for a in client.list_artifacts(run.info.run_id, "predictions")]
    assert sheets and sheets[0].endswith(".png")
    versions = client.search_model_versions("name='fgbg-mask-depth'")
    version = next(v for v in versions if v.run_id == run.info.run_id)

    # the registered model is model.pt's best weights with normalisation inside, at any H, W
    from fgbg.model import Deployable
    from fgbg.train import load_model

    served = mlflow.pyfunc.load_model(f"models:/fgbg-mask-depth/{version.version}")
    x = np.random.default_rng(0).random((3, 6, 96, 64), dtype=np.float32)
    got = served.predict(x)
    model, norm, _, _ = load_model(tmp_path / "m" / "model.pt", torch.device("cpu"))
    with torch.no_grad():
        prob, depth_pred = Deployable(model, norm)(torch.from_numpy(x[:, :3]), torch.from_numpy(x[:, 3:]))
    assert got.shape == (3, 2, 96, 64)
    np.testing.assert_allclose(got, torch.cat([prob, depth_pred], 1).numpy(), atol=1e-5)


def test_evaluate_writes_metrics_table_and_sheet(data, tmp_path):
    params = tiny_params(
        tmp_path, epochs=1, mlflow={"tracking_uri": f"sqlite:///{tmp_path}/m.db", "registered_model": None}
    )
    train(params, data, tmp_path / "m")
    prepared, composites, depth, _ = data
    result = run_evaluate(EvaluateParams(batch_size=8, sheet_samples=4), tmp_path / "m" / "model.pt", prepared,
                          composites, depth, tmp_path / "metrics", device="cpu", log=quiet)  # fmt: skip
    assert json.loads((tmp_path / "metrics" / "test.json").read_text()) == result
    lines = (tmp_path / "metrics" / "test_samples.csv").read_text().splitlines()
    assert lines[0].startswith("key,iou,dice,boundary_f,absrel") and len(lines) == 1 + result["samples"]
    assert all(0 <= result[k] <= 1 for k in ("iou", "dice", "boundary_f", "delta1", "delta2", "delta3"))
    sheet = np.asarray(Image.open(tmp_path / "metrics" / "test_sheet.png"))
    assert sheet.shape[0] >= 4 * 32


def test_predict_returns_outputs_at_the_input_photo_size(data, tmp_path):
    params = tiny_params(
        tmp_path, epochs=1, mlflow={"tracking_uri": f"sqlite:///{tmp_path}/m.db", "registered_model": None}
    )
    train(params, data, tmp_path / "m")
    rng = np.random.default_rng(0)
    (tmp_path / "bg").mkdir()
    (tmp_path / "fg_bg").mkdir()
    for name, (h, w) in (("a.png", (70, 100)), ("b.jpg", (45, 45))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "bg" / name)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "fg_bg" / name)
    written = run_predict(tmp_path / "m" / "model.pt", tmp_path / "bg", tmp_path / "fg_bg", tmp_path / "out", "cpu")
    assert len(written) == 8
    mask = np.asarray(Image.open(tmp_path / "out" / "a_mask.png"))
    depth = np.asarray(Image.open(tmp_path / "out" / "a_depth.png"))
    assert mask.shape == (70, 100) and set(np.unique(mask)) <= {0, 255}
    assert depth.shape == (70, 100) and depth.dtype == np.uint16
    assert network_size(480, 640, 192) == (192, 256)  # aspect kept, sides multiples of 32
    assert np.asarray(Image.open(tmp_path / "out" / "b_overlay.png")).shape == (45, 45, 3)


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="train.encoder"):
        build_model(TrainParams(encoder="resnet9000"))


def test_onnx_export_matches_torch(data, tmp_path):
    pytest.importorskip("onnxruntime")
    from fgbg.export import run_export

    params = tiny_params(tmp_path, epochs=1, mlflow=unregistered(tmp_path))
    train(params, data, tmp_path / "m")
    report = run_export(tmp_path / "m" / "model.pt", tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").stat().st_size > 10_000
    assert report["max_abs_diff"] < 1e-3


def test_torchrun_ddp_trains_with_two_cpu_processes(data, tmp_path):
    """`torchrun --nproc_per_node 2 -m fgbg.cli train` starts, shares shards, and rank 0 saves."""
    import subprocess
    import sys

    import yaml
    from conftest import TINY_COMPOSE, TINY_SPLIT

    from fgbg.compose import run_compose
    from fgbg.config import DepthParams
    from fgbg.depth import run_depth

    prepared, _, _, stats = data
    composites, depth = tmp_path / "composites", tmp_path / "depth"  # small shards: one per rank at least
    run_compose(TINY_COMPOSE.model_copy(update={"shard_size": 6}), TINY_SPLIT, prepared, composites)
    run_depth(DepthParams(jobs=1, preview_samples=0), prepared, composites, depth)
    params = tiny_params(tmp_path, epochs=1, mlflow=unregistered(tmp_path))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": params.model_dump()}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fgbg.cli", "train", "-p", str(tmp_path / "params.yaml"), "--prepared", str(prepared),
           "--composites", str(composites), "--depth", str(depth), "--stats", str(stats),
           "--out", str(tmp_path / "ddp")]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = torch.load(tmp_path / "ddp" / "model.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in saved["model"])  # the bare model, not the DDP wrapper
    assert "train: 1 epochs" in res.stderr
    rngs = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["flip"], rngs[1]["flip"])  # each rank resumes its own
