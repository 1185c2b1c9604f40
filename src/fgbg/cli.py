"""`fgbg` command line: one thin command per pipeline stage (each is a DVC stage in dvc.yaml)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, get_args

import typer

from fgbg.config import ALIGN_MODES, ConfigError, Params, Precision, load_params

app = typer.Typer(
    help="Build fg/bg composite datasets (fg_bg, mask, depth) reproducibly. "
    "Each command is one stage of `dvc repro`; knobs live in params.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RAW = Path("data/raw/synthetic")
PREPARED = Path("data/prepared")
COMPOSITES = Path("data/composites")
DEPTH = Path("data/depth")
STATS = Path("data/stats.json")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Params file to read.")]
PartOpt = Annotated[
    str | None,
    typer.Option(
        "--part",
        help="Build only part I/N of the shards (I from 0), e.g. one Slurm array task; 'all' = the whole "
        "stage. Default: from $SLURM_ARRAY_TASK_ID/_COUNT, $JOB_COMPLETION_INDEX or torchrun's "
        "RANK/WORLD_SIZE, else the whole stage, which also merges the parts' shards.",
    ),
]
PartsOpt = Annotated[
    int | None, typer.Option("--parts", min=1, help="Number of parts for $JOB_COMPLETION_INDEX (or $FGBG_PARTS).")
]
JobsOpt = Annotated[int | None, typer.Option("--jobs", "-j", help="Worker processes (default: the param; 0 = cores).")]


def _one_line_errors(fn):
    """Expected failures (bad params, missing inputs, rejected data) → one line on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from fgbg.images import BadImage
        from fgbg.prepare import PrepareFailed

        try:
            return fn(*args, **kwargs)
        except (ConfigError, FileNotFoundError, BadImage, PrepareFailed, ValueError) as e:  # TeacherError: ValueError
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _shard_stage(stage: str, unit: str, build, part: str | None, parts: int | None, out: Path) -> None:
    """A shard stage whole, or the part this process was given (fgbg.parts); the merge reports."""
    from fgbg.parts import resolve_part, run_in_parts

    manifest = run_in_parts(build, resolve_part(part, parts), _log)
    if manifest is not None:
        typer.echo(f"{stage}: {manifest['samples']} {unit} in {len(manifest['shards'])} shards → {out}", err=True)


def _params(path: Path) -> Params:
    return load_params(path)


@app.command()
@_one_line_errors
def synth(params: ParamsOpt = Path("params.yaml"), out: Path = RAW) -> None:
    """Render the embedded raw set: bg scenes with exact depth, RGBA fg sprites (params `synth`)."""
    from fgbg.synth import run_synth

    index = run_synth(_params(params).synth, out)
    typer.echo(f"synth: {len(index['bg'])} bg, {len(index['fg'])} fg → {out}", err=True)


@app.command()
@_one_line_errors
def prepare(params: ParamsOpt = Path("params.yaml"), out: Path = PREPARED) -> None:
    """Validate raw bg/fg folders, normalise sizes, write masks and report.json (params `prepare`).

    Bad files get one line each naming the file and the reason; with prepare.strict any
    rejection fails the stage after the report is written.
    """
    from fgbg.prepare import run_prepare

    run_prepare(_params(params).prepare, out, log=_log)


@app.command()
@_one_line_errors
def compose(
    params: ParamsOpt = Path("params.yaml"),
    prepared: Path = PREPARED,
    out: Path = COMPOSITES,
    jobs: JobsOpt = None,
    part: PartOpt = None,
    parts: PartsOpt = None,
) -> None:
    """Paste every fg (and its mirror) on every bg → fg_bg JPEG + mask PNG tar shards + index.

    Resumable: rerun after a kill and finished shards are verified and kept. Output bytes do not
    depend on --jobs, nor on how many parts built them (README "Past one machine").
    """
    from fgbg.compose import run_compose

    p = _params(params)
    cfg = p.compose if jobs is None else p.compose.model_copy(update={"jobs": jobs})
    _shard_stage("compose", "samples", lambda share: run_compose(cfg, p.split, prepared, out, share, log=_log),
                 part, parts, out)  # fmt: skip


@app.command()
@_one_line_errors
def depth(
    params: ParamsOpt = Path("params.yaml"),
    prepared: Path = PREPARED,
    composites: Path = COMPOSITES,
    out: Path = DEPTH,
    jobs: JobsOpt = None,
    part: PartOpt = None,
    parts: PartsOpt = None,
) -> None:
    """Depth map for every composite (16-bit inverse depth PNG shards keyed like the composites).

    On G GPUs: `torchrun --nproc_per_node G -m fgbg.cli depth` (one part per rank, rank 0 merges).
    """
    from fgbg.depth import run_depth

    p = _params(params)
    cfg = p.depth if jobs is None else p.depth.model_copy(update={"jobs": jobs})
    _shard_stage("depth", "maps", lambda share: run_depth(cfg, prepared, composites, out, share, log=_log),
                 part, parts, out)  # fmt: skip


