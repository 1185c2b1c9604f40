"""params.yaml → typed, validated config: the one place parameters are read.

Every stage takes its section of `Params`; a bad key or value fails here, naming the key,
before any work starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Precision = Literal["auto", "bf16", "float32"]  # how the networks compute: uses_bf16


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthParams(_Section):
    """The embedded raw set: rendered street/river/hill scenes with exact depth, RGBA sprites."""

    seed: int = Field(0, ge=0)  # numpy generators take no negative seed
    n_bg: int = Field(20, ge=1, le=100_000)
    n_fg: int = Field(20, ge=1, le=100_000)
    bg_size: int = Field(192, ge=16, le=4096)
    fg_size: int = Field(128, ge=16, le=4096)


class PrepareParams(_Section):
    """Where the raw photos are and how they are validated and normalised."""

    raw_dir: str = "data/raw/synthetic"  # holds bg/ and fg/, optionally bg_depth/
    image_size: int = Field(192, ge=16, le=4096)
    fg_size: int = Field(96, ge=8, le=4096)
    min_side: int = Field(16, ge=1)
    max_pixels: int = Field(50_000_000, ge=1)
    max_aspect: float = Field(8.0, ge=1.0)
    strict: bool = False
    # fg photos without alpha: object = pixels farther than `threshold` from the border colour,
    # cleaned by morphological open + close with a `kernel`×`kernel` ellipse (seed 004: 5)
    fg_without_alpha: Literal["extract", "reject"] = "extract"
    extract_threshold: float = Field(40.0, gt=0, le=441)
    extract_kernel: int = Field(5, ge=1, le=99)


class SplitParams(_Section):
    """Splits by identity: each bg and each fg lands in one split by a seeded hash of its name."""

    seed: int = Field(0, ge=0)
    train: float = Field(0.8, ge=0.0, le=1.0)
    val: float = Field(0.1, ge=0.0, le=1.0)
    test: float = Field(0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class ComposeParams(_Section):
    """How each fg is pasted on each bg."""

    seed: int = Field(0, ge=0)
    placement: Literal["random", "grid"] = "random"
    positions: int = Field(20, ge=1, le=10_000)
    grid: tuple[int, int] = (5, 4)
    flip: bool = True
    scale_jitter: float = Field(0.0, ge=0.0, lt=1.0)
    jpeg_quality: int = Field(90, ge=1, le=100)
    shard_size: int = Field(5000, ge=1)
    jobs: int = Field(0, ge=0)
    preview_samples: int = Field(8, ge=0, le=64)

    @model_validator(mode="after")
    def _grid_positive(self) -> ComposeParams:
        if min(self.grid) < 1:
            raise ValueError(f"grid needs cols, rows >= 1, got {list(self.grid)}")
        return self

    @property
    def n_positions(self) -> int:
        return self.grid[0] * self.grid[1] if self.placement == "grid" else self.positions


class TeacherParams(_Section):
    """A transformers depth-estimation model, by hub id or local folder."""

    model: str = "depth-anything/Depth-Anything-V2-Small-hf"
    resolution: int = Field(266, ge=14, le=2048)  # model input side (rounded to its patch multiple)
    batch_size: int = Field(64, ge=1)
    device: str = "auto"  # auto = cuda when available, else cpu
    precision: Precision = "auto"  # auto = bf16 on CUDA, float32 on the CPU (uses_bf16)
    workers: int = Field(2, ge=0)  # DataLoader workers decoding composites (per-image mode)


class DepthParams(_Section):
    """Where fg_bg depth comes from and how it is made."""

    source: Literal["provided", "teacher"] = "provided"
    mode: Literal["compose", "per_image"] = "compose"
    teacher: TeacherParams = TeacherParams()
    png_compression: int = Field(1, ge=0, le=9)
    jobs: int = Field(0, ge=0)
    preview_samples: int = Field(8, ge=0, le=64)

    @model_validator(mode="after")
    def _per_image_needs_teacher(self) -> DepthParams:
        if self.mode == "per_image" and self.source != "teacher":
            raise ValueError("mode per_image runs a teacher on every composite: set source: teacher")
        model = self.teacher.model
        if (
            self.source == "teacher"
            and model.startswith(("/", "./", "../", "~"))
            and not Path(model).expanduser().exists()
        ):
            raise ValueError(f"teacher.model: no such folder {model!r}")
        return self


class StatsParams(_Section):
    jobs: int = Field(0, ge=0)


class LossWeights(_Section):
    bce: float = Field(1.0, ge=0)
    dice: float = Field(1.0, ge=0)
    boundary: float = Field(1.0, ge=0)  # mask BCE over the band around the outline (README "Real captures")
    boundary_px: int = Field(2, ge=1, le=16)  # the band's half-width (px at the training size); not a weight
    l1: float = Field(1.0, ge=0)
    ssim: float = Field(1.0, ge=0)
    grad: float = Field(1.0, ge=0)
    log_depth: float = Field(0.2, ge=0)  # L1 of log depth in metres: what AbsRel and δ measure
    alpha_l1: float = Field(1.0, ge=0)  # L1 of the soft alpha matte
    alpha_grad: float = Field(1.0, ge=0)  # L1 of its image gradient: sharp, well-placed edges


class MlflowParams(_Section):
    tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "fgbg"
    registered_model: str | None = "fgbg-mask-depth"  # null: do not register
    log_model: bool = True  # false: skip the MLflow model (model.pt + fgbg's inference code); nothing registered


def _range(default: tuple[float, float], lo: float, hi: float):
    """A (low, high) field whose ends must lie in [lo, hi]; `_RangedSection` checks it."""
    return Field(default, json_schema_extra={"bounds": [lo, hi]})


class _RangedSection(_Section):
    """A section with (low, high) fields: ends inside their bounds and ordered; errors name the field."""

    @model_validator(mode="after")
    def _ranges_valid(self):
        for name, field in type(self).model_fields.items():
            extra = field.json_schema_extra
            if not isinstance(extra, dict) or "bounds" not in extra:
                continue
            (low, high), (lo, hi) = getattr(self, name), extra["bounds"]
            if not (lo <= low <= hi and lo <= high <= hi):
                raise ValueError(f"{name}: both ends must lie in [{lo:g}, {hi:g}], got [{low:g}, {high:g}]")
            if low > high:
                raise ValueError(f"{name}: low {low:g} > high {high:g}")
        return self


class MisalignParams(_Section):
    """bg only: the camera moved between the empty plate and the shot with the subject (tripod scale).
    Each bound is a maximum |value|, drawn uniformly in [-max, max] per sample."""

    p: float = Field(0.3, ge=0.0, le=1.0)
    translate: float = Field(0.01, ge=0.0, le=0.25)  # fraction of the side per axis (0.01 = 1.9 px at 192)
    rotate: float = Field(1.0, ge=0.0, le=45.0)  # degrees
    scale: float = Field(0.01, ge=0.0, lt=0.5)  # |zoom - 1|
    padding: Literal["border", "reflection"] = "reflection"


class PhotometricParams(_Section):
    """Exposure, tone curve, white balance and black level drift; each shot draws its own with its own
    probability (both drift in real captures; the network must ignore their difference)."""

    p_bg: float = Field(0.8, ge=0.0, le=1.0)
    p_fg_bg: float = Field(0.5, ge=0.0, le=1.0)
    gain: float = Field(0.3, ge=0.0, le=3.0)  # exposure factor in [1/(1+gain), 1+gain], log-uniform
    gamma: float = Field(0.17, ge=0.0, le=3.0)  # exponent in [1/(1+gamma), 1+gamma], log-uniform
    white_balance: float = Field(0.09, ge=0.0, le=1.0)  # per-channel factor, same form, geometric mean 1
    offset: float = Field(0.035, ge=0.0, le=0.5)  # black level added, in [-offset, offset]


class BlurParams(_RangedSection):
    """Slight defocus/softness that differs between the shots; each shot is blurred independently."""

    p: float = Field(0.2, ge=0.0, le=1.0)
    sigma: tuple[float, float] = _range((0.3, 0.8), 0.0, 4.0)  # Gaussian σ in px at the training size


class NoiseParams(_RangedSection):
    """Sensor noise, drawn independently for each shot, channel and pixel."""

    p: float = Field(0.4, ge=0.0, le=1.0)
    sigma: tuple[float, float] = _range((0.0, 0.02), 0.0, 0.5)  # std on [0, 1] intensities


class ShadowParams(_RangedSection):
    """fg_bg only: the object's soft shadow on the scene, made from its mask (squashed and sheared
    about the mask's bottom like a shadow on the ground, offset like one on a wall, then blurred).
    Mask and depth stay: a shadow is not the object."""

    p: float = Field(0.3, ge=0.0, le=1.0)
    strength: tuple[float, float] = _range((0.1, 0.3), 0.0, 1.0)  # darkening where the shadow is full
    offset: float = Field(0.05, ge=0.0, le=0.5)  # max |dx|, |dy| as a fraction of the side
    squash: tuple[float, float] = _range((0.3, 1.0), 0.05, 1.0)  # vertical scale about the object's bottom
    shear: float = Field(1.0, ge=0.0, le=5.0)  # max |horizontal px per px of height above the bottom|
    blur: tuple[float, float] = _range((0.005, 0.02), 0.0, 0.1)  # Gaussian σ as a fraction of the side


class ShapesParams(_RangedSection):
    """Extra objects with random outlines (not people, cats or dogs), textured with another scene or
    a colour, pasted into fg_bg and into the mask and depth (standing at the depth where they touch
    the ground, like compose's fgs). Without them the network learns the sprites' silhouettes and,
    once capture perturbations make pixel differences unreliable, draws those instead of what differs.
    They start at `start` of the steps, once the network has learnt to compare the shots: measured,
    the renders' IoU is the same and real tripod pairs lose less (README "Real captures")."""

    p: float = Field(0.8, ge=0.0, le=1.0)
    start: float = Field(0.4, ge=0.0, lt=1.0)  # none before this fraction of the steps (README "Real captures")
    size: tuple[float, float] = _range((0.08, 0.3), 0.05, 1.0)  # diameter as a fraction of the side
    wobble: float = Field(0.25, ge=0.0, le=0.5)  # max amplitude of each outline harmonic (k = 2..5) per radius
    exact: bool = True  # also into the pairs left exact (`clean`); false: those stay exactly as composed


Augmentation = Literal["misalign", "photometric", "blur", "noise", "shadow", "shapes"]
AlignMode = Literal["auto", "always", "never"]  # fgbg predict --align, the served model's align, captures.align
ALIGN_MODES: tuple[str, ...] = get_args(AlignMode)


class AnnealParams(_Section):
    """Fewer perturbed pairs as the learning rate anneals: over the last `fraction` of the training
    steps the probability of each augmentation in `only` falls linearly to `keep` × its value (YOLOX
    closes its mosaic for the last epochs the same way). With the exact-pair norms and tone matching,
    0.3 / 0.3 buys the renders ~0.001 and costs the real photos nothing (docs/real-captures.md), so
    params.yaml turns it on; off here, so an older params file trains as it did."""

    fraction: float = Field(0.0, ge=0.0, le=1.0)  # 0: off
    keep: float = Field(1.0, ge=0.0, le=1.0)  # the probabilities' factor at the last step
    only: list[Augmentation] = Field(default_factory=lambda: list(get_args(Augmentation)))  # the others stay as set


class AugmentParams(_Section):
    """Capture augmentation on the device: train on pairs that differ like real bg / fg_bg shots do
    (README "Real captures"), so camera shift, exposure, noise and shadows are not read as object."""

    enabled: bool = True
    clean: float = Field(0.0, ge=0.0, le=1.0)  # fraction of pairs left exactly as composed (the tripod ideal)
    clean_by: Literal["sample", "batch"] = "sample"  # batch: whole batches left exact (no mixed-batch norms)
    misalign: MisalignParams = MisalignParams()
    photometric: PhotometricParams = PhotometricParams()
    blur: BlurParams = BlurParams()
    noise: NoiseParams = NoiseParams()
    shadow: ShadowParams = ShadowParams()
    shapes: ShapesParams = ShapesParams()
    anneal: AnnealParams = AnnealParams()


class TrainParams(_Section):
    """The mask + depth U-Net and how it is trained."""

    seed: int = Field(0, ge=0)
    encoder: str = "resnet34"
    encoder_weights: str | None = None  # null offline; "imagenet" where downloads work
    decoder_channels: list[int] = Field(default_factory=lambda: [256, 128, 64, 32, 16])
    image_size: int = Field(0, ge=0)  # train/eval at this side (0 = the data's own size)
    epochs: int = Field(3, ge=1)
    full_size_epochs: int = Field(0, ge=0)  # the last N epochs at the data's own size (progressive resizing)
    steps_per_epoch: int = Field(0, ge=0)  # 0 = the whole train split each epoch
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(5, ge=1)  # early stop after this many epochs without a better val loss
    augment_flip: bool = True
    alpha_head: bool = True  # a third output for the soft alpha matte; false: alpha = the mask probability
    input_skip: bool = False  # the output head also sees the full-resolution input (smp's U-Net has no skip there)
    exact_input: bool = False  # every BatchNorm doubled: one for exact pairs (composites), one for real captures
    exact_convs: bool = False  # with exact_input: the full-resolution convolutions (stem, last block, head) doubled too
    augment: AugmentParams = AugmentParams()
    loss: LossWeights = LossWeights()
    workers: int = Field(2, ge=0)
    device: str = "auto"
    precision: Precision = "auto"  # auto = bf16 on CUDA, float32 on the CPU; evaluate and check-captures run as trained
    compile: bool = False
    mlflow: MlflowParams = MlflowParams()

    def size_at(self, epoch: int) -> int:
        """The side epoch `epoch` (1-based) trains and validates at: `image_size`, then the data's
        own (0) for the last `full_size_epochs`, which the saved model then reads at."""
        return 0 if epoch > self.epochs - self.full_size_epochs else self.image_size

    @model_validator(mode="after")
    def _decoder_depth(self) -> TrainParams:
        if len(self.decoder_channels) != 5 or min(self.decoder_channels) < 1:
            raise ValueError("decoder_channels needs 5 positive sizes (one per U-Net stage)")
        if self.full_size_epochs > self.epochs:
            raise ValueError(f"full_size_epochs ({self.full_size_epochs}) is more than epochs ({self.epochs})")
        if self.exact_input and not (self.augment.enabled and 0 < self.augment.clean < 1):
            raise ValueError(
                "train.exact_input needs both kinds of pair to learn from: train.augment on, with 0 < clean < 1"
            )
        if self.exact_convs and not self.exact_input:
            raise ValueError("train.exact_convs doubles layers beside the exact-pair norms: it needs train.exact_input")
        return self


class EvaluateParams(_Section):
    batch_size: int = Field(64, ge=1)
    sheet_samples: int = Field(6, ge=1, le=64)


class CapturesParams(_Section):
    """`fgbg check-captures`: real-photo pairs under real shooting conditions (README "Real captures")."""

    seed: int = Field(0, ge=0)
    per_photo: int = Field(16, ge=1)  # objects per photo (3 photos), each in every condition
    size: int = Field(192, ge=64)  # pair side (px); a multiple of 32
    align: AlignMode = "auto"  # handheld pairs, as `fgbg predict --align`
    match_tone: bool = True  # every pair's bg given fg_bg's tone first, as `fgbg predict --match-tone`

    @model_validator(mode="after")
    def _multiple_of_32(self) -> CapturesParams:
        if self.size % 32:
            raise ValueError(f"size: {self.size} is not a multiple of 32 (the U-Net needs one)")
        return self


class Params(_Section):
    synth: SynthParams = SynthParams()
    prepare: PrepareParams = PrepareParams()
    split: SplitParams = SplitParams()
    compose: ComposeParams = ComposeParams()
    depth: DepthParams = DepthParams()
    stats: StatsParams = StatsParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    captures: CapturesParams = CapturesParams()


def describe_errors(err: ValidationError) -> str:
    """One line naming each bad key and what is wrong with it."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        sub = re.match(r"([a-z_]+(?:\.[a-z_]+)*): (.*)", msg)
        if sub and e["type"] == "value_error":  # a section's check naming its own sub-key
            key, msg = f"{key}.{sub[1]}", sub[2]
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate a params file; raise ConfigError naming the file and the bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:  # a folder, no permission
        raise ConfigError(f"{path}: cannot read the params file ({e.strerror or e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe_errors(e)}") from None


def resolve_jobs(jobs: int) -> int:
    """0 means one worker per usable core."""
    if jobs > 0:
        return jobs
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def uses_bf16(device, precision: Precision = "auto") -> bool:
    """Whether a network runs in bf16 autocast on channels_last tensors on `device` (a torch.device).
    auto: on CUDA only. A CPU with bf16 instructions (avx512_bf16, AMX) trains 1.5× faster in bf16
    (benchmarks/README), but auto keeps float32 there: a CPU without them emulates bf16 slowly, and
    float32 keeps the bytes DVC cached on CPUs before."""
    if precision not in get_args(Precision):  # the served model's model_config is not validated by pydantic
        raise ValueError(f"precision: one of {', '.join(get_args(Precision))}, not {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def resolve_device(device: str):
    """`auto` → cuda when available, else cpu; ValueError for a device this machine lacks."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{device!r} requested but no CUDA device is available")
    return dev
