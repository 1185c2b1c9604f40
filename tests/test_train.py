"""Training: it learns, resumes exactly, gives the same model.pt for the same inputs, and runs
under torchrun."""

from __future__ import annotations

import mlflow
import pytest
import torch
from conftest import tiny_train_params, train_tiny

from fgbg.data import ShardSamples, bg_table, make_loader, to_device
from fgbg.losses import total_loss
from fgbg.model import MaskDepthNet, Normaliser, build_model, infer
from fgbg.train import CHECKPOINT


def test_an_optimisation_step_lowers_the_loss_on_a_fixed_batch(tiny_data, tmp_path):
    prepared, composites, depth, stats = tiny_data
    params = tiny_train_params(tmp_path)
    torch.manual_seed(0)
    net = MaskDepthNet(build_model(params), Normaliser.from_stats(stats))
    dev = torch.device("cpu")
    batch = to_device(next(iter(make_loader(ShardSamples(composites, depth, "train", shuffle=False), 4, 0, dev))),
                      bg_table(prepared, dev), dev, 32)  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def loss():
        out = infer(net, batch.bg, batch.fg_bg)
        return total_loss(out, batch, params.loss)[0]

    before = loss()
    for _ in range(3):
        opt.zero_grad()
        step_loss = loss()
        step_loss.backward()
        opt.step()
    assert loss().item() < before.item()


def test_the_same_training_gives_the_same_model_file(tiny_data, tmp_path):
    """model.pt is a DVC out: no run id, time or path inside, so two runs → the same bytes."""
    params = tiny_train_params(tmp_path, epochs=1)
    first = train_tiny(params, tiny_data, tmp_path / "a")
    second = train_tiny(params, tiny_data, tmp_path / "b")
    assert first["mlflow_run_id"] != second["mlflow_run_id"]
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    params = tiny_train_params(tmp_path)
    train_tiny(params, tiny_data, tmp_path / "straight")

    import fgbg.train as train

    real_save = train.save_atomic

    def killed_saving_epoch_2(obj, path):
        if obj["epoch"] == 2 and not obj.get("finished"):
            raise KeyboardInterrupt  # as if the machine went away after epoch 1's checkpoint
        real_save(obj, path)

    monkeypatch.setattr(train, "save_atomic", killed_saving_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(params, tiny_data, tmp_path / "resumed")
    mlflow.end_run()
    monkeypatch.setattr(train, "save_atomic", real_save)
    result = train_tiny(params, tiny_data, tmp_path / "resumed", resume=True)
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "model.pt").read_bytes() == (tmp_path / "resumed" / "model.pt").read_bytes()

    client = mlflow.tracking.MlflowClient(tracking_uri=params.mlflow.tracking_uri)
    # the rerun epoch 2 is in MLflow once, not once per try
    assert sorted(m.step for m in client.get_metric_history(result["mlflow_run_id"], "val_loss")) == [1, 2]

    def logged() -> list:
        runs = client.search_runs([client.get_experiment_by_name("fgbg").experiment_id])
        return sorted((r.info.run_id, len(client.get_metric_history(r.info.run_id, "val_loss"))) for r in runs)

    before = logged()
    again = train_tiny(params, tiny_data, tmp_path / "resumed", resume=True)  # finished: nothing to do or log
    assert again["history"] == result["history"]
    assert logged() == before
    with pytest.raises(ValueError, match="without --resume"):  # a longer schedule is a new run
        train_tiny(params.model_copy(update={"epochs": 3}), tiny_data, tmp_path / "resumed", resume=True)
    with pytest.raises(ValueError, match="another network.*without --resume"):  # as is another architecture
        train_tiny(params.model_copy(update={"alpha_head": False}), tiny_data, tmp_path / "resumed", resume=True)
    for update, name in (({"lr": 0.5}, "lr"), ({"seed": 7}, "seed"), ({"augment": {"enabled": False}}, "augment")):
        other = params.model_copy(update=update)  # the same schedule and network, another run all the same
        with pytest.raises(ValueError, match=f"other train params \\({name} changed\\).*without --resume"):
            train_tiny(other, tiny_data, tmp_path / "resumed", resume=True)


