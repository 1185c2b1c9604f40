"""Capture augmentation: bg/fg_bg made to differ like real shots, never the labels; reproducible from
the seed and resumable from its state."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fgbg.augment import CaptureAugment
from fgbg.config import AugmentParams, ConfigError, load_params
from fgbg.data import Batch

OFF = {"misalign": {"p": 0}, "photometric": {"p_bg": 0, "p_fg_bg": 0}, "blur": {"p": 0}, "noise": {"p": 0},
       "shadow": {"p": 0}, "shapes": {"p": 0}}  # fmt: skip


def only(**sections: dict) -> AugmentParams:
    """Every augmentation off but the ones given (with their overrides); shapes from the first step
    unless a `start` is given."""
    sections = {**OFF, **sections}
    return AugmentParams.model_validate({**sections, "shapes": {"start": 0.0, **sections["shapes"]}})


def scene(b: int = 6, h: int = 48, w: int = 64, seed: int = 0) -> Batch:
    """Textured bg; fg_bg = bg with a box object pasted in a different texture; depth in (0, 1]."""
    g = torch.Generator().manual_seed(seed)
    bg = torch.rand(b, 3, h, w, generator=g) * 0.8 + 0.1
    mask = torch.zeros(b, 1, h, w)
    for i in range(b):
        top, left = 8 + 2 * i, 12 + 3 * i
        mask[i, :, top : top + 16, left : left + 10] = 1
    fg_bg = torch.where(mask > 0, torch.rand(b, 3, h, w, generator=g), bg)
    depth = torch.rand(b, 1, h, w, generator=g)
    return Batch(bg, fg_bg, mask, depth, mask * 0.9)


def clone(batch: Batch) -> Batch:
    return Batch(*(None if t is None else t.clone() for t in dataclasses.astuple(batch)))


def same(a: Batch, b: Batch) -> bool:
    """The same images and targets (`exact`, a flag about the pair, is tested on its own)."""
    fields = ("bg", "fg_bg", "mask", "depth", "alpha")
    pairs = ((getattr(a, f), getattr(b, f)) for f in fields)
    return all(x is y is None or torch.equal(x, y) for x, y in pairs)


def centroid(img: torch.Tensor) -> torch.Tensor:
    """Intensity centroid (x, y) of each B×1×H×W image, in px from the image centre."""
    _, _, h, w = img.shape
    ys = torch.arange(h, dtype=img.dtype) + 0.5 - h / 2
    xs = torch.arange(w, dtype=img.dtype) + 0.5 - w / 2
    total = img.sum((1, 2, 3))
    return torch.stack([(img * xs).sum((1, 2, 3)) / total, (img * ys.view(-1, 1)).sum((1, 2, 3)) / total], 1)


def test_misalignment_moves_only_bg_by_the_drawn_affine():
    """A blob off-centre moves to zoom·R(angle)·p + shift (px, y down), on a non-square image."""
    b, h, w = 5, 72, 96
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij")
    start = torch.tensor([10.0, -6.0])
    blob = torch.exp(-((xs - start[0]) ** 2 + (ys - start[1]) ** 2) / (2 * 3.0**2))
    batch = scene(b, h, w)
    batch = dataclasses.replace(batch, bg=blob.expand(b, 3, h, w).clone())
    before = clone(batch)
    aug = CaptureAugment(only(misalign={"p": 1, "translate": 0.05, "rotate": 10, "scale": 0.1}), seed=3)
    d = aug.draw(b)
    out = aug.apply(batch, d)

    a = torch.deg2rad(d.angle)
    rot = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], 1)
    want = d.zoom.view(-1, 1) * (rot @ start) + d.shift * torch.tensor([w, h])
    assert (want - start).norm(dim=1).mean() > 1  # the draws really move it
    assert torch.allclose(centroid(out.bg[:, :1]), want, atol=0.02)
    assert torch.equal(out.fg_bg, before.fg_bg) and torch.equal(out.mask, before.mask)
    assert torch.equal(out.depth, before.depth) and same(batch, before)


def test_a_known_translation_moves_the_pattern_by_that_many_pixels():
    b, h, w = 2, 64, 64
    batch = scene(b, h, w)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij")
    blob = torch.exp(-(xs**2 + ys**2) / (2 * 4.0**2))
    batch = dataclasses.replace(batch, bg=blob.expand(b, 3, h, w).clone())
    aug = CaptureAugment(only(misalign={"p": 1}), seed=0)
    d = dataclasses.replace(
        aug.draw(b), shift=torch.tensor([[1.5, -0.75], [0.25, 2.0]]) / w, angle=torch.zeros(b), zoom=torch.ones(b)
    )
    moved = centroid(aug.apply(batch, d).bg[:, :1])
    assert torch.allclose(moved, torch.tensor([[1.5, -0.75], [0.25, 2.0]]), atol=0.02)


def test_shadow_darkens_the_scene_outside_the_mask_only():
    batch = scene(8)
    before = clone(batch)
    out = CaptureAugment(only(shadow={"p": 1, "strength": [0.2, 0.5]}), seed=1)(batch)
    inside = batch.mask.expand_as(batch.fg_bg) > 0
    assert torch.equal(out.fg_bg[inside], before.fg_bg[inside])  # never on the object
    assert (out.fg_bg <= before.fg_bg).all()  # never brightens
    darker = (before.fg_bg - out.fg_bg).amax((1, 2, 3))
    assert (darker > 0.02).sum() >= 6  # and really casts shadows (some fall behind the object)
    assert torch.equal(out.mask, before.mask) and torch.equal(out.depth, before.depth)
    assert torch.equal(out.bg, before.bg) and same(batch, before)


def test_shadow_lands_where_its_offset_puts_it():
    """Offset 16 px right, no squash/shear/blur: the box's copy to the right is darkened by `strength`."""
    b, h, w = 1, 64, 64
    fg_bg = torch.full((b, 3, h, w), 0.8)
    mask = torch.zeros(b, 1, h, w)
    mask[..., 20:28, 10:18] = 1
    batch = Batch(fg_bg.clone(), fg_bg, mask, torch.zeros_like(mask))
    aug = CaptureAugment(only(shadow={"p": 1}), seed=0)
    d = dataclasses.replace(
        aug.draw(b), shadow_offset=torch.tensor([[0.25, 0.0]]), shadow_strength=torch.tensor([0.5]),
        shadow_squash=torch.ones(b), shadow_shear=torch.zeros(b), shadow_blur=torch.zeros(b),
    )  # fmt: skip
    ratio = aug.apply(batch, d).fg_bg / fg_bg
    want = torch.ones_like(ratio)
    want[..., 20:28, 26:34] = 0.5
    assert torch.allclose(ratio, want, atol=1e-4)


