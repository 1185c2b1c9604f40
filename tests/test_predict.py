"""fgbg predict: photos of any size in, mask / depth / overlay at the photo's size out."""

from __future__ import annotations

import numpy as np
from PIL import Image

from fgbg.predict import network_size, run_predict


def test_predict_returns_outputs_at_the_input_photo_size(trained, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "bg").mkdir()
    (tmp_path / "fg_bg").mkdir()
    for name, (h, w) in (("a.png", (70, 100)), ("b.jpg", (45, 45))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "bg" / name)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "fg_bg" / name)
    written = run_predict(trained.model, tmp_path / "bg", tmp_path / "fg_bg", tmp_path / "out", "cpu")
    assert len(written) == 8
    mask = np.asarray(Image.open(tmp_path / "out" / "a_mask.png"))
    depth = np.asarray(Image.open(tmp_path / "out" / "a_depth.png"))
    assert mask.shape == (70, 100) and set(np.unique(mask)) <= {0, 255}
    assert depth.shape == (70, 100) and depth.dtype == np.uint16
    assert network_size(480, 640, 192) == (192, 256)  # aspect kept, sides multiples of 32
    assert np.asarray(Image.open(tmp_path / "out" / "b_overlay.png")).shape == (45, 45, 3)
