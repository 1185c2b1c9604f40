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


def test_onnx_export_of_an_exact_pair_norm_model_reads_pairs_as_captures(tiny_stats, tmp_path):
    """A model with exact-pair norms exports like any other; the ONNX graph is the capture side
    (what `fgbg predict` uses without --exact), not the exact norms."""
    pytest.importorskip("onnxruntime")
    import torch
    from conftest import tiny_train_params

    from fgbg.export import run_export
    from fgbg.model import MaskDepthNet, Normaliser, build_model, save_model

    params = tiny_train_params(tmp_path, exact_input=True, augment={"clean": 0.5})
    torch.manual_seed(0)
    net = MaskDepthNet(build_model(params), Normaliser.from_stats(tiny_stats)).eval()
    for m in net.pair_norms:  # as if trained: the exact pairs' statistics differ
        m.exact.running_mean.add_(0.5)
    save_model(tmp_path / "model.pt", net, params, epoch=1, input_size=32)
    assert run_export(tmp_path / "model.pt", tmp_path / "model.onnx")["max_abs_diff"] < 1e-3
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    bg, fg_bg = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    depth = session.run(["depth"], {"bg": bg.numpy(), "fg_bg": fg_bg.numpy()})[0]
    with torch.no_grad():
        capture, exact = (net(bg, fg_bg, torch.full((2,), kind)).depth.numpy() for kind in (False, True))
    assert abs(depth - capture).max() < 1e-3 < abs(depth - exact).max()
