"""A synthetic, seeded sample dataset: the bundled default input, the test data, and the yardstick.

Every image holds one filled object on a cluttered background. The object's shape and hue are
the only things that depend on the class; background, clutter, size, position and lighting are
drawn independently of it, so a classifier can only succeed by looking at the object. Each image
comes with a ground-truth object mask, which lets the report measure how much saliency or
Grad-CAM mass falls on the object.

Three layouts share one renderer:

- ``food11``: Food-11 folders ``training/``, ``validation/`` (``<label>_<n>.jpg``) and
  ``testing/`` (``<id>.jpg``, no label), 11 classes, RGB, sides of 96..192 pixels.
- ``expression``: a FER2013-style ``fer2013.csv`` (``emotion,pixels,Usage``), 7 classes,
  grayscale 48x48.
- ``catdog``: ImageFolder ``train/<class>/`` and ``val/<class>/``, 224x224 RGB, plus ``cat.jpg``,
  ``dog.jpg`` and ``both.jpg`` (one object of each class side by side).

Masks live beside the data under ``masks/`` (8-bit L PNG, 255 = object), never inside a split
folder. Each image has its own random stream seeded by ``(seed, mode, split, label, n)``, so an
image does not change when the counts do, and the whole tree is byte-identical for one seed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from hw5lib.inputs.sample_render import ModeSpec, class_names, mode_spec, render, render_one
from hw5lib.report.outputs import json_bytes

logger = logging.getLogger(__name__)

GENERATOR = "hw5lib.sample"  # the sample sets it wrote say so: a name, not a module path
GENERATOR_VERSION = 1
JPEG_QUALITY = 90
_FER_CSV = "fer2013.csv"
_NAMED_SPLIT_ID = 9  # rng stream id of catdog's named images


class SampleItem(NamedTuple):
    """One object of one image: paths relative to the root (POSIX), its label and its mask.

    ``expression`` images are CSV rows, named ``fer2013.csv#<row>``. ``both.jpg`` appears once per
    object it holds, each time with that object's label and mask.
    """

    image: str
    label: int
    mask: str


@dataclass(frozen=True)
class SampleInfo:
    """What :func:`generate_sample` wrote: the root, the mode, the class names and every item."""

    root: Path
    mode: str
    classes: tuple[str, ...]
    items: tuple[SampleItem, ...]  # sorted


def _counts(spec: ModeSpec, per_class: Mapping[str, int] | None) -> dict[str, int]:
    """Per-split image counts per class: the mode's defaults, overridden by ``per_class``."""
    counts = dict(zip(spec.splits, spec.default_per_class, strict=True))
    for split, n in (per_class or {}).items():
        if split not in counts:
            raise ValueError(f"{spec.name} has splits {', '.join(spec.splits)}, not {split!r}")
        if int(n) < 0:
            raise ValueError(f"count for {split!r} must be >= 0, not {n}")
        counts[split] = int(n)
    return counts


# ---------------------------------------------------------------------------------------------
# Writing


def _jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0", optimize=False)
    return buf.getvalue()


def _mask_png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_food11(tmp: Path, seed: int, spec: ModeSpec, counts: dict[str, int]) -> list[SampleItem]:
    items = []
    for split_id, split in enumerate(spec.splits):
        (tmp / split).mkdir()  # every split folder exists, even when empty
        keys = [(label, n) for label in range(len(spec.classes)) for n in range(counts[split])]
        if split == "testing":  # Food-11 testing files are <id>.jpg, in no label order
            order = np.random.default_rng([seed, spec.mode_id, split_id]).permutation(len(keys))
            stems = {key: f"{int(i):04d}" for key, i in zip(keys, order, strict=True)}
        else:
            stems = {key: f"{key[0]}_{key[1]}" for key in keys}
        for label, n in keys:
            image, mask = render_one(seed, spec, split_id, label, n)
            stem = stems[(label, n)]
            image_rel, mask_rel = f"{split}/{stem}.jpg", f"masks/{split}/{stem}.png"
            _write(tmp, image_rel, _jpeg_bytes(image))
            _write(tmp, mask_rel, _mask_png_bytes(mask))
            items.append(SampleItem(image_rel, label, mask_rel))
    return items


