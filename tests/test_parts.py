"""Parts: a shard stage built by several processes (Slurm array, Kubernetes Indexed Job, torchrun)
into one folder, then merged, gives the bytes one machine gives; a lost or damaged part is rebuilt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_COMPOSE, TINY_SPLIT, isolated_env
from test_pipeline_dvc import ROOT, run, tree_hashes
from test_team import tiny_repo

from fgbg.parts import TORCHRUN, parse_part, resolve_part
from fgbg.shards import Part, read_manifest

PARAMS = f"""\
split: {{train: {TINY_SPLIT.train}, val: {TINY_SPLIT.val}, test: {TINY_SPLIT.test}}}
compose: {{positions: {TINY_COMPOSE.positions}, shard_size: {TINY_COMPOSE.shard_size}, jobs: 1, preview_samples: 4}}
depth: {{jobs: 1, preview_samples: 4}}
"""


def stamps(paths) -> dict[Path, tuple[int, int]]:
    """Inode and mtime: unchanged means the file was kept, not written again."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def files_of(folder: Path) -> dict[str, bytes]:
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def fgbg(*args: str, env_extra: dict | None = None, wait: bool = True):
    """`python -m fgbg.cli …` in its own process (as a scheduler would start it)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fgbg.cli", *args],
        env={**clean, "HF_HUB_OFFLINE": "1", **(env_extra or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return finish(proc) if wait else proc


def finish(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return err


@pytest.fixture
def params(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    return path


def test_part_parsing_and_every_scheduler_environment():
    assert parse_part("1/4") == Part(1, 4) and parse_part(" 0 / 1 ") == Part(0, 1) and parse_part("all") is None
    assert Part(2, 5).select(list("abcdefghijkl")) == ["c", "h"]
    assert resolve_part(None, env={}) is None
    slurm = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_part(None, env=slurm) == Part(2, 4, "SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT")
    assert resolve_part(None, env={"JOB_COMPLETION_INDEX": "2", "FGBG_PARTS": "3"}) == Part(
        2, 3, "JOB_COMPLETION_INDEX"
    )
    assert resolve_part(None, 5, env={"JOB_COMPLETION_INDEX": "4"}).count == 5
    assert resolve_part(None, env={"RANK": "1", "WORLD_SIZE": "2"}) == Part(1, 2, TORCHRUN)
    assert resolve_part(None, env={"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: the whole stage
    assert resolve_part("all", env=slurm) is None and resolve_part("0/2", env=slurm) == Part(0, 2)
    resubmitted = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "1"}
    assert resolve_part(None, env=resubmitted | {"FGBG_PARTS": "8"}) == Part(3, 8, "SLURM_ARRAY_TASK_ID / FGBG_PARTS")
    for bad, message in [
        (lambda: parse_part("4/4"), "need 0 ≤ I < N"),
        (lambda: parse_part("1-4"), "expected I/N"),
        (lambda: resolve_part(None, env={"JOB_COMPLETION_INDEX": "1"}), "--parts N or $FGBG_PARTS"),
        (lambda: resolve_part(None, env={"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}), "whole number"),
        (lambda: resolve_part(None, 4, env={}), "--parts 4 numbers a Kubernetes"),  # not silently the whole stage
        (lambda: resolve_part("1/4", 8, env={"JOB_COMPLETION_INDEX": "1"}), "--part 1/4 already says"),
    ]:
        with pytest.raises(ValueError, match=message.replace("$", r"\$")):
            bad()


@pytest.mark.parametrize("count", [2, 3])
def test_compose_parts_run_at_once_then_merged_equal_one_run(count, params, tiny_prepared, tiny_composites, tmp_path):
    out = tmp_path / "composites"
    procs = [fgbg("compose", "-p", str(params), "--prepared", str(tiny_prepared), "--out", str(out),
                  "--part", f"{i}/{count}", wait=False) for i in range(count)]  # fmt: skip
    for proc in procs:
        finish(proc)
    names = sorted(read_manifest(tiny_composites)["shards"])
    built = sorted(f.relative_to(out).as_posix() for f in out.rglob("*.tar"))
    assert built == names  # every shard, by exactly one part
    assert not (out / "shards.json").exists()  # a part alone is not a finished stage (dvc sees no output)
    assert len(list(out.glob(".journal.part-*.jsonl"))) == count
    parts_wrote = stamps(out.rglob("*.tar"))
    err = fgbg("compose", "-p", str(params), "--prepared", str(tiny_prepared), "--out", str(out))
    assert "rebuilt" not in err
    assert stamps(parts_wrote) == parts_wrote  # the merge verified the parts' shards and kept them
    assert files_of(out) == files_of(tiny_composites)  # shards, index, manifest, preview; no journals left


def test_parts_from_slurm_and_kubernetes_environments_merge_to_one_run(
    params, tiny_prepared, tiny_composites, tmp_path
):
    for name, envs in {
        "slurm": [{"SLURM_ARRAY_TASK_ID": str(i + 1), "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
                  for i in range(2)],
        "k8s": [{"JOB_COMPLETION_INDEX": str(i), "FGBG_PARTS": "2"} for i in range(2)],
    }.items():  # fmt: skip
        out = tmp_path / name
        for index, scheduler in enumerate(envs):
            err = fgbg("compose", "-p", str(params), "--prepared", str(tiny_prepared), "--out", str(out),
                       env_extra=scheduler)  # fmt: skip
            assert f"part {index}/2 (from" in err
        assert not (out / "shards.json").exists()
        fgbg("compose", "-p", str(params), "--prepared", str(tiny_prepared), "--out", str(out), "--part", "all",
             env_extra=envs[0])  # fmt: skip
        assert files_of(out) == files_of(tiny_composites), name


def test_a_lost_or_truncated_part_is_rebuilt_by_the_merge_and_named(params, tiny_prepared, tiny_composites, tmp_path):
    out = tmp_path / "composites"
    for i in range(3):
        fgbg("compose", "-p", str(params), "--prepared", str(tiny_prepared), "--out", str(out), "--part", f"{i}/3")
    journaled = [[json.loads(line)["path"] for line in (out / Part(i, 3).journal).read_text().splitlines()]
                 for i in range(3)]  # fmt: skip
    part1, part2 = journaled[1], journaled[2]
    assert part1 and part2
    for name in part1:  # part 1's node died after writing: shards truncated, journal kept
        path = out / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for name in part2:  # part 2 never ran at all
        (out / name).unlink()
    (out / Part(2, 3).journal).unlink()
    intact = stamps(out / name for name in journaled[0])
    err = fgbg("compose", "-p", str(params), "--prepared", str(tiny_prepared), "--out", str(out))
    for name in part1:
        assert f"{name} (part 1/3)" in err
    assert "part 2/3 left no journal" in err
    assert stamps(intact) == intact
    assert files_of(out) == files_of(tiny_composites)


def test_merge_rereads_only_shards_changed_since_their_part_wrote_them(tiny_prepared, tiny_composites, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    """The journal's stamp (inode, size, mtime) spares the merge a second sha256 pass over GBs of
    untouched shards, but a shard rewritten in place at the same size is reread and rebuilt."""
    import fgbg.shards as shards
    from fgbg.compose import run_compose

    out = tmp_path / "composites"
    for i in range(2):
        run_compose(TINY_COMPOSE, TINY_SPLIT, tiny_prepared, out, part=Part(i, 2), log=lambda m: None)
    lines = [json.loads(line) for line in (out / Part(1, 2).journal).read_text().splitlines()]
    damaged = out / lines[0]["path"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, written in place: same size and inode
    with open(damaged, "r+b") as f:
        f.write(data)
    written = lines[0]["stamp"][3]  # the mtime when part 1 wrote it; any rewrite moves it on
    os.utime(damaged, ns=(written + 10**9, written + 10**9))  # (coarse clocks: make "later" sure)
    hashed = []
    real_sha256 = shards.file_sha256
    monkeypatch.setattr(shards, "file_sha256", lambda path: hashed.append(Path(path)) or real_sha256(path))
    logged = []
    run_compose(TINY_COMPOSE, TINY_SPLIT, tiny_prepared, out, log=logged.append)
    assert [p for p in hashed if out in p.parents] == [damaged]
    assert any(f"{lines[0]['path']} (part 1/2)" in m for m in logged)
    assert files_of(out) == files_of(tiny_composites)


def test_depth_parts_merge_to_one_run(params, tiny_prepared, tiny_composites, tiny_depth, tmp_path):
    out = tmp_path / "depth"
    common = ("depth", "-p", str(params), "--prepared", str(tiny_prepared), "--composites", str(tiny_composites))
    for proc in [fgbg(*common, "--out", str(out), "--part", f"{i}/2", wait=False) for i in range(2)]:
        finish(proc)
    assert not (out / "shards.json").exists()
    fgbg(*common, "--out", str(out))
    assert files_of(out) == files_of(tiny_depth)


def test_teacher_depth_under_torchrun_two_ranks_equals_one_process(tiny_prepared, tiny_composites, tmp_path):
    """Per-image teacher depth split over two torchrun ranks (gloo, CPU), rank 0 merging."""
    pytest.importorskip("transformers")
    from fgbg.teacher import save_random_depth_anything

    teacher = save_random_depth_anything(tmp_path / "teacher", "tiny")
    cfg = dict(model=str(teacher), resolution=56, batch_size=16, device="cpu", workers=1)
    params = tmp_path / "params.yaml"
    params.write_text("depth:\n  source: teacher\n  mode: per_image\n  jobs: 1\n  preview_samples: 4\n  teacher:\n"
                      + "".join(f"    {k}: {v}\n" for k, v in cfg.items()))  # fmt: skip
    common = ("depth", "-p", str(params), "--prepared", str(tiny_prepared), "--composites", str(tiny_composites))
    threads = {"OMP_NUM_THREADS": "1"}  # as torchrun sets it: CPU float sums depend on the thread count
    fgbg(*common, "--out", str(tmp_path / "one"), env_extra=threads)
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun not on PATH")
    res = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "fgbg.cli", *common, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **threads},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "part 0/2 (from torchrun" in res.stderr and "part 1/2 (from torchrun" in res.stderr
    assert files_of(tmp_path / "two") == files_of(tmp_path / "one")


@pytest.mark.slow
def test_launchers_run_their_bodies_then_finish_commits_and_pushes_to_dvc(tmp_path):
    """deploy/: the Slurm array body run as two array tasks and the Kubernetes Indexed Job's command
    as two pods (real schedulers are not in CI: `bash -n` and the bodies with their variables set),
    then the finish step: the stage is up to date for `dvc repro` and its data is on the remote."""
    env = isolated_env(tmp_path)
    repo = tiny_repo(tmp_path / "repo", env, log_model=False)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], repo, env)
    run(["dvc", "repro", "prepare"], repo, env)
    slurm = ROOT / "deploy" / "slurm"
    for script in sorted(slurm.glob("*.sbatch")):
        run(["bash", "-n", str(script)], tmp_path, env)
    submit = {**env, "SLURM_SUBMIT_DIR": str(repo), "SLURM_CPUS_PER_TASK": "1"}
    for i in range(2):
        array = {
            "SLURM_ARRAY_TASK_ID": str(i),
            "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_COUNT": "2",
            "FGBG_PARTS": "2",
        }  # sbatch --export=ALL,FGBG_PARTS=2 (the tiny set has 3 shards)
        assert f"part {i}/2 (from SLURM" in run(["bash", str(slurm / "compose.sbatch")], tmp_path, {**submit, **array})
    composites = repo / "data" / "composites"
    assert not (composites / "shards.json").exists()
    run(["bash", str(slurm / "finish.sbatch"), "compose"], tmp_path, submit)
    assert "didn't change" in run(["dvc", "repro", "compose"], repo, env)
    assert "in sync" in run(["dvc", "status", "--cloud", "compose"], repo, env)
    after_slurm = tree_hashes(composites)

    job, finish_job = (yaml.safe_load((ROOT / "deploy" / "k8s" / name).read_text())
                       for name in ("compose-job.yaml", "finish-job.yaml"))  # fmt: skip
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    (pod,) = spec["template"]["spec"]["containers"]
    pod_env = {e["name"]: e["value"] for e in pod["env"]}
    assert int(pod_env["FGBG_PARTS"]) == spec["completions"]
    shutil.rmtree(composites)
    for i in range(2):  # two of the job's pods (FGBG_PARTS=2 here: the tiny set has 3 shards)
        pod_run = {**env, **pod_env, "FGBG_PARTS": "2", "JOB_COMPLETION_INDEX": str(i)}
        run(pod["command"], repo, pod_run)
    run(finish_job["spec"]["template"]["spec"]["containers"][0]["command"], repo, env)
    assert tree_hashes(composites) == after_slurm
    assert "didn't change" in run(["dvc", "repro", "compose"], repo, env)