def test_photometric_with_p0_is_the_identity_and_with_p1_changes_each_shot():
    batch = scene()
    assert same(CaptureAugment(only(photometric={"p_bg": 0, "p_fg_bg": 0}), seed=0)(batch), batch)
    out = CaptureAugment(only(photometric={"p_bg": 1, "p_fg_bg": 0}), seed=0)(batch)
    assert not torch.equal(out.bg, batch.bg) and torch.equal(out.fg_bg, batch.fg_bg)
    out = CaptureAugment(only(photometric={"p_bg": 1, "p_fg_bg": 1}), seed=0)(batch)
    assert (out.bg - batch.bg).abs().amax((1, 2, 3)).min() > 1e-3
    assert (out.fg_bg - batch.fg_bg).abs().amax((1, 2, 3)).min() > 1e-3


def test_noise_differs_between_the_shots():
    """The same noise on both would cancel in their difference: the network must see it differ."""
    batch = scene()
    out = CaptureAugment(only(noise={"p": 1, "sigma": [0.02, 0.02]}), seed=0)(batch)
    outside = (batch.mask == 0).expand_as(batch.bg)
    n_bg, n_fg = (out.bg - batch.bg)[outside], (out.fg_bg - batch.fg_bg)[outside]
    assert 0.015 < n_bg.std() < 0.025 and 0.015 < n_fg.std() < 0.025
    assert (n_bg - n_fg).abs().mean() > 0.01