def test_an_epoch_checkpointed_but_not_yet_logged_is_logged_on_resume(tiny_data, tmp_path, monkeypatch):
    """Killed after epoch 2's checkpoint, before MLflow heard of it: the resumed run has nothing
    left to train but still logs epoch 2, so the run's curves are whole."""
    params = tiny_train_params(tmp_path)
    import fgbg.tracking as tracking

    real_epoch = tracking.TrainRun.epoch

    def killed_logging_epoch_2(self, row, sheet=None):
        if row["epoch"] == 2:
            raise KeyboardInterrupt
        real_epoch(self, row, sheet)

    monkeypatch.setattr(tracking.TrainRun, "epoch", killed_logging_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(params, tiny_data, tmp_path / "run")
    mlflow.end_run()
    monkeypatch.setattr(tracking.TrainRun, "epoch", real_epoch)
    result = train_tiny(params, tiny_data, tmp_path / "run", resume=True)
    client = mlflow.tracking.MlflowClient(params.mlflow.tracking_uri)
    for key in ("val_loss", "val_iou", "train_loss"):
        logged = {m.step: m.value for m in client.get_metric_history(result["mlflow_run_id"], key)}
        assert logged == {r["epoch"]: pytest.approx(r[key]) for r in result["history"]}


def test_a_new_run_does_not_leave_an_older_runs_checkpoint_to_resume(tiny_data, tmp_path, monkeypatch):
    """Run A finishes; run B (other params) is killed before its first checkpoint: `--resume` must not
    find A's checkpoint (it would say 'already finished' and hand back A's model as B's)."""
    import fgbg.train as train

    params = tiny_train_params(tmp_path, epochs=1)
    train_tiny(params, tiny_data, tmp_path / "models")
    assert (tmp_path / "models" / CHECKPOINT).exists()

    def killed(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "evaluate_split", killed)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(params.model_copy(update={"seed": 3}), tiny_data, tmp_path / "models")
    mlflow.end_run()
    assert not (tmp_path / "models" / CHECKPOINT).exists()


def test_a_loss_that_is_not_finite_stops_training_without_saving_a_model(tiny_data, tmp_path, monkeypatch):
    import fgbg.train as train

    real_evaluate = train.evaluate_split
    monkeypatch.setattr(train, "evaluate_split", lambda *a, **kw: real_evaluate(*a, **kw) | {"loss": float("nan")})
    with pytest.raises(ValueError, match="epoch 1: the loss is not finite .*val nan"):
        train_tiny(tiny_train_params(tmp_path, epochs=1), tiny_data, tmp_path / "models")
    mlflow.end_run()
    assert not (tmp_path / "models" / "model.pt").exists()


def test_torchrun_ddp_trains_with_two_cpu_processes(tiny_data, tmp_path):
    """`torchrun --nproc_per_node 2 -m fgbg.cli train` starts, shares shards, and rank 0 saves; with
    the default exact-pair norms, whose exact or capture side a rank's batch may not use."""
    import subprocess
    import sys

    import yaml
    from conftest import TINY_COMPOSE, TINY_SPLIT

    from fgbg.compose import run_compose
    from fgbg.config import DepthParams
    from fgbg.depth import run_depth

    prepared, _, _, stats = tiny_data
    composites, depth = tmp_path / "composites", tmp_path / "depth"  # small shards: one per rank at least
    run_compose(TINY_COMPOSE.model_copy(update={"shard_size": 6}), TINY_SPLIT, prepared, composites)
    run_depth(DepthParams(jobs=1, preview_samples=0), prepared, composites, depth)
    params = tiny_train_params(tmp_path, epochs=1, exact_input=True, augment={"clean": 0.5})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": params.model_dump()}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fgbg.cli", "train", "-p", str(tmp_path / "params.yaml"), "--prepared", str(prepared),
           "--composites", str(composites), "--depth", str(depth), "--stats", str(stats),
           "--out", str(tmp_path / "ddp")]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = torch.load(tmp_path / "ddp" / "model.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in saved["model"])  # the bare model, not the DDP wrapper
    assert any(".exact." in k for k in saved["model"]) and saved["train_params"]["exact_input"]
    assert "train: 1 epochs" in res.stderr
    assert (tmp_path / "ddp" / "train_history.csv").exists()  # beside the model: another --out is an experiment
    assert not (tmp_path / "metrics" / "train_history.csv").exists()  # the tracked run's curve is left alone
    rngs = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["flip"], rngs[1]["flip"])  # each rank resumes its own


