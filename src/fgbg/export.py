"""`fgbg export`: the trained model as ONNX, normalisation included, checked against torch.

The graph is the network alone, at its own scale: bg and fg_bg of any batch and any H, W that are
multiples of 32 (a photo shrunk so its short side is the training size, `fgbg.predict.network_size`).
The full-size path (area shrink, guided refinement) is `fgbg predict`'s and the MLflow model's
(fgbg.serving): its area resize converted to ONNX only at the example's shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fgbg.images import atomic_write_bytes
from fgbg.model import Deployable, load_model


def run_export(model_path: Path, out: Path, check: bool = True) -> dict:
    """Write ONNX (dynamic batch, height and width) and, with `check`, compare onnxruntime with
    torch on random input at the training size and at an oblong one."""
    loaded = load_model(Path(model_path), torch.device("cpu"))
    net = Deployable(loaded.net).eval()
    size = loaded.input_size
    example = tuple(torch.rand(2, 3, max(size, 64), max(size, 64) + 32) for _ in range(2))  # no dim of 1
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
    tmp = Path(out).with_suffix(".tmp.onnx")
    program.save(str(tmp))
    atomic_write_bytes(Path(out), tmp.read_bytes())
    tmp.unlink()
    report = {"onnx": str(out), "input_size": size}
    if check:
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        diffs = []
        for shape in ((3, 3, size, size), (1, 3, size, size + 64)):
            bg, fg_bg = torch.rand(shape), torch.rand(shape)
            got = session.run(None, {"bg": bg.numpy(), "fg_bg": fg_bg.numpy()})
            with torch.no_grad():
                want = [t.numpy() for t in net(bg, fg_bg)]
            diffs += [np.abs(g - w).max() for g, w in zip(got, want, strict=True)]
        report["max_abs_diff"] = float(max(diffs))
    return report