def test_blur_keeps_flat_images_flat_and_softens_edges():
    b, h, w = 2, 32, 32
    flat = torch.full((b, 3, h, w), 0.6)
    step = torch.zeros(b, 3, h, w)
    step[..., 16:] = 1
    mask, depth = torch.zeros(b, 1, h, w), torch.zeros(b, 1, h, w)
    aug = CaptureAugment(only(blur={"p": 1, "sigma": [0.8, 0.8]}), seed=0)
    out = aug(Batch(flat, step, mask, depth))
    assert torch.allclose(out.bg, flat, atol=1e-6)  # no darkened borders
    assert 0.05 < out.fg_bg[..., 15].min() and out.fg_bg[..., 16].max() < 0.95


def test_a_pasted_shape_enters_fg_bg_mask_alpha_and_depth_together_and_never_bg():
    b, h, w = 8, 64, 80
    batch = scene(b, h, w)
    far = torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(1)) * 0.5  # seeded: not the global RNG
    batch = Batch(batch.bg, batch.fg_bg, batch.mask, far, batch.alpha)  # room for max()
    before = clone(batch)
    aug = CaptureAugment(only(shapes={"p": 1, "size": [0.3, 0.5]}), seed=2)
    out = aug.apply(batch, aug.draw(b))
    assert torch.equal(out.bg, before.bg) and same(batch, before)
    new = (out.mask > 0) & (before.mask == 0)  # the shape's pixels outside the old object
    assert (out.mask >= before.mask).all() and new.flatten(1).sum(1).min() > 50  # every sample got one
    changed = (out.fg_bg != before.fg_bg).any(1, keepdim=True)
    assert changed[new].float().mean() > 0.99  # the shape is in fg_bg where the mask says
    edge = changed & (out.mask == 0)  # soft edge: alpha < 0.5 is not object; at most a 1-px rim
    assert edge.sum() < 0.25 * new.sum()
    # alpha: the shape over the object (a_s + (1 − a_s)·a): 1 inside the shape, a soft rim, the object's
    # own alpha where the shape is absent — so alpha ≥ 0.5 is exactly the new mask
    inner = -torch.nn.functional.max_pool2d(-new.float(), 3, 1, 1) > 0
    assert (out.alpha >= before.alpha).all() and (out.alpha[inner] == 1).all() and inner.sum() > 0.5 * new.sum()
    assert torch.equal((out.alpha >= 0.5).float(), out.mask)
    rim = (out.alpha > before.alpha) & (out.alpha < 1)
    assert rim.any() and torch.equal(changed[rim], torch.ones_like(changed[rim]))
    moved = out.depth != before.depth
    assert not (moved & (out.mask == 0)).any() and (out.depth >= before.depth).all()
    for k in range(b):  # one depth under the shape where it was farther: its ground-contact depth
        inside = new[k, 0] & moved[k, 0]
        assert inside.any() and torch.unique(out.depth[k, 0][inside]).numel() == 1


def test_a_shape_stands_on_the_ground_by_the_datasets_own_rule_even_over_the_sky():
    """The shape's depth is what fgbg.depth gives a composited object (the middle of its lowest
    row; over the sky, the first ground below), never the sky's 0: checked against that numpy code
    on scenes whose upper part is sky, and on one with no ground at all."""
    import numpy as np

    from fgbg.augment import _ground_depth
    from fgbg.depth import contact_point, ground_depth

    gen = torch.Generator().manual_seed(5)
    b, h, w = 24, 48, 40
    depth = torch.rand(b, 1, h, w, generator=gen) * 0.5 + 0.01
    horizon = torch.randint(0, h, (b,), generator=gen)
    depth[(torch.arange(h).view(1, 1, h, 1) < horizon.view(b, 1, 1, 1)).expand(b, 1, h, w)] = (
        0  # sky above each horizon
    )
    depth[0] = 0  # no ground at all
    shape = torch.rand(b, 1, h, w, generator=gen) < 0.03
    shape[:, :, 5:9, 10:14] = True  # high up: often over the sky
    got = _ground_depth(depth, shape.float())
    for k in range(b):
        u16 = np.rint(depth[k, 0].numpy() * 65535).astype(np.uint16)
        cy, cx = contact_point(shape[k, 0].numpy())
        assert round(got[k].item() * 65535) == ground_depth(u16, cy, cx), k
    over_sky = [k for k in range(1, b) if depth[k, 0, 8, 12] == 0]
    assert over_sky and all(got[k] > 0 for k in over_sky) and got[0] == 0


