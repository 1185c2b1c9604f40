"""The network and its file: one normalisation, named outputs, model.pt that round-trips and
holds nothing run-specific."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_train_params

from fgbg.config import TrainParams
from fgbg.model import (
    ExactPair,
    ExactPairNorm,
    MaskDepthNet,
    Normaliser,
    Outputs,
    build_model,
    infer,
    load_model,
    save_model,
)


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="train.encoder"):
        build_model(TrainParams(encoder="resnet9000"))


def test_the_net_normalises_its_inputs_with_the_train_statistics(tiny_stats, tmp_path):
    norm = Normaliser.from_stats(tiny_stats)
    torch.manual_seed(0)
    unet = build_model(tiny_train_params(tmp_path))
    net = MaskDepthNet(unet, norm).eval()
    bg, fg_bg = torch.rand(2, 3, 32, 64), torch.rand(2, 3, 32, 64)
    import json

    stats = json.loads(tiny_stats.read_text())

    def standardise(x, part):
        mean = torch.tensor([stats[part]["mean"][c] for c in "rgb"]).view(1, 3, 1, 1)
        std = torch.tensor([stats[part]["std"][c] for c in "rgb"]).view(1, 3, 1, 1)
        return (x - mean) / std

    with torch.no_grad():
        out = infer(net, bg, fg_bg)
        raw = unet(torch.cat([standardise(bg, "bg"), standardise(fg_bg, "fg_bg")], 1))
    assert isinstance(out, Outputs) and out.mask_logits.shape == out.depth.shape == out.alpha.shape == (2, 1, 32, 64)
    torch.testing.assert_close(out.mask_logits, raw[:, :1])
    torch.testing.assert_close(out.depth, raw[:, 1:2])
    torch.testing.assert_close(out.alpha, torch.sigmoid(raw[:, 2:3]))


@pytest.mark.parametrize("input_skip", [False, True])
def test_model_file_round_trips_and_holds_nothing_run_specific(tiny_stats, tmp_path, input_skip):
    params = tiny_train_params(tmp_path / "a-run-specific-folder").model_copy(update={"input_skip": input_skip})
    torch.manual_seed(0)
    net = MaskDepthNet(build_model(params), Normaliser.from_stats(tiny_stats)).eval()
    save_model(tmp_path / "model.pt", net, params, epoch=3, input_size=32)
    loaded = load_model(tmp_path / "model.pt", torch.device("cpu"))
    assert loaded.input_size == 32 and loaded.epoch == 3 and loaded.params.encoder == "resnet18"
    assert loaded.params.input_skip == input_skip
    assert any(k.startswith("head.") for k in loaded.net.unet.state_dict()) == input_skip
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(infer(loaded.net, x, x), infer(net, x, x))
    raw = (tmp_path / "model.pt").read_bytes()
    assert b"a-run-specific-folder" not in raw and b"mlflow" not in raw and b"run_id" not in raw
    # a different tracking store or device: the same model, the same bytes
    other = params.model_copy(update={"device": "auto", "mlflow": params.mlflow.model_copy(update={"experiment": "x"})})
    save_model(tmp_path / "again.pt", net, other, epoch=3, input_size=32)
    assert (tmp_path / "again.pt").read_bytes() == raw


def test_exact_pair_norms_route_each_sample_are_saved_and_default_to_a_capture(tiny_stats, tmp_path):
    """With `exact_input` every BatchNorm is an ExactPairNorm: an exact sample is normalised by the
    exact norms and a capture by the capture norms, also within one mixed batch; no flag means "a
    real capture"; model.pt keeps both; a model without them ignores the flag."""
    params = tiny_train_params(tmp_path, exact_input=True, augment={"clean": 0.3})
    plain_params = tiny_train_params(tmp_path)
    torch.manual_seed(0)
    net = MaskDepthNet(build_model(params), Normaliser.from_stats(tiny_stats)).eval()
    plain = MaskDepthNet(build_model(plain_params), Normaliser.from_stats(tiny_stats)).eval()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert len(net.pair_layers) == n_bn > 0
    for m in net.pair_layers:  # as if trained: the exact pairs' statistics differ
        m.exact.running_mean.add_(0.2)
    bg, fg_bg = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    yes, no = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    mixed = torch.tensor([True, False, False, True])
    with torch.no_grad():
        default, capture, exact = infer(net, bg, fg_bg), infer(net, bg, fg_bg, no), infer(net, bg, fg_bg, yes)
        torch.testing.assert_close(default, capture)
        assert (exact.mask_logits - capture.mask_logits).abs().max() > 1e-3
        both = infer(net, bg, fg_bg, mixed)
        torch.testing.assert_close(both.mask_logits[mixed], exact.mask_logits[mixed])
        torch.testing.assert_close(both.mask_logits[~mixed], capture.mask_logits[~mixed])
        save_model(tmp_path / "model.pt", net, params, epoch=1, input_size=32)
        loaded = load_model(tmp_path / "model.pt", torch.device("cpu"))
        assert loaded.params.exact_input
        torch.testing.assert_close(infer(loaded.net, bg, fg_bg, yes), exact)
        torch.testing.assert_close(infer(plain, bg, fg_bg, yes), infer(plain, bg, fg_bg))


