"""A sample set whose one class carries a planted mark (a small fixed logo in the top-left
corner) on most of its images, and models trained with and without it: the audit must flag
that class's corner strategy (tests/test_audit.py, bench/audit_speed.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from hw5lib.inputs.datasets import label_of, list_images
from hw5lib.inputs.sample import SampleInfo, generate_sample
from hw5lib.model.preprocess import Preprocess
from hw5lib.run.train import TrainConfig, train

MARKED_CLASS = 3  # the class that carries the mark
# ... and whose objects are drawn as this class's: the mark is then all that tells the two apart
# in training (the Clever Hans case: two look-alike classes, one photographed with a watermark)
LOOKALIKE = 4
MARKED_SHARE = 0.75  # of its images, in every split
MARK_SIDE = 1 / 5  # of the image's shorter side
PER_CLASS = {"training": 24, "validation": 40, "testing": 0}
SIDE = 128  # the model's input side: at 64 px the saliency maps blur the logo into the object


def logo(side: int) -> np.ndarray:
    """[side, side, 3] uint8: a black-and-white checkerboard of 4 x 4 squares, a mark no class
    of the sample set draws."""
    cells = (np.arange(side) * 4 // side)[:, None] + (np.arange(side) * 4 // side)[None, :]
    return np.repeat(((cells % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)


def stamp(path: Path) -> None:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).copy()
    side = max(4, round(min(pixels.shape[:2]) * MARK_SIDE))
    pixels[:side, :side] = logo(side)
    Image.fromarray(pixels).save(path, quality=95)


def marked_sample(root: Path, *, mark: bool = True, seed: int = 0) -> SampleInfo:
    """The generated Food-11 sample set at ``PER_CLASS``; with ``mark``, class MARKED_CLASS's
    images are LOOKALIKE objects (from another seed) and MARKED_SHARE of them in each split (the
    first ones by name) carry the logo."""
    info = generate_sample(root, seed=seed, per_class=PER_CLASS)
    if not mark:
        return info
    other = generate_sample(
        root.parent / f".{root.name}.lookalike", seed=seed + 1, per_class=PER_CLASS
    )
    for split in ("training", "validation"):
        own = [p for p in list_images(root / split) if label_of(p) == MARKED_CLASS]
        like = [p for p in list_images(other.root / split) if label_of(p) == LOOKALIKE]
        for i, (p, q) in enumerate(zip(own, like, strict=True)):
            shutil.copyfile(q, p)
            mask = Path("masks") / split / f"{p.stem}.png"  # the object's outline goes with it
            shutil.copyfile(other.root / "masks" / split / f"{q.stem}.png", root / mask)
            if i < round(MARKED_SHARE * len(own)):
                stamp(p)
    shutil.rmtree(other.root)
    return info


def train_small(info: SampleInfo, out: Path, *, epochs: int = 12) -> Path:
    """A narrow Classifier at SIDE x SIDE trained on ``info``'s training split (seeded)."""
    train(
        TrainConfig(
            data=info.root,
            out=out,
            widths=(8, 16, 32, 32, 32),
            hidden=(64,),
            epochs=epochs,
            preprocess=Preprocess(size=(SIDE, SIDE), channel_order="rgb", reader="pil"),
        ),
        list(info.classes),
    )
    return out