def test_unpicked_samples_are_bit_identical():
    batch = scene(16)
    aug = CaptureAugment(only(photometric={"p_bg": 0.5, "p_fg_bg": 0}), seed=0)
    d = aug.draw(16)
    out = aug.apply(batch, d)
    picked = d.photometric[0]
    assert 0 < picked.sum() < 16
    assert torch.equal(out.bg[~picked], batch.bg[~picked])
    assert not torch.equal(out.bg[picked], batch.bg[picked])


def test_clean_fraction_leaves_whole_pairs_untouched_and_keeps_the_other_draws():
    """`clean` pairs are bit-identical to the input in both shots; the rest get exactly the
    perturbation they get with `clean: 0` (the clean coins are drawn last; noise is left out: its
    field is drawn for the picked samples together)."""
    everything = {"misalign": {"p": 1}, "photometric": {"p_bg": 1, "p_fg_bg": 1}, "blur": {"p": 1},
                  "noise": {"p": 0}, "shadow": {"p": 1}}  # fmt: skip
    batch = scene(32)
    out = CaptureAugment(only(**everything, clean=0.5), seed=4)(batch)
    full = CaptureAugment(only(**everything), seed=4)(batch)
    kept = torch.tensor([torch.equal(out.bg[i], batch.bg[i]) for i in range(32)])
    assert 6 < kept.sum() < 26
    assert torch.equal(out.fg_bg[kept], batch.fg_bg[kept])
    assert torch.equal(out.bg[~kept], full.bg[~kept]) and torch.equal(out.fg_bg[~kept], full.fg_bg[~kept])
    assert not torch.equal(full.bg[kept], batch.bg[kept])


def test_exact_flags_the_clean_pairs_and_nothing_else():
    """`exact` (what the model's exact-pair norms read) is True for the `clean` pairs, left as composed:
    with every augmentation at p 1, exactly the pairs whose shots are bit-identical to the input; a
    pasted shape does not change it (an object, not a capture difference); without `clean` no pair
    is flagged exact, and an unaugmented batch is all exact."""
    everything = {"misalign": {"p": 1}, "photometric": {"p_bg": 1, "p_fg_bg": 1}, "blur": {"p": 1},
                  "noise": {"p": 1}, "shadow": {"p": 1}}  # fmt: skip
    batch = scene(32)
    out = CaptureAugment(only(**everything, clean=0.5), seed=4)(batch)
    assert out.exact.dtype == torch.bool and 6 < out.exact.sum() < 26
    for i in range(32):
        untouched = torch.equal(out.bg[i], batch.bg[i]) and torch.equal(out.fg_bg[i], batch.fg_bg[i])
        assert untouched == bool(out.exact[i]), i
    shaped = CaptureAugment(only(**everything, clean=0.5, shapes={"p": 1}), seed=4)(batch)
    assert torch.equal(shaped.exact, out.exact) and not torch.equal(shaped.mask, batch.mask)
    assert not CaptureAugment(only(**everything), seed=4)(batch).exact.any()
    assert CaptureAugment(AugmentParams(enabled=False), seed=4)(batch).exactness().all()


def test_clean_by_batch_leaves_whole_batches_exact_at_the_clean_rate_and_keeps_the_draws():
    """`clean_by: batch`: every batch is all exact (bit-identical shots) or all perturbed, about a
    `clean` fraction of them exact, so the model's exact-pair norms never see a mixed batch; a
    perturbed batch gets exactly the perturbation `clean: 0` gives it (the coins are drawn as per
    sample, then the first one decides), and the next batches' draws do not move."""
    everything = {"misalign": {"p": 1}, "photometric": {"p_bg": 1, "p_fg_bg": 1}, "blur": {"p": 1},
                  "noise": {"p": 0}, "shadow": {"p": 1}}  # fmt: skip
    batch = scene(8)
    by_batch = CaptureAugment(only(**everything, clean=0.5, clean_by="batch"), seed=4)
    by_sample = CaptureAugment(only(**everything, clean=0.5), seed=4)
    full = CaptureAugment(only(**everything), seed=4)
    kinds = []
    for _ in range(40):
        out, per_sample, perturbed = by_batch(batch), by_sample(batch), full(batch)
        assert out.exact.all() or not out.exact.any()
        kinds.append(bool(out.exact[0]))
        if out.exact[0]:
            assert same(out, batch)
        else:
            assert same(out, perturbed)
        assert out.exact[0] == per_sample.exact[0]  # the same coin, the same stream
    assert 8 < sum(kinds) < 32


