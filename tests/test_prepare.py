"""prepare: every kind of bad raw file gets one line naming it; everything else is processed."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import quiet
from PIL import Image

from fgbg.config import PrepareParams
from fgbg.convention import metric_to_inverse_u16
from fgbg.images import extract_object_alpha, read_image
from fgbg.prepare import PrepareFailed, prepare_bg, run_prepare


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def photo(w=80, h=60, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(w * h)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def sprite(w=40, h=50, alpha_value=255) -> Image.Image:
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = (200, 80, 30)
    rgba[10:40, 8:30, 3] = alpha_value
    return Image.fromarray(rgba, "RGBA")


def on_plain(colour, noise: float = 0.0, seed: int = 0) -> Image.Image:
    """A made-up product photo: a two-tone object (with a hole-prone light patch) on a plain colour."""
    rng = np.random.default_rng(seed)
    img = np.full((80, 70, 3), colour, np.float64)
    yy, xx = np.mgrid[0:80, 0:70]
    body = ((yy - 45) / 25) ** 2 + ((xx - 35) / 18) ** 2 <= 1
    img[body] = (40, 90, 160)
    img[body & (np.abs(yy - 45) < 4) & (np.abs(xx - 35) < 4)] = colour  # same colour as the bg
    img += rng.normal(0, noise, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), body


def frame(w=40, h=40) -> Image.Image:
    """Opaque only in a 2-px ring at the edge: a border, not an object."""
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = 90
    rgba[:2, :, 3] = rgba[-2:, :, 3] = rgba[:, :2, 3] = rgba[:, -2:, 3] = 255
    return Image.fromarray(rgba, "RGBA")


def bomb_png(w=30000, h=30000) -> bytes:
    """A valid PNG header declaring a huge image (the pixel data never needs to exist)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# name -> (folder, bytes, expected: None = accepted, else a fragment of the reason)
