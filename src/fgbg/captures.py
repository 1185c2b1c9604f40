"""`fgbg check-captures`: the model on real photos shot the way people shoot them (README "Real captures").

Pairs come from fgbg.capture_pairs (photos shipped inside scikit-learn and matplotlib, objects
unlike the training sprites, perturbations independent of the training augmentation). Every
pair goes through `fgbg predict`'s own path (predict_pair; align_bg for the handheld pairs), so
the figures are what a user gets:

- clean, shift, photometric, shadow, tripod, light, motion: as shot (no alignment), the bg's tone
  matched to fg_bg's as `fgbg predict` does by default (fgbg.tone; `captures.match_tone`);
- handheld: `fgbg predict`'s default `--align auto` (registered when beyond the trained range);
- handheld_unaligned: the same pairs without alignment (what --align saves);
- clean_exact, for a model trained with `train.exact_input` only: the clean pair predicted as
  `fgbg predict --exact` does (every other check is predicted as a real capture, the default).

Writes captures.json (mean IoU and alpha SAD per condition, each condition's IoU gap to clean,
paired over the same composites; `worst_tripod_gap` over the tripod conditions: shift,
photometric, shadow, tripod, with "light" and "motion" reported beside them),
captures_samples.csv and captures_sheet.png (the worst pair per condition).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from fgbg.capture_pairs import CONDITIONS, CapturePair, capture_pairs, real_photos
from fgbg.config import CapturesParams, MlflowParams, Precision, resolve_device
from fgbg.images import contact_sheet
from fgbg.model import LoadedModel, load_model
from fgbg.predict import AlignReport, align_bg, predict_batch, trained_tolerance_px
from fgbg.tracking import record_results

TRIPOD = ("shift", "photometric", "shadow", "tripod")
CHECKS = (*CONDITIONS, "handheld_unaligned", "clean_exact")
SAMPLE_FIELDS = ("name", "check", "iou", "alpha_sad", "alpha_mse", "aligned", "shift_px", "warning", "tone_matched")


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two {0,255} masks; 1.0 when both are empty."""
    p, t = pred > 127, truth > 127
    union = np.count_nonzero(p | t)
    return 1.0 if union == 0 else np.count_nonzero(p & t) / union


def check_object(
    loaded: LoadedModel, pairs: list[CapturePair], align: str, tolerance_px: float, match_tone: bool = True
) -> list[tuple]:
    """(check, pair, predicted mask, record) for every condition of one composite, predicted in
    one batch; the handheld pair twice (aligned as `fgbg predict` does, and as shot); the clean
    pair told exact too when the model reads that. `match_tone` as `fgbg predict --match-tone`."""
    runs = []
    for pair in pairs:
        modes = [(pair.condition, "never")]
        if pair.condition == "handheld":
            modes = [("handheld", align), ("handheld_unaligned", "never")]
        for check, mode in modes:
            quiet = lambda _: None  # noqa: E731 (the warning is kept in the record)
            bg, report = align_bg(
                pair.bg, pair.fg_bg, mode, tolerance_px, loaded.input_size, pair.name, quiet, match_tone
            )
            runs.append((check, pair, bg, report))
    predicted = predict_batch(loaded, [bg for _, _, bg, _ in runs], [pair.fg_bg for _, pair, _, _ in runs])
    if loaded.params.exact_input:  # as `fgbg predict --exact`: no alignment, no tone matching
        clean = [(check, pair, pair.bg, AlignReport()) for check, pair, _, _ in runs if check == "clean"]
        runs += [("clean_exact", *run[1:]) for run in clean]
        predicted += predict_batch(loaded, [bg for _, _, bg, _ in clean], [p.fg_bg for _, p, _, _ in clean], exact=True)
    results = []
    for (check, pair, _, report), (mask, _, alpha) in zip(runs, predicted, strict=True):
        error = alpha / 255.0 - pair.alpha  # against the matte the object was pasted with
        record = {"name": pair.name, "check": check, "iou": mask_iou(mask, pair.mask),
                  "alpha_sad": float(np.abs(error).sum() / 1000), "alpha_mse": float(np.square(error).mean()),
                  "aligned": report.aligned, "shift_px": report.shift_px, "warning": report.warning,
                  "tone_matched": report.tone_matched}  # fmt: skip
        results.append((check, pair, mask, record))
    return results


