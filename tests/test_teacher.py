"""Depth teacher: a real transformers model loaded by path, offline, in both depth modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fgbg.depth as depth_module
from fgbg.config import DepthParams, TeacherParams
from fgbg.depth import run_depth
from fgbg.images import decode
from fgbg.prepared import PreparedSet, parse_key
from fgbg.shards import file_sha256, iter_shard, read_manifest
from fgbg.teacher import DepthTeacher, TeacherError, TeacherOutput, save_random_depth_anything, to_inverse_u16

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    return save_random_depth_anything(tmp_path_factory.mktemp("teacher") / "tiny-depth-anything", "tiny")


def teacher_params(path: Path, mode: str) -> DepthParams:
    teacher = TeacherParams(model=str(path), resolution=56, batch_size=16, device="cpu", workers=1)
    return DepthParams(source="teacher", mode=mode, teacher=teacher, jobs=1, preview_samples=2)


def test_teacher_loads_from_a_local_folder_offline_and_predicts_at_input_size(tiny_teacher, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = DepthTeacher(str(tiny_teacher), resolution=60, device="auto")
    assert teacher.resolution == 56 and not teacher.metric  # rounded to the patch multiple; relative
    out = teacher.predict(torch.randint(0, 256, (3, 40, 52, 3), dtype=torch.uint8))
    assert out.maps.shape == (3, 40, 52) and torch.isfinite(out.maps).all()
    u16 = to_inverse_u16(out.maps, out.metric)
    assert u16.dtype == np.uint16 and (u16.min(axis=(1, 2)) == 0).all() and (u16.max(axis=(1, 2)) == 65535).all()


def test_a_bf16_teacher_computes_in_bf16_and_gives_the_float32_depth(tiny_teacher, monkeypatch):
    """`depth.teacher.precision: bf16` (a GPU's default) run here on the CPU: the convolutions compute
    in bf16, the maps come back float32 and rank depth as float32 does (the u16 maps agree)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    images = torch.randint(0, 256, (2, 40, 52, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fp32 = DepthTeacher(str(tiny_teacher), resolution=56, device="cpu").predict(images).maps
    teacher = DepthTeacher(str(tiny_teacher), resolution=56, device="cpu", precision="bf16")
    convs = []
    handles = [m.register_forward_hook(lambda m, a, out: convs.append(out.dtype))
               for m in teacher.model.modules() if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    bf16 = teacher.predict(images).maps
    for h in handles:
        h.remove()
    assert convs and set(convs) == {torch.bfloat16}
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    a, b = (to_inverse_u16(m, False).astype(np.float64) for m in (bf16, fp32))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_a_teacher_whose_processor_does_not_normalise_reads_pixels_as_they_are(tmp_path, monkeypatch):
    """GLPN (a supported teacher) ships a processor without image_mean / image_std: it takes pixels
    on [0, 1] unnormalised, and loading it must not fail on the missing statistics."""
    from transformers import GLPNConfig, GLPNForDepthEstimation, GLPNImageProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = GLPNConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32],
                        num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16, sr_ratios=[8, 4, 2, 1])  # fmt: skip
    torch.manual_seed(0)
    GLPNForDepthEstimation(config).save_pretrained(tmp_path / "glpn")
    GLPNImageProcessor().save_pretrained(tmp_path / "glpn")
    teacher = DepthTeacher(str(tmp_path / "glpn"), resolution=64, device="cpu")
    assert teacher.mean.flatten().tolist() == [0, 0, 0] and teacher.std.flatten().tolist() == [1, 1, 1]
    out = teacher.predict(torch.randint(0, 256, (2, 40, 52, 3), dtype=torch.uint8))
    assert out.maps.shape == (2, 40, 52) and torch.isfinite(out.maps).all()


@pytest.mark.parametrize("path_kind", ["missing", "broken"])
def test_missing_or_broken_model_path_is_a_clear_error(tmp_path, path_kind, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "teacher"
    if path_kind == "broken":
        path.mkdir()
        (path / "config.json").write_text("{ this is not json")
    with pytest.raises(TeacherError, match="depth.teacher.model: cannot load"):
        DepthTeacher(str(path), 56, "cpu")


def test_metric_teachers_map_through_the_fixed_range():
    metres = torch.tensor([[[1.0, 2.0], [10.0, 500.0]]])
    u16 = to_inverse_u16(metres, metric=True)
    assert u16[0, 0, 0] == 65535 and u16[0, 1, 1] == 0 and u16[0, 0, 1] > u16[0, 1, 0]


def test_compose_mode_runs_the_teacher_once_per_bg(tiny_teacher, tiny_prepared, tiny_composites, tmp_path, monkeypatch):
    seen = []
    real_predict = DepthTeacher.predict

    def counting_predict(self, images):
        seen.extend(images[i].numpy().tobytes() for i in range(images.shape[0]))
        return real_predict(self, images)

    monkeypatch.setattr(DepthTeacher, "predict", counting_predict)
    manifest = run_depth(teacher_params(tiny_teacher, "compose"), tiny_prepared, tiny_composites, tmp_path / "d")
    bgs = PreparedSet(tiny_prepared).bg
    assert sorted(seen) == sorted(b.tobytes() for b in bgs)  # each bg once, never a composite
    assert manifest["samples"] == read_manifest(tiny_composites)["samples"]
    name = next(iter(manifest["shards"]))
    for (key, comp), (dkey, dep) in zip(
        iter_shard(tiny_composites / name), iter_shard(tmp_path / "d" / name), strict=True
    ):
        depth, mask = decode(dep["depth.png"]), decode(comp["mask.png"]) > 0
        assert key == dkey and depth.dtype == np.uint16
        outside = depth[~mask]
        assert outside.min() == 0 or outside.max() == 65535  # the bg's own teacher map, normalised per bg


def test_per_image_mode_runs_the_teacher_on_every_composite_deterministically(
    tiny_teacher, tiny_prepared, tiny_composites, tmp_path
):
    params = teacher_params(tiny_teacher, "per_image")
    manifest = run_depth(params, tiny_prepared, tiny_composites, tmp_path / "a")
    assert manifest["samples"] == read_manifest(tiny_composites)["samples"]
    assert list(manifest["shards"]) == list(read_manifest(tiny_composites)["shards"])
    for name in manifest["shards"]:
        keys = [k for k, _ in iter_shard(tiny_composites / name)]
        maps = [(k, decode(f["depth.png"])) for k, f in iter_shard(tmp_path / "a" / name)]
        assert [k for k, _ in maps] == keys
        assert all(m.min() == 0 and m.max() == 65535 for _, m in maps)  # normalised per image
    run_depth(params, tiny_prepared, tiny_composites, tmp_path / "b")
    for name in manifest["shards"]:
        assert file_sha256(tmp_path / "a" / name) == file_sha256(tmp_path / "b" / name)
    # a killed run resumes: lose one shard, rerun, the same bytes come back
    lost = tmp_path / "a" / next(iter(manifest["shards"]))
    lost.unlink()
    run_depth(params, tiny_prepared, tiny_composites, tmp_path / "a")
    assert file_sha256(lost) == file_sha256(tmp_path / "b" / lost.relative_to(tmp_path / "a"))


def test_depth_agreement_cli_reports_absrel_and_delta1_inside_and_outside_the_mask(
    tiny_teacher, tiny_prepared, tiny_composites, tmp_path
):
    params = tmp_path / "params.yaml"
    params.write_text(
        f"depth:\n  teacher:\n    model: {tiny_teacher}\n    resolution: 56\n    device: cpu\n    batch_size: 8\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "fgbg.cli", "depth-agreement", "-p", str(params), "--prepared", str(tiny_prepared),
         "--composites", str(tiny_composites), "--samples", "6", "--out", str(tmp_path / "agree.json")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "agree.json").read_text())
    assert result["samples"] == 6
    for key in ("fg_absrel", "fg_delta1", "bg_absrel", "bg_delta1"):
        assert result[key] >= 0
    assert 0 <= result["bg_delta1"] <= 1 and 0 <= result["fg_delta1"] <= 1


class _LookupTeacher:
    """A stand-in teacher that knows the true depth of every image it is shown: bgs → their
    provided depth; composites → the depth stage's map, or the bare bg's when `ignore_object`."""

    resolution = 64

    def __init__(self, prepared, composites, depth, ignore_object=False):
        ps = PreparedSet(prepared, depth=True)
        self.truth = {b.tobytes(): d for b, d in zip(ps.bg, ps.bg_depth, strict=True)}
        for name in read_manifest(composites)["shards"]:
            for (key, comp), (_, dep) in zip(iter_shard(composites / name), iter_shard(depth / name), strict=True):
                truth = ps.bg_depth[ps.bg_ids.index(parse_key(key).bg)] if ignore_object else decode(dep["depth.png"])
                self.truth[decode(comp["jpg"]).tobytes()] = truth

    def predict(self, images):
        maps = [
            torch.from_numpy(self.truth[images[i].numpy().tobytes()].astype(np.float32)) for i in range(len(images))
        ]
        return TeacherOutput(torch.stack(maps), metric=False)


def test_depth_agreement_is_perfect_for_a_teacher_that_agrees_and_flags_one_that_ignores_the_object(
    tiny_prepared, tiny_composites, tiny_depth, monkeypatch
):
    params = DepthParams(source="teacher", teacher=TeacherParams(model="stand-in", batch_size=8))
    agree = _LookupTeacher(tiny_prepared, tiny_composites, tiny_depth)
    monkeypatch.setattr(depth_module, "load_teacher", lambda p: agree)
    result = depth_module.depth_agreement(params, tiny_prepared, tiny_composites, samples=12)
    assert result["samples"] == 12
    assert result["fg_absrel"] < 1e-3 and result["bg_absrel"] < 1e-3
    assert result["fg_delta1"] == 1.0 and result["bg_delta1"] == 1.0

    blind = _LookupTeacher(tiny_prepared, tiny_composites, tiny_depth, ignore_object=True)
    monkeypatch.setattr(depth_module, "load_teacher", lambda p: blind)
    result = depth_module.depth_agreement(params, tiny_prepared, tiny_composites, samples=12)
    assert result["fg_absrel"] > 10 * max(result["bg_absrel"], 1e-3)  # the object's depth is what differs


def test_per_image_mode_without_a_teacher_is_a_param_error():
    with pytest.raises(ValueError, match="set source: teacher"):
        DepthParams(source="provided", mode="per_image")


def test_metric_conversion_matches_the_projects_fixed_range():
    from fgbg.convention import metric_to_inverse_u16

    metres = np.geomspace(0.5, 400, 50).reshape(1, 5, 10)
    got = to_inverse_u16(torch.from_numpy(metres).float(), metric=True).astype(int)
    assert np.abs(got - metric_to_inverse_u16(metres).astype(int)).max() <= 2


def test_teacher_depth_from_another_device_or_precision_is_another_run(tiny_teacher, monkeypatch):
    """bf16 and float32, CUDA and the CPU give other bytes: `device: auto` resolved on a GPU machine
    and on a CPU one, or another precision, must not share a fingerprint (parts of both would be
    merged as one run); auto on CUDA is bf16, so it shares bf16's."""
    base = teacher_params(tiny_teacher, "compose")

    def fingerprint(kind: str, precision: str) -> str:
        monkeypatch.setattr(depth_module, "resolve_device", lambda device: torch.device(kind))
        teacher = base.teacher.model_copy(update={"device": "auto", "precision": precision})
        return depth_module._teacher_fingerprint(base.model_copy(update={"teacher": teacher}))

    runs = {(kind, precision): fingerprint(kind, precision) for kind in ("cpu", "cuda") for precision in
            ("auto", "bf16", "float32")}  # fmt: skip
    assert runs[("cuda", "auto")] == runs[("cuda", "bf16")] and runs[("cpu", "auto")] == runs[("cpu", "float32")]
    assert runs[("cpu", "auto")].endswith("@cpu")  # as before precision existed: CPU outputs stay reusable
    assert len(set(runs.values())) == 4
