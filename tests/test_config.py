"""Params: bad keys and values are named before any work starts; presets stay valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fgbg.config import ConfigError, load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text, key",
    [
        ("compose:\n  positionz: 3\n", "compose.positionz: unknown key"),
        ("compose:\n  positions: many\n", "compose.positions"),
        ("compose:\n  positions: 0\n", "compose.positions"),
        ("split:\n  train: 0.9\n  val: 0.2\n  test: 0.1\n", "train + val + test must be 1"),
        ("compose:\n  placement: spiral\n", "compose.placement"),
        ("compose:\n  grid: [0, 4]\n", "grid needs cols, rows >= 1"),
        ("depht:\n  mode: compose\n", "depht: unknown key"),
        ("- just\n- a list\n", "expected a mapping"),
        ("compose: [unclosed\n", "not valid YAML"),
        ("train:\n  exact_input: true\n", "0 < clean < 1"),
        ("train:\n  exact_input: true\n  augment:\n    enabled: false\n    clean: 0.5\n", "0 < clean < 1"),
        ("train:\n  exact_input: true\n  augment:\n    clean: 1.0\n", "0 < clean < 1"),
        ("captures:\n  seed: -1\n", "captures.seed"),
        ("train:\n  seed: -3\n", "train.seed"),
    ],
)
def test_bad_params_name_the_file_and_the_key(tmp_path, text, key):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_unreadable_params_files_name_the_file(tmp_path):
    """A folder or a binary file passed as -p is one line naming it (the CLI's exit 2), not a traceback."""
    binary = tmp_path / "params.yaml"
    binary.write_bytes(b"train:\n  lr: \xff\xfe\n")
    for path, message in [(tmp_path, "cannot read the params file"), (binary, "not a UTF-8 text file")]:
        with pytest.raises(ConfigError, match=message) as err:
            load_params(path)
        assert str(err.value).startswith(str(path))


@pytest.mark.parametrize("name", ["params.yaml", "presets/tiny.yaml", "presets/seed-scale.yaml"])
def test_shipped_params_and_presets_are_valid(name):
    params = load_params(ROOT / name)
    assert params.compose.n_positions >= 1


def test_cli_reports_bad_params_in_one_line_before_any_work(tmp_path):
    (tmp_path / "params.yaml").write_text("compose:\n  jpeg_quality: 101\n")
    res = subprocess.run(
        [sys.executable, "-m", "fgbg.cli", "compose"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "compose.jpeg_quality" in res.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", ["params.yaml", "presets/tiny.yaml", "presets/seed-scale.yaml"])
def test_every_param_dvc_yaml_tracks_is_spelled_out(name):
    """dvc repro refuses a stage whose listed param is missing from the file."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / name).read_text())
    for stage in stages.values():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name} lacks {key}"
                node = node[part]


def test_missing_teacher_folder_is_named_at_load(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("depth:\n  source: teacher\n  teacher:\n    model: /nonexistent/teacher\n")
    with pytest.raises(ConfigError, match="depth.teacher.model: no such folder"):
        load_params(path)
    path.write_text("depth:\n  source: provided\n  teacher:\n    model: /nonexistent/teacher\n")
    assert load_params(path).depth.source == "provided"  # unused teacher: no error


def test_precision_auto_is_bf16_on_cuda_only_and_an_unknown_one_is_refused():
    """auto keeps the CPU in float32 (the bytes DVC cached) and a GPU in bf16; a misspelt precision
    (the served model's model_config is not checked by pydantic) is an error, not float32."""
    import torch

    from fgbg.config import uses_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [uses_bf16(d, p) for d in (cpu, cuda) for p in ("auto", "bf16", "float32")] == [
        False, True, False, True, True, False]  # fmt: skip
    with pytest.raises(ValueError, match="bfloat16"):
        uses_bf16(cuda, "bfloat16")