def summarise(rows: list[dict]) -> dict:
    """Mean IoU per check, and each condition's gap to clean on the same composites."""
    by = {c: {r["name"]: r["iou"] for r in rows if r["check"] == c} for c in CHECKS}
    result: dict = {"objects": len(by["clean"])}
    for check in CHECKS:
        if by[check]:
            result[f"iou_{check}"] = float(np.mean(list(by[check].values())))
            result[f"alpha_sad_{check}"] = float(np.mean([r["alpha_sad"] for r in rows if r["check"] == check]))
    for check in (c for c in CHECKS if c not in ("clean", "clean_exact")):  # every other shot vs clean
        paired = [by["clean"][n] - iou for n, iou in by[check].items() if n in by["clean"]]
        if paired:
            result[f"gap_{check}"] = float(np.mean(paired))
            sem = np.std(paired, ddof=1) / np.sqrt(len(paired)) if len(paired) > 1 else 0.0
            result[f"gap_{check}_sem"] = float(sem)
    tripod_gaps = [result[f"gap_{c}"] for c in TRIPOD if f"gap_{c}" in result]
    if tripod_gaps:
        result["worst_tripod_gap"] = max(tripod_gaps)
    handheld = [r for r in rows if r["check"] == "handheld"]
    if handheld:
        result["handheld_aligned"] = sum(r["aligned"] for r in handheld)
        result["handheld_align_failed"] = sum(bool(r["warning"]) for r in handheld)
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}


def run_check_captures(
    params: CapturesParams, model_path: Path, out_dir: Path, device: str = "auto",
    mlflow: MlflowParams | None = None, log=print, precision: Precision = "auto",
) -> dict:  # fmt: skip
    """Check the model on the real-photo capture pairs; write metrics and the worst-case sheet;
    log them into the model's MLflow run (prefix `captures_`) when it is in `mlflow`'s store."""
    out_dir = Path(out_dir)
    loaded = load_model(Path(model_path), resolve_device(device), precision)
    tolerance = trained_tolerance_px(loaded)
    rows, worst = [], {}
    pairs = capture_pairs(real_photos(), per_photo=params.per_photo, size=params.size, seed=params.seed)
    for _, same_object in itertools.groupby(pairs, key=lambda pair: pair.name):
        for check, pair, pred, record in check_object(
            loaded, list(same_object), params.align, tolerance, params.match_tone
        ):
            rows.append(record)
            if check not in worst or record["iou"] < worst[check][0]:
                worst[check] = (record["iou"], pair, pred)
    result = summarise(rows)
    result["align_tolerance_px"] = round(tolerance, 3)
    sheet = worst_sheet([worst[c] for c in CHECKS if c in worst])
    record_results(out_dir, "captures", result, rows, SAMPLE_FIELDS, sheet, mlflow, Path(model_path))
    log(json.dumps(result))
    return result


def worst_sheet(worst: list[tuple[float, CapturePair, np.ndarray]]) -> np.ndarray:
    """One row per check (its worst pair): bg, fg_bg, true mask, predicted mask, errors
    (red: marked but not object, e.g. a shadow or camera motion; blue: object missed)."""
    rows = []
    for _, pair, pred in worst:
        errors = pair.fg_bg // 3
        p, t = pred > 127, pair.mask > 127
        errors[p & ~t] = (255, 40, 40)
        errors[t & ~p] = (40, 80, 255)
        errors[p & t] = (230, 230, 230)
        rows.append([pair.bg, pair.fg_bg, pair.mask, pred, errors])
    return contact_sheet(rows)
