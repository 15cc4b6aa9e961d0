"""A Food-11-layout folder of real-photo composites, and the full-size HW3 Classifier trained on
it the way a student's HW3 script reads images (cv2, BGR): the report's timed subject.

    .venv/bin/python bench/realfood.py DIR [--epochs 6]

Each class is one of scikit-image's colour photos (an object crop), pasted at a random place,
scale and flip onto a crop of one of its texture photos (the background), saved as a 512x384
JPEG like Food-11's. Writes DIR/food (training/, validation/) and DIR/classifier.pth (a whole
state_dict with its preprocessing recorded). Seeded: the same DIR contents on every machine.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# one photo per class: what the class "is"
OBJECTS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "logo",
    "cat",
    "camera",
)
# what they lie on: shared by every class, so the background says nothing of the label
BACKGROUNDS = ("grass", "gravel", "brick", "coins", "moon", "text", "page")
PER_CLASS = {"training": 40, "validation": 24}
SIZE = (512, 384)  # Food-11's usual photo size


def _rgb(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def composite(label: int, rng: np.random.Generator) -> Image.Image:
    """One photo of class ``label``: an object crop on a textured background, as real food
    photos have a plate and a table around the food."""
    bg = _rgb(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    w, h = bg.size
    side = int(min(w, h) * rng.uniform(0.5, 1.0))
    left, top = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
    canvas = bg.crop((left, top, left + side, top + side)).resize(SIZE)
    tint = rng.uniform(0.6, 1.2, size=3)
    canvas = Image.fromarray(np.clip(np.asarray(canvas) * tint, 0, 255).astype(np.uint8))
    obj = _rgb(OBJECTS[label])
    ow, oh = obj.size
    crop = int(min(ow, oh) * rng.uniform(0.5, 0.9))
    ox, oy = rng.integers(0, ow - crop + 1), rng.integers(0, oh - crop + 1)
    piece = obj.crop((ox, oy, ox + crop, oy + crop))
    scale = int(SIZE[1] * rng.uniform(0.45, 0.8))
    piece = piece.resize((scale, scale))
    if rng.random() < 0.5:
        piece = piece.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    px, py = rng.integers(0, SIZE[0] - scale + 1), rng.integers(0, SIZE[1] - scale + 1)
    canvas.paste(piece, (int(px), int(py)))
    return canvas


def write_food(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, per_class in PER_CLASS.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for label in range(len(OBJECTS)):
            for n in range(per_class):
                buf = io.BytesIO()
                composite(label, rng).save(buf, "JPEG", quality=90)
                (root / split / f"{label}_{n}.jpg").write_bytes(buf.getvalue())
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    food = write_food(args.dir / "food")
    from hw5lib.model.preprocess import Preprocess
    from hw5lib.run.train import TrainConfig, train

    cfg = TrainConfig(
        data=food,
        out=args.dir / "classifier.pth",
        epochs=args.epochs,
        preprocess=Preprocess(channel_order="bgr", reader="cv2"),
    )
    print(train(cfg))


if __name__ == "__main__":
    main()
