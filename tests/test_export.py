"""fgbg export: ONNX with the normalisation inside, checked against torch."""

from __future__ import annotations

import numpy as np
import pytest


def test_onnx_export_matches_torch(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from fgbg.export import run_export

    report = run_export(trained.model, tmp_path / "new" / "model.onnx")  # a folder not made yet
    assert (tmp_path / "new" / "model.onnx").stat().st_size > 10_000
    tmp_path = tmp_path / "new"
    assert report["max_abs_diff"] < 1e-3
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["mask", "depth", "alpha"]
    # any batch and any multiple of 32 on each side: a photo keeps its aspect ratio at the network's scale
    import torch

    from fgbg.model import Deployable, load_model

    net = Deployable(load_model(trained.model, torch.device("cpu")).net).eval()
    rng = np.random.default_rng(0)
    for shape in ((1, 3, 32, 96), (2, 3, 64, 32)):
        bg, fg_bg = rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)
        got = session.run(None, {"bg": bg, "fg_bg": fg_bg})
        with torch.no_grad():
            want = net(torch.from_numpy(bg), torch.from_numpy(fg_bg))
        for g, w in zip(got, want, strict=True):
            assert g.shape == (shape[0], 1, *shape[2:])
            np.testing.assert_allclose(g, w.numpy(), atol=1e-3)


def test_onnx_export_of_an_exact_pair_norm_model_reads_pairs_as_captures(tiny_stats, tmp_path):
    """A model with exact-pair norms exports like any other; the ONNX graph is the capture side
    (what `fgbg predict` uses without --exact), not the exact norms."""
    ort = pytest.importorskip("onnxruntime")
    import torch
    from conftest import exact_pair_model

    from fgbg.export import run_export

    net, model_pt = exact_pair_model(tmp_path, tiny_stats, input_size=32)
    assert run_export(model_pt, tmp_path / "model.onnx")["max_abs_diff"] < 1e-3
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    bg, fg_bg = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    depth = session.run(["depth"], {"bg": bg.numpy(), "fg_bg": fg_bg.numpy()})[0]
    with torch.no_grad():
        capture, exact = (net(bg, fg_bg, torch.full((2,), kind)).depth.clamp(0, 1).numpy() for kind in (False, True))
    assert abs(depth - capture).max() < 1e-3 < abs(depth - exact).max()


def test_an_export_that_fails_its_check_writes_nothing(tiny_stats, tmp_path, monkeypatch):
    """The ONNX file lands only when onnxruntime agrees with torch; otherwise the error says by how
    much, and an earlier export at that path is left as it was."""
    pytest.importorskip("onnxruntime")
    from conftest import exact_pair_model

    import fgbg.export

    _, model_pt = exact_pair_model(tmp_path, tiny_stats, input_size=32)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the export before")
    monkeypatch.setattr(fgbg.export, "CHECK_TOLERANCE", -1.0)  # every difference, even none, fails it
    with pytest.raises(ValueError, match="model.onnx: not written"):
        fgbg.export.run_export(model_pt, out)
    assert out.read_bytes() == b"the export before"
