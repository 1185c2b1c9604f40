"""The alpha matte on real photos: bg | fg_bg | predicted alpha | the object lifted onto a new background.

    python benchmarks/onto_demo.py --model models/model.pt --prepared data/prepared --out docs/alpha-onto.jpg

Pairs are tripod shots (fgbg.capture_pairs: camera nudge, exposure drift, noise, shadow) of the real
photos shipped in scikit-learn / matplotlib with the test split's fgs pasted in (unseen in
training); each goes through `fgbg predict --onto` itself (run_predict), onto another shipped photo.
Prints each pair's alpha SAD / MSE against the alpha the object was pasted with, at the pair's size.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fgbg.capture_pairs import capture_pairs, real_photos
from fgbg.config import SplitParams
from fgbg.images import contact_sheet, decode
from fgbg.predict import run_predict
from fgbg.prepared import PreparedSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--out", type=Path, default=Path("docs/alpha-onto.jpg"))
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--size", type=int, default=192)
    args = ap.parse_args()

    ps = PreparedSet(args.prepared, SplitParams())
    objects = [fg for fg, split in zip(ps.fg, ps.fg_split, strict=True) if split == "test"]
    photos = real_photos()
    scenes, (new_name, new_bg) = photos[:2], photos[2]
    per_photo = -(-args.pairs // len(scenes))
    pairs = list(capture_pairs(scenes, per_photo=per_photo, size=args.size, seed=7, objects=objects,
                               conditions=("tripod",)))[: args.pairs]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for sub in ("bg", "fg_bg", "out"):
            (tmp / sub).mkdir()
        Image.fromarray(new_bg).save(tmp / f"{new_name}.png")
        for pair in pairs:
            Image.fromarray(pair.bg).save(tmp / "bg" / f"{pair.name}.png")
            Image.fromarray(pair.fg_bg).save(tmp / "fg_bg" / f"{pair.name}.png")
        run_predict(args.model, tmp / "bg", tmp / "fg_bg", tmp / "out", "cpu", onto=tmp / f"{new_name}.png",
                    log=lambda *a: None)  # fmt: skip
        for pair in pairs:
            alpha = decode((tmp / "out" / f"{pair.name}_alpha.png").read_bytes())
            onto = decode((tmp / "out" / f"{pair.name}_onto.png").read_bytes())
            diff = alpha.astype(np.float64) / 255 - pair.alpha
            print(f"{pair.name}: alpha SAD {np.abs(diff).sum() / 1000:.3f}, MSE {np.square(diff).mean():.4f}")
            rows.append([pair.bg, pair.fg_bg, alpha, onto])
    sheet = contact_sheet(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"{args.out}: {len(rows)} rows of bg | fg_bg (tripod shot) | predicted alpha | lifted onto {new_name}")


if __name__ == "__main__":
    main()