@app.command("depth-agreement")
@_one_line_errors
def depth_agreement(
    params: ParamsOpt = Path("params.yaml"),
    prepared: Path = PREPARED,
    composites: Path = COMPOSITES,
    samples: Annotated[int, typer.Option(help="Composites to compare.")] = 64,
    out: Path = Path("metrics/depth_agreement.json"),
) -> None:
    """Measure compose-mode vs per-image teacher depth on a sample (AbsRel, δ1 in/outside the mask).

    Uses the teacher in params (depth.teacher) whatever depth.source says, so you can decide
    whether per-image depth is worth its cost before running it on every composite.
    """
    from fgbg.depth import depth_agreement as measure
    from fgbg.images import atomic_write_bytes

    result = measure(_params(params).depth, prepared, composites, samples)
    atomic_write_bytes(out, json.dumps(result, indent=2).encode() + b"\n")
    typer.echo(json.dumps(result, indent=2))


@app.command()
@_one_line_errors
def stats(
    params: ParamsOpt = Path("params.yaml"),
    prepared: Path = PREPARED,
    composites: Path = COMPOSITES,
    depth_dir: Annotated[Path, typer.Option("--depth")] = DEPTH,
    out: Path = STATS,
) -> None:
    """Mean/std per channel of bg, fg_bg, mask, alpha and depth over the train split → stats.json."""
    from fgbg.stats import run_stats

    result = run_stats(_params(params).stats, prepared, composites, depth_dir, out)
    typer.echo(json.dumps({k: result[k] for k in ("samples", "fg_bg", "depth")}), err=True)


MODELS = Path("models")
METRICS = Path("metrics")


@app.command()
@_one_line_errors
def train(
    params: ParamsOpt = Path("params.yaml"),
    prepared: Path = PREPARED,
    composites: Path = COMPOSITES,
    depth_dir: Annotated[Path, typer.Option("--depth")] = DEPTH,
    stats_file: Annotated[Path, typer.Option("--stats")] = STATS,
    out: Path = MODELS,
    resume: Annotated[bool, typer.Option(help="Continue from out/checkpoint.pt exactly where it stopped.")] = False,
) -> None:
    """Train the mask + depth U-Net (params `train`); best weights → models/model.pt, run → MLflow."""
    from fgbg.train import run_train

    p = _params(params)
    result = run_train(
        p.train, p.model_dump(include={"train", "compose", "split", "depth"}), prepared, composites, depth_dir,
        stats_file, out, resume=resume, history_csv=_history_csv(out), log=_log,
    )  # fmt: skip
    typer.echo(f"train: {len(result['history'])} epochs; MLflow run {result['mlflow_run_id']}", err=True)


def _history_csv(out: Path) -> Path:
    """metrics/train_history.csv (dvc.yaml's plot) for the default models/; beside the model for any
    other --out, so an experiment does not overwrite the tracked run's curve."""
    return METRICS / "train_history.csv" if out == MODELS else out / "train_history.csv"


@app.command()
@_one_line_errors
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    model: Path = MODELS / "model.pt",
    prepared: Path = PREPARED,
    composites: Path = COMPOSITES,
    depth_dir: Annotated[Path, typer.Option("--depth")] = DEPTH,
    out: Path = METRICS,
) -> None:
    """Test split (unseen bgs, unseen fgs): IoU, Dice, boundary F, AbsRel, RMSE, δ, SSIM → metrics/."""
    from fgbg.evaluate import run_evaluate

    p = _params(params)
    run_evaluate(p.evaluate, model, prepared, composites, depth_dir, out, p.train.device, p.train.mlflow, log=_log,
                 precision=p.train.precision)  # fmt: skip


@app.command("check-captures")
@_one_line_errors
def check_captures(
    params: ParamsOpt = Path("params.yaml"),
    model: Path = MODELS / "model.pt",
    out: Path = METRICS,
) -> None:
    """Real photos shot like real pairs (nudge, exposure, shadow, light, moving scene, handheld): IoU → metrics/."""
    from fgbg.captures import run_check_captures

    p = _params(params)
    run_check_captures(p.captures, model, out, p.train.device, p.train.mlflow, log=_log, precision=p.train.precision)


def _one_of(choices: tuple[str, ...]):
    """A typer callback: the option checked before anything is read (a usage error naming the choices)."""

    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"one of {', '.join(choices)}, not {value!r}")
        return value

    return check


