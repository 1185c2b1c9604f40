"""The training data path: shard samples joined with their bg on the device, resized sky-aware."""

from __future__ import annotations

import pytest
import torch

from fgbg.data import ShardSamples, bg_table, make_loader, resize_depth, to_device
from fgbg.prepared import PreparedSet, parse_key


def test_depth_is_resized_over_pixels_that_have_depth():
    depth = torch.tensor([[[[0.0, 0.4, 0.0, 0.0], [0.4, 0.4, 0.2, 0.0]] * 2]]).view(1, 1, 4, 4)
    small = resize_depth(depth, 2)  # 2×2 blocks: 3 of 4 with depth → their mean; 1 of 4 → sky
    assert small[0, 0, 0, 0].item() == pytest.approx(0.4) and small[0, 0, 0, 1].item() == 0.0


def test_each_sample_is_joined_with_its_own_bg(tiny_prepared, tiny_composites, tiny_depth):
    dev = torch.device("cpu")
    samples = ShardSamples(tiny_composites, tiny_depth, "train", shuffle=False)
    raw = next(iter(make_loader(samples, 5, 0, dev)))
    batch = to_device(raw, bg_table(tiny_prepared, dev), dev)
    ps = PreparedSet(tiny_prepared)
    for i, key in enumerate(raw[-1]):
        want = torch.from_numpy(ps.bg[ps.bg_ids.index(parse_key(key).bg)]).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(batch.bg[i], want)
    assert batch.mask.unique().tolist() in ([0.0, 1.0], [0.0]) and 0 <= batch.depth.min() <= batch.depth.max() <= 1
