"""Team workflow: an MLflow server on loopback collecting two trainings, a real S3-compatible
remote (moto_server on 127.0.0.1) for push → clone → pull, and `dvc exp run` lined up with MLflow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import isolated_env
from test_pipeline_dvc import ROOT, run, tree_hashes

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early: {proc.stderr.read() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture
def env(tmp_path) -> dict:
    return isolated_env(tmp_path)


def tiny_repo(path: Path, env: dict, log_model: bool = True) -> Path:
    """A git + DVC repo of the project on the tiny preset; `log_model=False` skips the MLflow model
    where a test does not look at it."""
    path.mkdir()
    shutil.copytree(ROOT / "src", path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, path / name)
    params = yaml.safe_load((ROOT / "presets" / "tiny.yaml").read_text())
    params["train"]["mlflow"]["log_model"] = log_model
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], path, env)
    run(["dvc", "init", "-q"], path, env)
    return path


def test_mlflow_server_collects_two_trainings_on_loopback(tmp_path, env):
    repo = tiny_repo(tmp_path / "repo", env)
    run(["dvc", "repro", "stats"], repo, env)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fgbg.cli", "mlflow-server", "--port", str(port),
         "--allowed-hosts", f"mlflow.team.example:{port}"],
        cwd=repo, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_port(port, server)
        uri = f"http://127.0.0.1:{port}"
        for lr in ("0.001", "0.003"):
            params = yaml.safe_load((repo / "params.yaml").read_text())
            params["train"]["lr"] = float(lr)
            (repo / "params.yaml").write_text(yaml.safe_dump(params))
            run([sys.executable, "-m", "fgbg.cli", "train"], repo, {**env, "MLFLOW_TRACKING_URI": uri})

        import mlflow

        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("fgbg")
        runs = client.search_runs([experiment.experiment_id])
        assert sorted(r.data.params["train.lr"] for r in runs) == ["0.001", "0.003"]
        for r in runs:
            assert {"train_loss", "val_loss", "val_iou"} <= set(r.data.metrics)
            images = client.list_artifacts(r.info.run_id, "predictions")
            assert images and images[0].path.endswith(".png")
        versions = client.search_model_versions("name='fgbg-mask-depth'")
        assert len(versions) == 2
        check_compare_page_in_browser(uri, experiment.experiment_id, runs, tmp_path)
        # teammates by the listed name get in (the trainings above came by 127.0.0.1), other names do not
        assert [host_status(uri, f"{name}:{port}") for name in ("mlflow.team.example", "other.example")] == [200, 403]
        # the default binds loopback only
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        if listening:
            bound = [ln.split()[3] for ln in listening.splitlines()[1:] if ln.split()[3].endswith(f":{port}")]
            assert bound and all(addr.startswith("127.0.0.1:") for addr in bound), bound
    finally:
        stop(server)


def host_status(uri: str, host: str) -> int:
    """The HTTP status of an API call to the server at `uri` addressed (Host header) to `host`."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=20000", "--window-size=1400,900"]  # fmt: skip


def check_compare_page_in_browser(uri: str, experiment_id: str, runs, tmp_path: Path) -> None:
    """The MLflow UI's run comparison for both runs, rendered by headless Chromium: both run
    names and a metric must be on the page. The screenshot is kept under .ci-artifacts/."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:  # CI installs Debian's chromium; elsewhere say so in the pytest summary
        warnings.warn("no chromium on PATH: the MLflow compare page was not checked in a browser", stacklevel=1)
        return
    ids = ",".join(f"%22{r.info.run_id}%22" for r in runs)
    url = f"{uri}/#/compare-runs?runs=[{ids}]&experiments=[%22{experiment_id}%22]"
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    for r in runs:
        assert r.info.run_name in dom, f"run {r.info.run_name} not on the compare page"
    assert "val_loss" in dom
    shots = ROOT / ".ci-artifacts"
    shots.mkdir(exist_ok=True)
    subprocess.run([*common, f"--screenshot={shots / 'mlflow-compare.png'}", url], capture_output=True, timeout=120)


def start_s3(port: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(port, proc)
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket="fgbg")  # fmt: skip
    return proc


def test_s3_remote_push_clone_pull_survives_a_killed_server(tmp_path, env):
    pytest.importorskip("dvc_s3")
    if shutil.which("moto_server") is None:
        pytest.skip("moto_server (moto[server]) not installed")
    repo = tiny_repo(tmp_path / "repo", env)
    port = free_port()
    run(["dvc", "remote", "add", "-d", "team", "s3://fgbg/cache"], repo, env)
    run(["dvc", "remote", "modify", "team", "endpointurl", f"http://127.0.0.1:{port}"], repo, env)
    run(["dvc", "repro", "stats"], repo, env)
    photos = repo / "data" / "raw" / "mine"  # a teammate's own photos, big enough to take a while to push
    photos.mkdir(parents=True)
    for i in range(300):
        (photos / f"photo_{i:03d}.bin").write_bytes(os.urandom(1 << 20))
    run(["dvc", "add", "data/raw/mine"], repo, env)
    built = tree_hashes(repo / "data")
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "data"], repo, env)

    server = start_s3(port, env)
    try:
        push = subprocess.Popen(["dvc", "push", "-j", "1"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        time.sleep(2.0)
        stop(server)  # the server dies mid-push
        try:
            code = push.wait(timeout=20)
        except subprocess.TimeoutExpired:  # retrying against a dead endpoint: give up, as a user would
            push.kill()
            code = push.wait()
        assert code != 0  # that push did not complete
        server = start_s3(port, env)  # a fresh, empty server: everything must be pushed again
        run(["dvc", "push"], repo, env)
        clone = tmp_path / "clone"
        run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
        run(["dvc", "pull", "--with-deps", "stats", "data/raw/mine.dvc"], clone, env)  # data (no model was built)
        assert tree_hashes(clone / "data") == built
        assert "up to date" in run(["dvc", "status", "--with-deps", "stats"], clone, env)
        assert "up to date" in run(["dvc", "repro", "stats"], clone, env)
    finally:
        stop(server)


def test_dvc_experiments_line_up_with_mlflow_runs(tmp_path, env):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"  # outside the repo: dvc exp may reset the workspace
    env = {**env, "MLFLOW_TRACKING_URI": tracking}
    repo = tiny_repo(tmp_path / "repo", env, log_model=False)
    run(["dvc", "repro", "stats"], repo, env)  # the data as the baseline; the experiment trains once
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline"], repo, env)
    run(["dvc", "exp", "run", "-n", "fast-lr", "-S", "train.lr=0.004"], repo, env)
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    names = json.dumps(json.loads(shown.stdout))
    assert "fast-lr" in names and "0.004" in names and "iou" in names
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("fgbg").experiment_id])
    tagged = [r for r in runs if r.data.tags.get("dvc_exp_name") == "fast-lr"]
    assert len(tagged) == 1 and tagged[0].data.params["train.lr"] == "0.004"
    plots = subprocess.run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], cwd=repo, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert plots.returncode == 0, plots.stderr
    assert (tmp_path / "plots" / "index.html").stat().st_size > 1000