def test_exact_pair_norms_learn_each_kind_s_statistics_from_its_own_samples_only(tiny_stats, tmp_path):
    """In training the exact norms' batch and running statistics come from the exact pairs alone,
    the capture norms' from the rest (a shared statistic would undo the split)."""
    params = tiny_train_params(tmp_path, exact_input=True, augment={"clean": 0.3})
    net = MaskDepthNet(build_model(params), Normaliser.from_stats(tiny_stats)).train()
    first, seen = net.pair_layers[0], []
    first.register_forward_hook(lambda _, args, __: seen.append(args[0]))
    with torch.no_grad():
        infer(net, torch.rand(6, 3, 64, 64), torch.rand(6, 3, 64, 64), torch.tensor([0, 1, 0, 1, 0, 0]).bool())
    x, momentum = seen[0], first.exact.momentum  # the norm's input, exact samples first; running stats were 0
    torch.testing.assert_close(first.exact.running_mean, momentum * x[:2].mean((0, 2, 3)))
    torch.testing.assert_close(first.capture.running_mean, momentum * x[2:].mean((0, 2, 3)))


def test_exact_pair_norms_train_on_a_mixed_batch_with_a_lone_sample_at_one_pixel(tiny_stats, tmp_path):
    """At 32 px the deepest features are 1×1: a lone exact sample there has no batch statistics, so
    its norm uses the running ones instead of failing; the batch trains (finite loss, gradients)."""
    params = tiny_train_params(tmp_path, exact_input=True, augment={"clean": 0.3})
    net = MaskDepthNet(build_model(params), Normaliser.from_stats(tiny_stats)).train()
    bg, fg_bg = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    out = infer(net, bg, fg_bg, torch.tensor([False, True, False, False]))
    out.mask_logits.mean().backward()
    assert torch.isfinite(out.mask_logits).all()
    assert all(p.grad is not None for p in net.pair_layers[0].exact.parameters())


