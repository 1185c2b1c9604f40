"""`fgbg export`: the trained model as ONNX, normalisation included, checked against torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fgbg.images import atomic_write_bytes
from fgbg.model import Deployable, load_model


def run_export(model_path: Path, out: Path, check: bool = True) -> dict:
    """Write ONNX (dynamic batch) and, with `check`, compare onnxruntime with torch on random input."""
    loaded = load_model(Path(model_path), torch.device("cpu"))
    net = Deployable(loaded.net).eval()
    size = loaded.input_size
    example = (torch.rand(2, 3, size, size), torch.rand(2, 3, size, size))
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        net,
        example,
        input_names=["bg", "fg_bg"],
        output_names=["mask", "depth", "alpha"],
        dynamic_shapes={"bg": {0: batch}, "fg_bg": {0: batch}},
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
        bg, fg_bg = (torch.rand(3, 3, size, size) for _ in range(2))
        got = session.run(None, {"bg": bg.numpy(), "fg_bg": fg_bg.numpy()})
        with torch.no_grad():
            want = [t.numpy() for t in net(bg, fg_bg)]
        report["max_abs_diff"] = float(max(np.abs(g - w).max() for g, w in zip(got, want, strict=True)))
    return report