def test_shapes_exact_false_leaves_the_exact_pairs_exactly_as_composed():
    """`shapes.exact: false`: the pairs flagged exact are bit-identical to the input (targets
    included), as the test split's renders are; the perturbed pairs get the very shapes and
    perturbations they get with shapes on every pair (the coins are masked, not redrawn)."""
    everything = {"misalign": {"p": 1}, "photometric": {"p_bg": 1, "p_fg_bg": 1}, "blur": {"p": 1},
                  "noise": {"p": 0}, "shadow": {"p": 1}}  # fmt: skip
    batch = scene(32)
    apart = CaptureAugment(only(**everything, clean=0.5, shapes={"p": 1, "exact": False}), seed=4)(batch)
    shared = CaptureAugment(only(**everything, clean=0.5, shapes={"p": 1}), seed=4)(batch)
    e = apart.exact
    assert torch.equal(e, shared.exact) and 6 < e.sum() < 26
    for field in ("bg", "fg_bg", "mask", "depth", "alpha"):
        assert torch.equal(getattr(apart, field)[e], getattr(batch, field)[e]), field
        assert torch.equal(getattr(apart, field)[~e], getattr(shared, field)[~e]), field
    assert not torch.equal(shared.mask[e], batch.mask[e])  # by default the exact pairs get shapes too


def test_anneal_lowers_every_probability_over_the_last_steps_only():
    """Before the anneal window the batches are the ones without it; over the window the share of
    picked samples falls to `keep` × p; the draws' stream stays aligned (same parameters)."""
    base = {"misalign": {"p": 0.8}, "photometric": {"p_bg": 0.8, "p_fg_bg": 0.8}, "blur": {"p": 0.8},
            "noise": {"p": 0.8}, "shadow": {"p": 0.8}, "shapes": {"p": 0.8}}  # fmt: skip
    plain = CaptureAugment(only(**base), seed=5)
    annealed = CaptureAugment(only(**base, anneal={"fraction": 0.25, "keep": 0.0}), seed=5)
    assert [annealed.strength(t) for t in (0.0, 0.75, 0.875, 1.0)] == [1.0, 1.0, 0.5, 0.0]
    batch = scene(8)
    assert same(annealed(batch, progress=0.5), plain(batch, progress=0.5))
    early, late = plain.draw(4000), annealed.draw(4000, 0.9)
    for field in ("misalign", "photometric", "blur", "noise", "shadow", "shapes"):
        share = getattr(late, field).float().mean() / getattr(early, field).float().mean()
        assert share == pytest.approx(0.4, abs=0.05), field
        assert not (getattr(late, field) & ~getattr(early, field)).any()  # the same coins, a lower bar
    assert torch.equal(late.shift, early.shift) and torch.equal(late.gain, early.gain)
    assert not any(getattr(annealed.draw(64, 1.0), f).any() for f in ("misalign", "photometric", "shapes"))
    shapes_only = CaptureAugment(only(**base, anneal={"fraction": 0.25, "keep": 0.0, "only": ["shapes"]}), seed=5)
    d = shapes_only.draw(64, 1.0)
    assert not d.shapes.any() and d.misalign.float().mean() > 0.6  # the others keep their probability