def test_full_size_epochs_train_the_last_epochs_at_the_datas_size_and_save_that_model(tiny_data, tmp_path, monkeypatch):
    """Progressive resizing: epoch 1 at image_size, epoch 2 at the data's 64 px; the saved model is
    the full-size epoch's (its val loss is not compared with the small epoch's) and reads at 64."""
    import fgbg.train as train
    from fgbg.model import load_model

    sizes, real_to_device, real_evaluate = [], train.to_device, train.evaluate_split

    def recording_to_device(raw, bgs, device, size=0, *args, **kw):
        sizes.append(size)
        return real_to_device(raw, bgs, device, size, *args, **kw)

    def worse_at_full_size(*args, **kw):
        val = real_evaluate(*args, **kw)
        return val | {"loss": val["loss"] + (100.0 if args[6] == 0 else 0.0)}  # a full-size loss never "better"

    monkeypatch.setattr(train, "to_device", recording_to_device)
    monkeypatch.setattr(train, "evaluate_split", worse_at_full_size)
    params = tiny_train_params(tmp_path, epochs=2, full_size_epochs=1)
    result = train_tiny(params, tiny_data, tmp_path / "models")
    assert sizes == [32, 32, 0, 0]  # 2 steps per epoch
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    loaded = load_model(tmp_path / "models" / "model.pt", torch.device("cpu"))
    assert (loaded.epoch, loaded.input_size) == (2, 64)
    with pytest.raises(ValueError, match="full_size_epochs"):
        tiny_train_params(tmp_path, epochs=2, full_size_epochs=3)


def test_early_stopping_never_skips_the_full_size_epochs(tiny_data, tmp_path, monkeypatch):
    """patience 1 runs out in the small epochs (val loss 1 then 2); the full-size epoch still runs and
    its weights are the model."""
    import fgbg.train as train
    from fgbg.model import load_model

    losses, real_evaluate = iter([1.0, 2.0, 0.5, 0.4]), train.evaluate_split
    monkeypatch.setattr(train, "evaluate_split", lambda *a, **kw: real_evaluate(*a, **kw) | {"loss": next(losses)})
    params = tiny_train_params(tmp_path, epochs=3, full_size_epochs=1, patience=1)
    result = train_tiny(params, tiny_data, tmp_path / "models")
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3]
    loaded = load_model(tmp_path / "models" / "model.pt", torch.device("cpu"))
    assert (loaded.epoch, loaded.input_size) == (3, 64)


def test_the_history_logs_the_rate_each_epochs_last_step_took(tiny_data, tmp_path):
    """One-cycle ends at max_lr / (25 · 10⁴) on the last step; the logged rate is that step's, not
    the one after the schedule's end."""
    params = tiny_train_params(tmp_path, epochs=2)
    history = train_tiny(params, tiny_data, tmp_path / "models")["history"]
    assert history[-1]["lr"] == pytest.approx(params.lr / 25 / 1e4)


def test_bf16_trains_on_channels_last_here_and_predicts_what_float32_does(tiny_data, tmp_path):
    """`train.precision: bf16` is the path a GPU takes by default, run here on the CPU (CI has no GPU):
    every convolution computes in bf16 on channels_last tensors, outputs and losses stay float32, the
    losses are finite, and the saved model predicts in bf16 what it predicts in float32."""
    from fgbg.model import load_model

    convs = []

    def record(module, args, out):
        if isinstance(module, torch.nn.Conv2d):
            convs.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last)))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        history = train_tiny(tiny_train_params(tmp_path, precision="bf16"), tiny_data, tmp_path / "models")["history"]
    finally:
        handle.remove()
    assert convs and set(convs) == {(torch.bfloat16, True)}
    assert all(torch.isfinite(torch.tensor([r["train_loss"], r["val_loss"]])).all() for r in history)

    prepared, composites, depth, _ = tiny_data
    dev = torch.device("cpu")
    raw = next(iter(make_loader(ShardSamples(composites, depth, "val", shuffle=False), 8, 0, dev)))
    batch = to_device(raw, bg_table(prepared, dev), dev, 32)
    with torch.inference_mode():
        bf16, fp32 = (infer(load_model(tmp_path / "models" / "model.pt", dev, precision).net, batch.bg, batch.fg_bg)
                      for precision in ("bf16", "auto"))  # fmt: skip
    for a, b in zip(bf16, fp32, strict=True):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max() <= 0.05 * b.abs().max() + 0.02
    assert not torch.equal(bf16.depth, fp32.depth)  # auto is float32 on the CPU: the two paths differ