def _write_expression(
    tmp: Path, seed: int, spec: ModeSpec, counts: dict[str, int]
) -> list[SampleItem]:
    """Rows go split by split, and within a split cycle through the labels, like a shuffle that
    keeps every prefix balanced."""
    items, lines, row = [], ["emotion,pixels,Usage"], 0
    for split_id, split in enumerate(spec.splits):
        for n in range(counts[split]):
            for label in range(len(spec.classes)):
                image, mask = render_one(seed, spec, split_id, label, n)
                pixels = " ".join(str(int(v)) for v in np.asarray(image).ravel())
                lines.append(f"{label},{pixels},{split}")
                mask_rel = f"masks/{row}.png"
                _write(tmp, mask_rel, _mask_png_bytes(mask))
                items.append(SampleItem(f"{_FER_CSV}#{row}", label, mask_rel))
                row += 1
    _write(tmp, _FER_CSV, ("\n".join(lines) + "\n").encode())
    return items


def _write_catdog(tmp: Path, seed: int, spec: ModeSpec, counts: dict[str, int]) -> list[SampleItem]:
    items = []
    names = [c.name for c in spec.classes]
    for split_id, split in enumerate(spec.splits):
        for label, name in enumerate(names):
            for n in range(counts[split]):
                image, mask = render_one(seed, spec, split_id, label, n)
                image_rel, mask_rel = (
                    f"{split}/{name}/{n:04d}.jpg",
                    f"masks/{split}/{name}/{n:04d}.png",
                )
                _write(tmp, image_rel, _jpeg_bytes(image))
                _write(tmp, mask_rel, _mask_png_bytes(mask))
                items.append(SampleItem(image_rel, label, mask_rel))
    side = spec.side_range[0]
    whole, left, right = (0, 0, side, side), (0, 0, side // 2, side), (side // 2, 0, side, side)
    named = {
        "cat": [(names.index("cat"), whole)],
        "dog": [(names.index("dog"), whole)],
        "both": [(names.index("cat"), left), (names.index("dog"), right)],
    }
    for k, (stem, objects) in enumerate(named.items()):
        rng = np.random.default_rng([seed, spec.mode_id, _NAMED_SPLIT_ID, k])
        image, masks = render(rng, spec.name, side, side, objects)
        _write(tmp, f"{stem}.jpg", _jpeg_bytes(image))
        for (label, _), mask in zip(objects, masks, strict=True):
            mask_rel = (
                f"masks/{stem}.png" if len(objects) == 1 else f"masks/{stem}_{names[label]}.png"
            )
            _write(tmp, mask_rel, _mask_png_bytes(mask))
            items.append(SampleItem(f"{stem}.jpg", label, mask_rel))
    return items


_WRITERS = {"food11": _write_food11, "expression": _write_expression, "catdog": _write_catdog}


def _is_generated(root: Path) -> bool:
    """True if ``root`` holds a set this module wrote (so replacing it loses nothing else)."""
    try:
        meta = json.loads((root / "SAMPLE.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == GENERATOR


def _check_replaceable(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not _is_generated(root):
        raise FileExistsError(f"{root} is not empty and holds no generated sample set")


def _swap_in(tmp: Path, root: Path) -> None:
    """Move the finished tree ``tmp`` to ``root``, replacing an empty dir or an earlier set."""
    old = None
    if root.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
        os.replace(root, old / "tree")
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old)


def generate_sample(
    root: Path,
    *,
    seed: int = 0,
    mode: str = "food11",
    per_class: dict[str, int] | None = None,
) -> SampleInfo:
    """Write the sample set of ``mode`` under ``root``; same seed and counts, same bytes.

    ``per_class`` overrides the number of images per class of any split (food11: ``training``
    24, ``validation`` 8, ``testing`` 2; expression: ``Training`` 20, ``PublicTest`` 6; catdog:
    ``train`` 16, ``val`` 4). The tree is built beside ``root`` and moved into place, so ``root``
    is never half-written; an existing ``root`` must be empty or an earlier generated set.
    """
    spec = mode_spec(mode)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    counts = _counts(spec, per_class)
    root = Path(root)
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.new.", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)
        items = sorted(_WRITERS[mode](tmp, seed, spec, counts))
        names = class_names(mode)
        _write(tmp, "classes.txt", ("\n".join(names) + "\n").encode())
        meta = {
            "generator": GENERATOR,
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "mode": mode,
            "classes": list(names),
            "per_class": counts,
            "images": len({item.image for item in items}),
            "jpeg_quality": JPEG_QUALITY,
        }
        _write(tmp, "SAMPLE.json", json_bytes(meta))
        _swap_in(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "wrote %d %s sample images to %s in %.1fs",
        meta["images"],
        mode,
        root,
        time.perf_counter() - start,
    )
    return SampleInfo(root=root, mode=mode, classes=names, items=tuple(items))
