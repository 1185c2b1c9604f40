"""fgbg export: ONNX with the normalisation inside, checked against torch."""

from __future__ import annotations

import pytest


def test_onnx_export_matches_torch(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from fgbg.export import run_export

    report = run_export(trained.model, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").stat().st_size > 10_000
    assert report["max_abs_diff"] < 1e-3
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["mask", "depth", "alpha"]