def test_shapes_start_late_and_leave_every_other_draw_as_it_was():
    """`shapes.start`: no shapes before that fraction of the steps, then the very samples a run
    without it picks; the capture perturbations and later batches' streams do not move."""
    base = {"misalign": {"p": 0.5}, "shapes": {"p": 0.8}}
    plain = CaptureAugment(only(**base), seed=3)
    late = CaptureAugment(only(**{**base, "shapes": {"p": 0.8, "start": 0.4}}), seed=3)
    before, before_plain = late.draw(256, 0.39), plain.draw(256, 0.39)
    assert not before.shapes.any() and before_plain.shapes.float().mean() > 0.7
    assert torch.equal(before.misalign, before_plain.misalign) and torch.equal(before.shift, before_plain.shift)
    after, after_plain = late.draw(256, 0.4), plain.draw(256, 0.4)
    assert torch.equal(after.shapes, after_plain.shapes) and torch.equal(after.shape_size, after_plain.shape_size)


def test_same_seed_same_batch_other_seed_or_rank_differs():
    everything = only(
        misalign={"p": 1}, photometric={"p_bg": 1, "p_fg_bg": 1}, blur={"p": 1}, noise={"p": 1}, shadow={"p": 1}
    )
    batch = scene()
    first = CaptureAugment(everything, seed=7)(batch)
    assert same(CaptureAugment(everything, seed=7)(batch), first)
    assert not torch.equal(CaptureAugment(everything, seed=8)(batch).bg, first.bg)
    assert not torch.equal(CaptureAugment(everything, seed=7, rank=1)(batch).bg, first.bg)


def test_state_resumes_the_next_batch_exactly():
    params, batch = AugmentParams(), scene(16)
    aug = CaptureAugment(params, seed=0)
    aug(batch)
    state = aug.get_state()
    want = aug(batch)
    resumed = CaptureAugment(params, seed=123)
    resumed.set_state(state)
    assert same(resumed(batch), want)
    assert not same(aug(batch), want)  # the stream moves on


def test_disabled_is_the_identity():
    batch = scene()
    params = AugmentParams.model_validate({"enabled": False, "shadow": {"p": 1}, "noise": {"p": 1}})
    assert same(CaptureAugment(params, seed=0)(batch), batch)


@pytest.mark.parametrize("section", ["misalign", "photometric", "blur", "noise", "shadow", "all"])
def test_mask_depth_and_inputs_are_never_modified(section):
    on = {"misalign": {"p": 1}, "photometric": {"p_bg": 1, "p_fg_bg": 1}, "blur": {"p": 1}, "noise": {"p": 1},
          "shadow": {"p": 1}}  # fmt: skip
    params = only(**on) if section == "all" else only(**{section: on[section]})
    batch = scene()
    before = clone(batch)
    out = CaptureAugment(params, seed=0)(batch)
    assert torch.equal(out.mask, before.mask) and torch.equal(out.depth, before.depth)
    assert same(batch, before)  # nothing in place
    assert not (torch.equal(out.bg, before.bg) and torch.equal(out.fg_bg, before.fg_bg))
    for t in (out.bg, out.fg_bg):
        assert t.min() >= 0 and t.max() <= 1 and math.isfinite(float(t.sum()))


@pytest.mark.parametrize(
    "text, key",
    [
        ("noise:\n  p: 1.5\n", "train.augment.noise.p"),
        ("noise:\n  sigma: [-0.01, 0.02]\n", "train.augment.noise.sigma: both ends must lie in"),
        ("blur:\n  sigma: [0.8, 0.3]\n", "train.augment.blur.sigma: low 0.8 > high 0.3"),
        ("shadow:\n  strength: [0.1, 1.5]\n", "train.augment.shadow.strength"),
        ("shadow:\n  squash: [0, 1]\n", "train.augment.shadow.squash"),
        ("misalign:\n  translate: -0.01\n", "train.augment.misalign.translate"),
        ("misalign:\n  padding: wrap\n", "train.augment.misalign.padding"),
        ("shapes:\n  start: 1.0\n", "train.augment.shapes.start"),
        ("photometric:\n  p: 0.5\n", "train.augment.photometric.p: unknown key"),
    ],
)
def test_bad_augment_params_name_the_key(tmp_path, text, key):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  augment:\n" + "".join(f"    {line}\n" for line in text.splitlines()))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value) and key in str(err.value)
