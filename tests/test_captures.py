"""fgbg check-captures: the real-photo capture check, as users would run it."""

from __future__ import annotations

import csv
import json

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from fgbg.captures import CHECKS, run_check_captures, summarise
from fgbg.config import CapturesParams, TrainParams
from fgbg.model import LoadedModel, Outputs


class Differencing(torch.nn.Module):
    """A stand-in model that knows nothing but pixel differencing: the object is wherever the two
    shots differ. Exact on clean pairs, fooled by every camera motion: what the check must expose."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the net a device

    def forward(self, bg, fg_bg):
        diff = (fg_bg - bg).abs().amax(1, keepdim=True)
        logits = (diff - 0.08) * 200
        return Outputs(logits, torch.zeros_like(diff), torch.sigmoid(logits))


def differencing_model(input_size: int = 128) -> LoadedModel:
    params = TrainParams(augment={"misalign": {"translate": 0.01}})
    return LoadedModel(Differencing().eval(), params, input_size, 0)


def test_check_writes_iou_per_condition_csv_sheet_and_mlflow(trained, tmp_path):
    result = run_check_captures(CapturesParams(per_photo=1, size=64), trained.model, tmp_path, "cpu",
                                trained.params.mlflow, log=lambda _: None)  # fmt: skip
    saved = json.loads((tmp_path / "captures.json").read_text())
    assert saved == result and result["objects"] == 3  # china, flower, grace_hopper
    checks = [c for c in CHECKS if c != "clean_exact"]  # a model without train.exact_input
    assert "iou_clean_exact" not in saved
    for check in checks:
        assert 0.0 <= saved[f"iou_{check}"] <= 1.0
    with open(tmp_path / "captures_samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(checks)
    for check in checks:  # the JSON means are the CSV's, per check
        ious = [float(r["iou"]) for r in rows if r["check"] == check]
        assert saved[f"iou_{check}"] == pytest.approx(np.mean(ious), abs=1e-5)
        sads = [float(r["alpha_sad"]) for r in rows if r["check"] == check]
        assert saved[f"alpha_sad_{check}"] == pytest.approx(np.mean(sads), abs=1e-5) and min(sads) >= 0
    assert {r["aligned"] for r in rows if r["check"] == "handheld_unaligned"} == {"False"}
    sheet = np.asarray(Image.open(tmp_path / "captures_sheet.png"))
    assert sheet.shape == (len(checks) * 66 - 2, 5 * 66 - 2, 3)  # the worst pair of every check
    client = mlflow.MlflowClient(trained.params.mlflow.tracking_uri)
    assert client.get_run(trained.run_id).data.metrics["captures_iou_clean"] == pytest.approx(saved["iou_clean"])
    assert "captures" in {a.path for a in client.list_artifacts(trained.run_id)}


def test_differencing_model_is_exact_when_clean_and_rescued_by_alignment_when_handheld(tmp_path, monkeypatch):
    """The check measures what it claims: a pure differencing model is near perfect on clean real
    pairs, collapses on handheld ones as shot, and `--align auto` brings it back."""
    import fgbg.captures as captures

    monkeypatch.setattr(captures, "load_model", lambda path, device, precision="auto": differencing_model())
    r = run_check_captures(CapturesParams(per_photo=2, size=128), tmp_path / "model.pt", tmp_path, "cpu",
                           log=lambda _: None)  # fmt: skip
    assert r["iou_clean"] > 0.9
    # its alpha is its (hard) mask: on a clean 128² pair the error is the object's soft rim, a few px of it
    assert r["alpha_sad_clean"] < 0.2 * r["alpha_sad_handheld_unaligned"]
    assert r["iou_handheld_unaligned"] < 0.5  # every edge of the moved scene lights up
    assert r["handheld_aligned"] == 6 and r["handheld_align_failed"] == 0
    assert r["iou_handheld"] > r["iou_handheld_unaligned"] + 0.15  # (its mild exposure change remains)
    assert r["gap_shift"] > 0.2  # a 1.5 px nudge already fools plain differencing
    assert r["gap_shadow"] > 0.05  # and so does the shadow: the check sees both
    assert r["gap_motion"] > 0.01  # and leaves or water that moved on their own (≤ 1–4 px, in part of the frame)


def test_tone_matching_undoes_an_exposure_change_and_leaves_every_other_pair_as_shot(tmp_path, monkeypatch):
    """`captures.match_tone` (default, as `fgbg predict`): a differencing model sees a drifted
    exposure as object unless the bg takes the fg_bg's tone first; pairs without one are untouched."""
    import fgbg.captures as captures

    monkeypatch.setattr(captures, "load_model", lambda path, device, precision="auto": differencing_model())
    r = {
        match: run_check_captures(
            CapturesParams(per_photo=2, size=128, match_tone=match),
            tmp_path / "model.pt",
            tmp_path / str(match),
            "cpu",
            log=lambda _: None,
        )  # fmt: skip
        for match in (True, False)
    }
    assert r[False]["gap_photometric"] > 0.4 and r[True]["gap_photometric"] < 0.5 * r[False]["gap_photometric"]
    assert r[True]["gap_handheld"] < 0.5 * r[False]["gap_handheld"]  # the handheld shots drift in exposure too
    for same in ("iou_clean", "iou_shift", "iou_shadow", "iou_motion"):
        assert r[True][same] == r[False][same]