@pytest.mark.parametrize("input_skip", [False, True])
def test_exact_convs_give_exact_pairs_their_own_full_resolution_convolutions(tiny_stats, tmp_path, input_skip):
    """With `exact_convs` the stem, the decoder's last block and the output head are ExactPairs: an
    exact sample goes through the exact copies only (a capture's output and gradients never touch
    them), also within a mixed batch; model.pt keeps both copies."""
    params = tiny_train_params(
        tmp_path, exact_input=True, exact_convs=True, input_skip=input_skip, augment={"clean": 0.3}
    )
    torch.manual_seed(0)
    net = MaskDepthNet(build_model(params), Normaliser.from_stats(tiny_stats)).eval()
    unet = net.unet.unet if input_skip else net.unet
    head = net.unet.head[-1] if input_skip else unet.segmentation_head[0]
    doubled = [m for m in net.pair_layers if type(m) is ExactPair]
    assert all(isinstance(m.exact, torch.nn.Conv2d) for m in doubled)
    assert {id(unet.encoder.conv1), id(unet.decoder.blocks[-1].conv1[0]), id(head)} <= {id(m) for m in doubled}
    bg, fg_bg = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    yes, no, mixed = torch.ones(4).bool(), torch.zeros(4).bool(), torch.tensor([False, True, True, False])
    with torch.no_grad():
        capture_before = infer(net, bg, fg_bg, no)
        unet.encoder.conv1.exact.weight.mul_(1.5)  # as if trained apart
        capture, exact, both = infer(net, bg, fg_bg, no), infer(net, bg, fg_bg, yes), infer(net, bg, fg_bg, mixed)
    torch.testing.assert_close(capture, capture_before)
    assert (exact.mask_logits - capture.mask_logits).abs().max() > 1e-3
    torch.testing.assert_close(both.mask_logits[mixed], exact.mask_logits[mixed])
    torch.testing.assert_close(both.mask_logits[~mixed], capture.mask_logits[~mixed])
    net.train()
    infer(net, bg, fg_bg, no).mask_logits.mean().backward()
    assert all(p.grad is None for m in doubled for p in m.exact.parameters())
    assert all(p.grad is not None for m in doubled for p in m.capture.parameters())
    save_model(tmp_path / "model.pt", net, params, epoch=1, input_size=32)
    loaded = load_model(tmp_path / "model.pt", torch.device("cpu"))
    assert loaded.params.exact_convs
    with torch.no_grad():
        torch.testing.assert_close(infer(loaded.net, bg, fg_bg, yes), infer(net.eval(), bg, fg_bg, yes))


def test_exact_convs_need_the_exact_pair_norms(tmp_path):
    with pytest.raises(ValueError, match="exact_convs.*exact_input"):
        tiny_train_params(tmp_path, exact_convs=True)


def test_a_lone_sample_s_norm_keeps_the_activation_of_a_timm_norm():
    """timm encoders (smp's `tu-*`) use BatchNormAct2d, a norm with its activation inside: the
    running-statistics path for a lone 1×1 sample must apply it too, and leave the norm training."""
    from timm.layers import BatchNormAct2d

    norm = ExactPairNorm(BatchNormAct2d(4, act_layer=torch.nn.ReLU)).train()
    norm.exact_first = 1  # one exact and one capture sample, each alone at 1×1
    out = norm(torch.full((2, 4, 1, 1), -5.0))
    assert torch.equal(out, torch.zeros_like(out))  # ReLU of the normalised -5 (running mean 0, var 1)
    assert norm.exact.training and norm.capture.training


def test_a_model_without_alpha_head_loads_and_gives_the_mask_probability_as_alpha(tiny_stats, tmp_path):
    """model.pt files written before the alpha head (2 outputs, no `alpha_head` key) and the input
    skip (no `input_skip` key) keep working."""
    params = tiny_train_params(tmp_path).model_copy(update={"alpha_head": False, "input_skip": False})
    net = MaskDepthNet(build_model(params), Normaliser.from_stats(tiny_stats)).eval()
    save_model(tmp_path / "model.pt", net, params, epoch=1, input_size=32)
    old = torch.load(tmp_path / "model.pt", weights_only=False)
    del old["train_params"]["alpha_head"], old["train_params"]["input_skip"]
    torch.save(old, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt", torch.device("cpu"))
    assert not loaded.params.alpha_head and not loaded.params.input_skip
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = infer(loaded.net, x, x)
    torch.testing.assert_close(out.alpha, torch.sigmoid(out.mask_logits))


def test_a_model_file_from_another_version_is_refused_by_name(tiny_stats, tmp_path):
    """A train key this version does not know (written by a newer fgbg) is a one-line error naming
    the file and the key, not a pydantic trace."""
    params = tiny_train_params(tmp_path)
    save_model(tmp_path / "model.pt", MaskDepthNet(build_model(params), Normaliser.from_stats(tiny_stats)), params,
               epoch=1, input_size=32)  # fmt: skip
    newer = torch.load(tmp_path / "model.pt", weights_only=False)
    newer["train_params"]["from_the_future"] = 1
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match=r"newer\.pt: its train params .*from_the_future: unknown key"):
        load_model(tmp_path / "newer.pt", torch.device("cpu"))
