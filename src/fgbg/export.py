"""`fgbg export`: the trained model as ONNX, normalisation included, checked against torch.

The graph is the network alone, at its own scale: bg and fg_bg of any batch and any H, W that are
multiples of 32 (a photo shrunk so its short side is the training size, `fgbg.predict.network_size`).
The full-size path (area shrink, guided refinement) is `fgbg predict`'s and the MLflow model's
(fgbg.serving): its area resize converted to ONNX only at the example's shape."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from fgbg.images import atomic_write_bytes
from fgbg.model import Deployable, load_model

CHECK_TOLERANCE = 1e-3  # outputs are on [0, 1]; float32 graph rewrites differ by ~1e-6


def run_export(model_path: Path, out: Path, check: bool = True) -> dict:
    """Write ONNX (dynamic batch, height and width) and, with `check`, compare onnxruntime with
    torch on random input at the training size and at an oblong one."""
    loaded = load_model(Path(model_path), torch.device("cpu"))
    net = Deployable(loaded.net).eval()
    size = loaded.input_size
    draws = torch.Generator().manual_seed(0)
    example = tuple(
        torch.rand(2, 3, max(size, 64), max(size, 64) + 32, generator=draws) for _ in range(2)
    )  # no dim of 1
    dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    program = torch.onnx.export(
        net,
        example,
        input_names=["bg", "fg_bg"],
        output_names=["mask", "depth", "alpha"],
        dynamic_shapes={"bg": dims, "fg_bg": dims},
        dynamo=True,
        verbose=False,
    )
    out = Path(out)
    report = {"onnx": str(out), "input_size": size}
    with tempfile.TemporaryDirectory(prefix="fgbg-export-") as scratch:  # the file lands only once checked
        tmp = Path(scratch) / "model.onnx"
        program.save(str(tmp))
        if check:
            report["max_abs_diff"] = _largest_difference(tmp, net, size)
            if report["max_abs_diff"] > CHECK_TOLERANCE:
                raise ValueError(f"{out}: not written, the ONNX graph's outputs differ from torch's by "
                                 f"{report['max_abs_diff']:.3g} (> {CHECK_TOLERANCE:g})")  # fmt: skip
        atomic_write_bytes(out, tmp.read_bytes())
    return report


def _largest_difference(onnx_path: Path, net: torch.nn.Module, size: int) -> float:
    """The largest |onnxruntime − torch| over every output, on seeded random pairs at the training
    size and at an oblong one (the batch, height and width are dynamic)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    draws = torch.Generator().manual_seed(0)
    diffs = []
    for shape in ((3, 3, size, size), (1, 3, size, size + 64)):
        bg, fg_bg = torch.rand(shape, generator=draws), torch.rand(shape, generator=draws)
        got = session.run(None, {"bg": bg.numpy(), "fg_bg": fg_bg.numpy()})
        with torch.no_grad():
            want = [t.numpy() for t in net(bg, fg_bg)]
        diffs += [np.abs(g - w).max() for g, w in zip(got, want, strict=True)]
    return float(max(diffs))