PRECISION_HELP = "auto: bf16 on a GPU, float32 on the CPU; bf16 on a CPU with bf16 instructions is 1.5x faster."
ALIGN_HELP = "Register the bg onto the fg_bg first: auto (camera moved beyond the trained range), always, never."
ALIGN_ABOVE_HELP = "auto aligns above this camera shift (px at the model's input size); default: the trained range."
ONTO_HELP = (
    "A new background photo: writes <name>_onto.png, the object lifted from fg_bg with the predicted "
    "alpha (edge colour freed of the old scene using the bg shot)."
)
EXACT_HELP = (
    "The pairs are identical outside the object (renders, screenshots, not two camera shots): for a "
    "model trained with train.exact_input, which then compares them exactly."
)
REFINE_HELP = (
    "Bring mask and alpha to the photo's size along its own edges (guided filter); --no-refine: "
    "bilinear upsampling of the network's output."
)
MATCH_TONE_HELP = (
    "Give the bg the fg_bg's exposure, gamma and white balance first (one robust curve per channel; "
    "the subject does not pull it). Off with --exact."
)


@app.command()
@_one_line_errors
def predict(
    bg: Annotated[Path, typer.Argument(help="Background image, or a folder of them.")],
    fg_bg: Annotated[Path, typer.Argument(help="The scene with the object, or a folder (same file names).")],
    model: Path = MODELS / "model.pt",
    out: Path = Path("predictions"),
    device: str = "auto",
    align: Annotated[str, typer.Option(help=ALIGN_HELP, callback=_one_of(ALIGN_MODES))] = "auto",
    align_above_px: Annotated[float | None, typer.Option(help=ALIGN_ABOVE_HELP)] = None,
    onto: Annotated[Path | None, typer.Option(help=ONTO_HELP)] = None,
    exact: Annotated[bool, typer.Option(help=EXACT_HELP)] = False,
    refine: Annotated[bool, typer.Option(help=REFINE_HELP)] = True,
    match_tone: Annotated[bool, typer.Option(help=MATCH_TONE_HELP)] = True,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP, callback=_one_of(get_args(Precision)))] = "auto",
) -> None:
    """Mask, alpha and depth for bg + fg_bg photos of any size (mask, alpha matte, 16-bit depth, colour
    depth, overlay, alignment; the object on a new background with --onto)."""
    from fgbg.predict import run_predict

    written = run_predict(model, bg, fg_bg, out, device, align, align_above_px, onto, exact, refine, match_tone,
                          log=_log, precision=precision)  # fmt: skip
    typer.echo(f"predict: {len(written)} files → {out}", err=True)


@app.command()
@_one_line_errors
def export(
    model: Path = MODELS / "model.pt",
    out: Path = MODELS / "model.onnx",
    check: Annotated[bool, typer.Option(help="Compare onnxruntime's output with torch's.")] = True,
) -> None:
    """Export the model to ONNX: inputs bg, fg_bg on [0, 1] at the network's scale (any batch; H, W
    multiples of 32); outputs mask probability, depth, alpha at that size (full size: `fgbg predict`)."""
    from fgbg.export import run_export

    typer.echo(json.dumps(run_export(model, out, check)), err=True)


@app.command("mlflow-server")
def mlflow_server(
    host: Annotated[str, typer.Option(help="Bind address; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: int = 5000,
    backend: Annotated[str, typer.Option(help="Run store.")] = "sqlite:///mlflow.db",
    artifacts: Annotated[Path, typer.Option(help="Where the server keeps artifacts.")] = Path("mlartifacts"),
    allowed_hosts: Annotated[
        str | None, typer.Option(help="Host names teammates reach it by, comma-separated (MLflow refuses others).")
    ] = None,
) -> None:
    """Serve the MLflow tracking server and UI for the team (SQLite store, artifacts in the project).

    Point training at it with MLFLOW_TRACKING_URI=http://HOST:PORT. Binding another address than
    loopback exposes it: put an authenticating proxy in front first.
    """
    import os

    from fgbg.tracking import quiet_telemetry

    quiet_telemetry()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
           "--artifacts-destination", str(artifacts.resolve()), "--host", host, "--port", str(port), "--workers", "1",
           *(["--allowed-hosts", _with_local_hosts(allowed_hosts)] if allowed_hosts else [])]  # fmt: skip
    os.execv(cmd[0], cmd)


def _with_local_hosts(names: str) -> str:
    """`names` added to MLflow's own default hosts (loopback, private IPs), which --allowed-hosts
    would otherwise replace: training on the server's machine keeps reaching it."""
    try:
        from mlflow.server.security_utils import get_default_allowed_hosts

        local = get_default_allowed_hosts()
    except ImportError:  # another MLflow layout
        local = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"]
    return ",".join([*local, *(n.strip() for n in names.split(",") if n.strip())])


@app.command("check-params")
@_one_line_errors
def check_params(params: ParamsOpt = Path("params.yaml")) -> None:
    """Validate a params file and print it with every default filled in."""
    typer.echo(json.dumps(_params(params).model_dump(), indent=2))


def _log(message: str, file=sys.stderr) -> None:
    typer.echo(message, err=file is sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    app()