class ExactOnly(Differencing):
    """Differences the shots when told the pair is exact, marks nothing when told it is a capture."""

    def forward(self, bg, fg_bg, exact=None):
        out = super().forward(bg, fg_bg)
        told = torch.zeros(bg.shape[0], dtype=torch.bool) if exact is None else exact
        logits = torch.where(told.view(-1, 1, 1, 1), out.mask_logits, torch.full_like(out.mask_logits, -10.0))
        return Outputs(logits, out.depth, torch.sigmoid(logits))


def test_an_exact_input_model_is_told_capture_except_in_clean_exact(tmp_path, monkeypatch):
    """Every check is predicted as a real capture (predict's default); only `clean_exact` tells the
    model the clean pair is exact, as `fgbg predict --exact` would."""
    import fgbg.captures as captures

    params = TrainParams(exact_input=True, augment={"clean": 0.5})
    monkeypatch.setattr(
        captures, "load_model", lambda path, device, precision="auto": LoadedModel(ExactOnly().eval(), params, 128, 0)
    )
    r = run_check_captures(CapturesParams(per_photo=1, size=128), tmp_path / "model.pt", tmp_path, "cpu",
                           log=lambda _: None)  # fmt: skip
    assert r["iou_clean_exact"] > 0.9
    assert max(r[f"iou_{c}"] for c in CHECKS if c != "clean_exact") == 0.0


def test_gaps_are_paired_over_the_same_composites():
    rows = [
        {"name": "a", "check": "clean", "iou": 0.9, "alpha_sad": 0.2, "aligned": False, "warning": ""},
        {"name": "b", "check": "clean", "iou": 0.5, "alpha_sad": 0.2, "aligned": False, "warning": ""},
        {"name": "a", "check": "shift", "iou": 0.8, "alpha_sad": 0.2, "aligned": False, "warning": ""},
        {"name": "b", "check": "shift", "iou": 0.5, "alpha_sad": 0.2, "aligned": False, "warning": ""},
        {"name": "a", "check": "tripod", "iou": 0.6, "alpha_sad": 0.2, "aligned": False, "warning": ""},
        {"name": "a", "check": "handheld", "iou": 0.7, "alpha_sad": 0.2, "aligned": True, "warning": ""},
        {"name": "b", "check": "handheld", "iou": 0.1, "alpha_sad": 0.2, "aligned": False, "warning": "few matches"},
    ]
    s = summarise(rows)
    assert s["objects"] == 2 and s["iou_clean"] == pytest.approx(0.7)
    assert s["gap_shift"] == pytest.approx(0.05) and s["gap_shift_sem"] == pytest.approx(0.05)
    assert s["gap_tripod"] == pytest.approx(0.3)  # only "a" has a tripod pair: compared with a's clean
    assert s["worst_tripod_gap"] == pytest.approx(0.3)
    assert s["handheld_aligned"] == 1 and s["handheld_align_failed"] == 1


def test_captures_params_reject_sizes_the_unet_cannot_take():
    with pytest.raises(ValueError, match="multiple of 32"):
        CapturesParams(size=100)