def corpus() -> dict[str, tuple[str, bytes, str | None]]:
    good_jpeg = jpeg_bytes(photo())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    indices = np.zeros((50, 40), np.uint8)
    indices[10:40, 8:30] = 1
    palette = Image.fromarray(indices, "P")
    palette.putpalette([0, 0, 0, 200, 80, 30] + [0] * 762)
    palette_bytes = png_bytes(palette, transparency=0)  # index 0 is transparent
    gray16 = Image.fromarray((np.arange(80 * 60).reshape(60, 80) * 13 % 65535).astype(np.uint16))
    return {
        "bg/good.jpg": ("bg", good_jpeg, None),
        "bg/truncated.jpg": ("bg", good_jpeg[: len(good_jpeg) // 2], "truncated"),
        "bg/truncated.png": ("bg", png_bytes(photo())[:300], "truncated"),
        "bg/empty.jpg": ("bg", b"", "empty file"),
        "bg/notes.jpg": ("bg", b"shopping list: milk, eggs\n", "not an image"),
        "bg/page.png": ("bg", b"<!doctype html><html><body>404</body></html>", "not an image"),
        "bg/tiny.png": ("bg", png_bytes(photo(1, 1)), "too small"),
        "bg/bomb.png": ("bg", bomb_png(), "too large"),
        "bg/strip.png": ("bg", png_bytes(photo(400, 20)), "aspect ratio"),
        "bg/readme.txt": ("bg", b"not a picture", "extension"),
        "bg/gray.jpg": ("bg", jpeg_bytes(photo(mode="L")), None),
        "bg/cmyk.jpg": ("bg", jpeg_bytes(photo(mode="CMYK")), None),
        "bg/deep.png": ("bg", png_bytes(gray16), None),
        "bg/rotated.jpg": ("bg", jpeg_bytes(photo(), exif=exif.tobytes()), None),
        "fg/Cat.png": ("fg", png_bytes(sprite()), None),
        "fg/cat.png": ("fg", png_bytes(sprite()), "letter case"),  # sorted after Cat.png
        "fg/palette.png": ("fg", palette_bytes, None),
        "fg/no_alpha.png": ("fg", png_bytes(photo()), "no plain background"),
        "fg/no_alpha.jpg": ("fg", good_jpeg, "no plain background"),
        "fg/on_white.jpg": ("fg", jpeg_bytes(on_plain((255, 255, 255))[0]), None),
        "fg/blank.jpg": ("fg", jpeg_bytes(Image.new("RGB", (60, 60), (250, 250, 250))), "no object"),
        "fg/invisible.png": ("fg", png_bytes(sprite(alpha_value=0)), "fully transparent"),
        "fg/frame.png": ("fg", png_bytes(frame()), "only along the image border"),
        "fg/huge.png": ("fg", png_bytes(sprite(900, 700)), None),  # larger than any bg: scaled to fg_size
        "fg/faint.png": ("fg", png_bytes(sprite(alpha_value=60)), "fully transparent"),
    }


def write_corpus(raw: Path) -> Path:
    for rel, (_, data, _) in corpus().items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(data)
    return raw


@pytest.fixture
def bad_raw(tmp_path) -> Path:
    return write_corpus(tmp_path / "raw")


@pytest.fixture(scope="module")
def corpus_report(tmp_path_factory) -> tuple[Path, dict]:
    """The whole corpus through prepare once; each test below checks one file's fate."""
    tmp = tmp_path_factory.mktemp("corpus")
    raw = write_corpus(tmp / "raw")
    report = run_prepare(PrepareParams(raw_dir=str(raw), image_size=32, fg_size=24), tmp / "p", log=quiet)
    return raw, report


@pytest.mark.parametrize("rel", list(corpus()))
def test_each_raw_file_is_processed_or_rejected_with_its_reason(corpus_report, rel):
    raw, report = corpus_report
    expected = corpus()[rel][2]
    rejected = {Path(r["file"]).relative_to(raw).as_posix(): r["reason"] for r in report["rejected"]}
    accepted = {f"{k}/{e['source']}" for k in ("bg", "fg") for e in report[k]}
    if expected is None:
        assert rel in accepted and rel not in rejected
    else:
        assert rel not in accepted and expected in rejected[rel], rejected.get(rel)
        assert "\n" not in rejected[rel]  # one line


def test_every_accepted_file_is_written_in_the_project_format(corpus_report):
    raw, report = corpus_report
    assert report["counts"]["bg"] + report["counts"]["fg"] + report["counts"]["rejected"] == len(corpus())
    prepared = Path(report["params"]["raw_dir"]).parent / "p"
    for kind, channels, side in (("bg", 3, 32), ("fg", 4, 24)):
        for e in report[kind]:
            img = read_image(prepared / kind / f"{e['id']}.png")
            assert img.shape[2] == channels and img.dtype == np.uint8 and max(img.shape[:2]) == side


def test_converted_files_are_noted(corpus_report):
    _, report = corpus_report
    notes = {e["source"]: " ".join(e["notes"]) for e in report["bg"] + report["fg"]}
    assert "CMYK" in notes["cmyk.jpg"] and "from L" in notes["gray.jpg"]
    assert "16" in notes["deep.png"] and "EXIF" in notes["rotated.jpg"] and "from P" in notes["palette.png"]
    assert notes["good.jpg"] == ""


def test_exif_rotation_is_applied(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:20] = (255, 0, 0)  # top half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    path.write_bytes(jpeg_bytes(Image.fromarray(arr), exif=exif.tobytes()))
    rgb, _, notes = prepare_bg(path, PrepareParams(image_size=40), None)
    assert notes == ["rotated upright (EXIF orientation 6)"]
    # viewed upright (rotated 90° clockwise) the red half is on the right
    assert rgb[:, 30:, 0].mean() > 200 and rgb[:, :10, 0].mean() < 50


@pytest.mark.parametrize("size", [48, 96])  # shrunk (area) and enlarged (bilinear)
def test_a_supplied_depth_map_is_resized_without_blending_sky_into_the_ground(size):
    """A wall (20 m) under the sky (0): after the resize every pixel is the wall's value or sky,
    never a made-up depth between them along the skyline."""
    from fgbg.convention import metric_to_inverse_u16
    from fgbg.prepare import resize_depth_cover_crop

    wall = int(metric_to_inverse_u16(np.array([[20.0]]))[0, 0])
    depth = np.zeros((64, 80), np.uint16)
    depth[27:] = wall  # the skyline between two rows of the output
    out = resize_depth_cover_crop(depth, size)
    assert out.shape == (size, size) and set(np.unique(out).tolist()) == {0, wall}
    assert abs((out > 0).mean() - 37 / 64) < 1.5 / size  # the sky keeps its share of the frame


def test_bg_depth_of_the_wrong_size_rejects_that_bg(tiny_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    victim = sorted((raw / "bg_depth").iterdir())[0]
    victim.write_bytes(png_bytes(Image.fromarray(np.zeros((10, 12), np.uint16))))
    report = run_prepare(PrepareParams(raw_dir=str(raw), image_size=64, fg_size=32), tmp_path / "p", log=quiet)
    assert [Path(r["file"]).name for r in report["rejected"]] == [victim.name]
    assert "12x10" in report["rejected"][0]["reason"]
    assert len(report["bg"]) == len(list((raw / "bg").iterdir())) - 1


def test_strict_mode_fails_after_writing_the_report(bad_raw, tmp_path):
    with pytest.raises(PrepareFailed, match="rejected"):
        run_prepare(PrepareParams(raw_dir=str(bad_raw), strict=True), tmp_path / "p", log=quiet)
    assert json.loads((tmp_path / "p" / "report.json").read_text())["rejected"]


def run_cli(*args, cwd):
    cmd = [sys.executable, "-m", "fgbg.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_prints_one_line_per_bad_file_and_no_traceback(bad_raw, tmp_path):
    (tmp_path / "params.yaml").write_text(f"prepare:\n  raw_dir: {bad_raw}\n  image_size: 32\n  fg_size: 24\n")
    res = run_cli("prepare", "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("rejected ")]
    bad = [rel for rel, (_, _, why) in corpus().items() if why]
    assert len(lines) == len(bad)
    for rel in bad:
        assert sum(str(bad_raw / rel) in ln for ln in lines) == 1, rel

    (tmp_path / "params.yaml").write_text(f"prepare:\n  raw_dir: {bad_raw}\n  strict: true\n")
    res = run_cli("prepare", "--out", "out", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
    "colour, noise", [((255, 255, 255), 0.0), ((30, 160, 60), 0.0), ((250, 250, 245), 12.0), ((200, 40, 40), 8.0)]
)
def test_fg_without_alpha_is_cut_from_its_plain_background(colour, noise):
    img, body = on_plain(colour, noise)
    alpha = extract_object_alpha(np.asarray(img), threshold=40, kernel=5)
    mask = alpha >= 128
    iou = (mask & body).sum() / (mask | body).sum()
    assert iou > 0.93, iou
    assert mask[45, 35]  # the bg-coloured patch inside the object is a hole, filled
    assert ((alpha > 0) & (alpha < 255)).any()  # soft edge


def test_a_cut_out_fgs_soft_edge_takes_the_objects_colour_not_the_studios():
    """A blue object cut from white: the blurred alpha reaches into white pixels; pasted on black,
    that rim must be a fainter blue, not a grey ring of studio white."""
    from fgbg.images import object_colour_at_soft_edge

    img, _ = on_plain((255, 255, 255))
    rgb = np.asarray(img)
    alpha = extract_object_alpha(rgb, threshold=40, kernel=5)
    rim = (alpha > 0) & (alpha < 128)
    assert rim.sum() > 20 and (rgb[rim] == 255).all(axis=1).mean() > 0.9  # the precondition: studio white
    fixed = object_colour_at_soft_edge(rgb, alpha)
    assert (fixed[rim] == (40, 90, 160)).all()  # the object's colour, faded by its alpha when pasted
    assert (fixed[~rim] == rgb[~rim]).all()


def test_fg_without_alpha_becomes_rgba_in_prepare_or_is_rejected_on_request(tmp_path):
    raw = tmp_path / "raw"
    (raw / "bg").mkdir(parents=True)
    (raw / "fg").mkdir()
    (raw / "bg" / "b.jpg").write_bytes(jpeg_bytes(photo()))
    (raw / "fg" / "dog.jpg").write_bytes(jpeg_bytes(on_plain((255, 255, 255), 5.0)[0]))
    report = run_prepare(PrepareParams(raw_dir=str(raw), image_size=32, fg_size=24), tmp_path / "p", log=quiet)
    assert "cut from its plain background" in report["fg"][0]["notes"][0]
    rgba = read_image(tmp_path / "p" / "fg" / "fg0000.png")
    assert rgba.shape[2] == 4 and max(rgba.shape[:2]) == 24 and (rgba[..., 3] == 255).mean() > 0.5
    with pytest.raises(PrepareFailed, match="no usable fg"):
        run_prepare(PrepareParams(raw_dir=str(raw), fg_without_alpha="reject"), tmp_path / "q", log=quiet)


def test_odd_directory_entries_are_named_and_skipped(tmp_path):
    raw = tmp_path / "raw"
    (raw / "bg").mkdir(parents=True)
    (raw / "fg").mkdir()
    (raw / "bg" / "ok.jpg").write_bytes(jpeg_bytes(photo()))
    (raw / "fg" / "ok.png").write_bytes(png_bytes(sprite()))
    os.symlink("loop.png", raw / "bg" / "loop.png")  # a link to itself
    (raw / "bg" / "folder.png").mkdir()
    bad_name = os.path.join(os.fsencode(raw / "fg"), b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    with open(bad_name, "wb") as f:
        f.write(png_bytes(sprite()))
    lines = []
    report = run_prepare(PrepareParams(raw_dir=str(raw), image_size=32, fg_size=24), tmp_path / "p",
                         log=lambda msg, **k: lines.append(msg))  # fmt: skip
    reasons = {Path(r["file"]).name: r["reason"] for r in report["rejected"]}
    assert "link loop" in reasons["loop.png"] and "not a regular file" in reasons["folder.png"]
    assert "not valid UTF-8" in reasons["caf\\xe9.png"]
    assert report["counts"]["bg"] == 1 and report["counts"]["fg"] == 1
    json.dumps(report).encode("utf-8")  # the report itself stays valid UTF-8 JSON
    assert sum(ln.startswith("rejected ") for ln in lines) == 3


@pytest.mark.parametrize(
    "depth, reason",
    [
        (np.full((60, 80), np.nan), "NaN or infinite"),
        (np.where(np.eye(60, 80) > 0, np.inf, 5.0), "NaN or infinite"),
        (np.full((30, 40), 5.0), "40x30, image is 80x60"),
        (np.full((60, 80, 2), 5.0), "2-D array of metres"),
    ],
)
def test_bad_float_depth_maps_reject_their_bg(tmp_path, depth, reason):
    raw = tmp_path / "raw"
    for sub in ("bg", "fg", "bg_depth"):
        (raw / sub).mkdir(parents=True)
    (raw / "bg" / "good.jpg").write_bytes(jpeg_bytes(photo()))
    (raw / "bg" / "bad.jpg").write_bytes(jpeg_bytes(photo()))
    np.save(raw / "bg_depth" / "good.npy", np.full((60, 80), 7.0))
    np.save(raw / "bg_depth" / "bad.npy", depth)
    (raw / "fg" / "ok.png").write_bytes(png_bytes(sprite()))
    report = run_prepare(PrepareParams(raw_dir=str(raw), image_size=32, fg_size=24), tmp_path / "p", log=quiet)
    assert [Path(r["file"]).name for r in report["rejected"]] == ["bad.jpg"]
    assert reason in report["rejected"][0]["reason"] and "bad.npy" in report["rejected"][0]["reason"]
    good = read_image(tmp_path / "p" / "bg_depth" / "bg0000.png")
    assert good.dtype == np.uint16 and (good == metric_to_inverse_u16(np.array([7.0]))[0]).all()
