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

import colorsys
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from .outputs import json_bytes

logger = logging.getLogger(__name__)

GENERATOR = "hw5lib.sample"
GENERATOR_VERSION = 1
JPEG_QUALITY = 90
MODES = ("food11", "expression", "catdog")

_SUPERSAMPLE = 4  # objects are drawn at 4x and box-filtered down: clean edges, soft alpha
_MARGIN = 2  # pixels kept free between an object and the edge of its box
_FER_CSV = "fer2013.csv"
_NAMED_SPLIT_ID = 9  # rng stream id of catdog's named images

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive


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


@dataclass(frozen=True)
class _ClassSpec:
    name: str
    shape: str
    hue: float | None  # degrees; None in grayscale modes
    max_rotation: float  # degrees either way


@dataclass(frozen=True)
class _ModeSpec:
    name: str
    mode_id: int
    classes: tuple[_ClassSpec, ...]
    splits: tuple[str, ...]
    default_per_class: tuple[int, ...]  # one count per split
    side_range: tuple[int, int]  # each of width and height is drawn from this, inclusive
    diameter_range: tuple[float, float]  # object diameter as a fraction of its box's short side
    coverage_range: tuple[float, float]  # object area as a fraction of the image, kept inside
    grayscale: bool


# ---------------------------------------------------------------------------------------------
# Shapes: polygons in unit coordinates (y down), additive parts inside the unit disk.

Part = tuple[np.ndarray, bool]  # (polygon [K, 2], True = add / False = cut out)


def _ellipse(rx: float, ry: float, cx: float = 0.0, cy: float = 0.0, k: int = 96) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, k, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _regular(k: int, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(k) * 2.0 * np.pi / k
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.5) -> np.ndarray:
    t = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart(k: int = 96) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, k, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


def _pill(half_width: float = 1.0, half_height: float = 0.42) -> np.ndarray:
    c = half_width - half_height
    t = np.linspace(-np.pi / 2, np.pi / 2, 24)
    right = np.stack([c + half_height * np.cos(t), half_height * np.sin(t)], axis=1)
    return np.concatenate([right, -right])


def _raw_shape(kind: str) -> list[Part]:
    """The parts of one shape kind, before centering and scaling."""
    arm = 0.32
    if kind == "circle":
        return [(_ellipse(1, 1), True)]
    if kind == "square":
        return [(_regular(4, np.pi / 4), True)]
    if kind == "triangle":
        return [(_regular(3), True)]
    if kind == "star":
        return [(_star(5, 0.5), True)]
    if kind == "cross":
        a, b = arm, 1.0
        cross = [(a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b)]
        cross += [(-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a), (-a, -b)]
        return [(np.array(cross), True)]
    if kind == "ring":
        return [(_ellipse(1, 1), True), (_ellipse(0.55, 0.55), False)]
    if kind == "diamond":
        return [(np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], dtype=float), True)]
    if kind == "hexagon":
        return [(_regular(6, 0.0), True)]
    if kind == "crescent":
        return [(_ellipse(1, 1), True), (_ellipse(0.8, 0.8, 0.45, 0.0), False)]
    if kind == "heart":
        return [(_heart(), True)]
    if kind == "pill":
        return [(_pill(), True)]
    if kind == "cat":  # round head, two pointed ears
        ear = np.array([(-0.72, -0.15), (-0.6, -1.0), (-0.15, -0.52)])
        return [(_ellipse(0.75, 0.68, 0, 0.2), True), (ear, True), (ear * [-1, 1], True)]
    if kind == "dog":  # long head, two floppy ears
        return [
            (_ellipse(0.55, 0.72, 0, 0.05), True),
            (_ellipse(0.24, 0.5, -0.62, 0.1), True),
            (_ellipse(0.24, 0.5, 0.62, 0.1), True),
            (_ellipse(0.3, 0.2, 0, 0.62), True),
        ]
    raise ValueError(f"unknown shape kind {kind!r}")


@cache
def _shape(kind: str) -> tuple[Part, ...]:
    """The parts of a shape, centred on its bounding box and scaled so additive parts fit in the
    unit disk: an object of diameter ``d`` then fits in a ``d x d`` square at any rotation."""
    parts = _raw_shape(kind)
    added = np.concatenate([p for p, add in parts if add])
    centre = (added.min(axis=0) + added.max(axis=0)) / 2.0
    radius = float(np.linalg.norm(added - centre, axis=1).max())
    return tuple(((p - centre) / radius, add) for p, add in parts)


@cache
def _unit_area(kind: str) -> float:
    """Area of the unit-radius shape (pi for the circle), measured by rasterizing it once."""
    n = 512
    mask = _rasterize(_shape(kind), scale=n / 2.0, offset=(n / 2.0, n / 2.0), size=(n, n))
    return float(np.count_nonzero(np.asarray(mask))) / (n / 2.0) ** 2


def _rasterize(
    parts: Sequence[Part], *, scale: float, offset: tuple[float, float], size: tuple[int, int]
) -> Image.Image:
    """Draw ``parts`` (unit coordinates) as an L image of ``size`` = (W, H): 255 inside."""
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    for poly, add in parts:
        xy = poly * scale + np.asarray(offset)
        draw.polygon([(float(x), float(y)) for x, y in xy], fill=255 if add else 0)
    return image


def _rotate(parts: Sequence[Part], degrees: float) -> list[Part]:
    t = math.radians(degrees)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return [(p @ rot.T, add) for p, add in parts]


# ---------------------------------------------------------------------------------------------
# Modes

_FOOD11_SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "diamond",
    "hexagon",
    "crescent",
    "heart",
    "pill",
)
_FOOD11_COLOURS = (
    "red",
    "orange",
    "yellow",
    "lime",
    "green",
    "teal",
    "cyan",
    "blue",
    "purple",
    "magenta",
    "pink",
)
_ROTATION = {"circle": 0.0, "ring": 0.0, "heart": 30.0, "pill": 25.0, "cat": 20.0, "dog": 20.0}

_SPECS = {
    "food11": _ModeSpec(
        name="food11",
        mode_id=0,
        classes=tuple(
            _ClassSpec(f"{s}-{c}", s, i * 360.0 / 11.0, _ROTATION.get(s, 180.0))
            for i, (s, c) in enumerate(zip(_FOOD11_SHAPES, _FOOD11_COLOURS, strict=True))
        ),
        splits=("training", "validation", "testing"),
        default_per_class=(24, 8, 2),
        side_range=(96, 192),
        diameter_range=(0.25, 0.6),
        coverage_range=(0.04, 0.45),
        grayscale=False,
    ),
    "expression": _ModeSpec(
        name="expression",
        mode_id=1,
        classes=tuple(
            _ClassSpec(s, s, None, _ROTATION.get(s, 180.0))
            for s in ("circle", "square", "triangle", "star", "cross", "ring", "heart")
        ),
        splits=("Training", "PublicTest"),
        default_per_class=(20, 6),
        side_range=(48, 48),
        diameter_range=(0.35, 0.7),
        coverage_range=(0.05, 0.45),
        grayscale=True,
    ),
    "catdog": _ModeSpec(
        name="catdog",
        mode_id=2,
        classes=(_ClassSpec("cat", "cat", 28.0, 20.0), _ClassSpec("dog", "dog", 215.0, 20.0)),
        splits=("train", "val"),
        default_per_class=(16, 4),
        side_range=(224, 224),
        diameter_range=(0.35, 0.7),
        coverage_range=(0.04, 0.45),
        grayscale=False,
    ),
}


def class_names(mode: str = "food11") -> tuple[str, ...]:
    """The class names a mode generates, in label order."""
    return tuple(c.name for c in _spec(mode).classes)


def _spec(mode: str) -> _ModeSpec:
    if mode not in _SPECS:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return _SPECS[mode]


def _counts(spec: _ModeSpec, per_class: Mapping[str, int] | None) -> dict[str, int]:
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
# Rendering


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg / 360.0) % 1.0, s, v))


def _clutter_colour(rng: np.random.Generator, grayscale: bool, max_sat: float) -> tuple[int, ...]:
    """A random colour (any hue, saturation at most ``max_sat``) as a PIL fill value."""
    rgb = _hsv(rng.uniform(0, 360), rng.uniform(0, max_sat), rng.uniform(0.15, 0.95))
    if grayscale:
        return (round(255 * rng.uniform(0.1, 0.9)),)
    return tuple(round(255 * float(c)) for c in rgb)


def _background(rng: np.random.Generator, spec: _ModeSpec, width: int, height: int) -> np.ndarray:
    """A smooth, desaturated colour field plus thin lines, small rectangles and small blobs.

    Clutter is small, thin or desaturated, so nothing in it looks like a class object.
    Returns [H, W, C] floats in [0, 1], C = 1 or 3.
    """
    gh, gw = rng.integers(3, 6, size=2)
    field = np.stack(
        [
            _hsv(rng.uniform(0, 360), rng.uniform(0, 0.3), rng.uniform(0.3, 0.85))
            for _ in range(gh * gw)
        ]
    ).reshape(gh, gw, 3)
    if spec.grayscale:
        field = field.mean(axis=2, keepdims=True).repeat(3, axis=2)
    small = Image.fromarray(np.round(field * 255).astype(np.uint8), "RGB")
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    if spec.grayscale:
        image = image.convert("L")
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    density = max(1.0, width * height / 144**2)  # as much clutter per pixel on large images

    def count(lo: int, hi: int) -> int:
        return round(int(rng.integers(lo, hi)) * density)

    for _ in range(count(4, 10)):  # thin lines, any colour
        x = rng.uniform(0, width, size=2)
        y = rng.uniform(0, height, size=2)
        line_width = int(rng.integers(1, max(2, short // 64) + 1))
        fill = _clutter_colour(rng, spec.grayscale, 1.0)
        draw.line([(x[0], y[0]), (x[1], y[1])], fill=fill, width=line_width)
    for _ in range(count(2, 6)):  # small rectangles, desaturated
        w, h = rng.uniform(0.03, 0.12, size=2) * short
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        draw.rectangle([x, y, x + w, y + h], fill=_clutter_colour(rng, spec.grayscale, 0.45))
    for _ in range(count(2, 6)):  # small blobs, desaturated
        rx, ry = rng.uniform(0.02, 0.06, size=2) * short
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        box = [x - rx, y - ry, x + rx, y + ry]
        draw.ellipse(box, fill=_clutter_colour(rng, spec.grayscale, 0.45))
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels = pixels + rng.normal(0.0, 0.02, size=pixels.shape)
    return np.clip(pixels, 0.0, 1.0)


def _object_diameter(
    rng: np.random.Generator, spec: _ModeSpec, kind: str, box: Box, width: int, height: int
) -> float:
    """Diameter in pixels: a fraction of the box's short side, nudged so the object covers a
    fraction of the image within ``coverage_range`` (thin shapes get drawn a little larger)."""
    short = min(box[2] - box[0], box[3] - box[1])
    fit = short - 2 * _MARGIN
    area = _unit_area(kind) / 4.0  # area per squared diameter
    lo_cov, hi_cov = spec.coverage_range
    d_cov_lo = math.sqrt(lo_cov * width * height / area)
    d_cov_hi = math.sqrt(hi_cov * width * height / area)
    lo = max(spec.diameter_range[0] * short, d_cov_lo)
    hi = min(max(spec.diameter_range[1] * short, lo), d_cov_hi, fit)
    lo = min(lo, hi)
    return float(rng.uniform(lo, hi))


def _draw_object(
    rng: np.random.Generator,
    spec: _ModeSpec,
    label: int,
    box: Box,
    canvas: np.ndarray,
) -> np.ndarray:
    """Composite one object of class ``label`` onto ``canvas`` [H, W, C] inside ``box``, in place.

    Returns its mask [H, W] bool, computed from the same supersampled geometry as its alpha.
    """
    height, width = canvas.shape[:2]
    cls = spec.classes[label]
    d = _object_diameter(rng, spec, cls.shape, box, width, height)
    parts = _rotate(_shape(cls.shape), rng.uniform(-cls.max_rotation, cls.max_rotation))
    added = np.concatenate([p for p, add in parts if add]) * (d / 2.0)
    lo, hi = added.min(axis=0), added.max(axis=0)
    cx = rng.uniform(box[0] + _MARGIN - lo[0], box[2] - _MARGIN - hi[0])
    cy = rng.uniform(box[1] + _MARGIN - lo[1], box[3] - _MARGIN - hi[1])

    s = _SUPERSAMPLE
    big = _rasterize(
        parts, scale=d / 2.0 * s, offset=(cx * s, cy * s), size=(width * s, height * s)
    )
    alpha = np.asarray(big.resize((width, height), Image.Resampling.BOX), dtype=np.float64) / 255.0

    # Colour: the class hue (jittered a little), then a linear light gradient and fine texture
    # that scale brightness only, so the hue stays the class's.
    if cls.hue is None:
        dark = rng.random() < 0.5
        base = np.array([rng.uniform(0.05, 0.22) if dark else rng.uniform(0.78, 0.95)])
    else:
        base = _hsv(cls.hue + rng.uniform(-6, 6), rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.95))
    phi = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = ((xs - cx) * math.cos(phi) + (ys - cy) * math.sin(phi)) / (d / 2.0)
    light = 1.0 + 0.15 * np.clip(ramp, -1, 1) + rng.normal(0.0, 0.04, size=(height, width))
    layer = np.clip(base[None, None, :] * light[:, :, None], 0.0, 1.0)

    a = alpha[:, :, None]
    canvas *= 1.0 - a
    canvas += a * layer
    return alpha >= 0.5


def render(
    rng: np.random.Generator,
    mode: str,
    width: int,
    height: int,
    objects: Sequence[tuple[int, Box]],
) -> tuple[Image.Image, list[np.ndarray]]:
    """One image of ``mode`` with an object of class ``label`` inside each ``(label, box)``.

    Objects are drawn after the clutter, so nothing covers them. Returns the image (RGB or L)
    and one [H, W] bool mask per object.
    """
    spec = _spec(mode)
    canvas = _background(rng, spec, width, height)
    masks = [_draw_object(rng, spec, label, box, canvas) for label, box in objects]
    pixels = np.round(canvas * 255.0).astype(np.uint8)
    if spec.grayscale:
        return Image.fromarray(pixels[:, :, 0], "L"), masks
    return Image.fromarray(pixels, "RGB"), masks


def _render_one(
    seed: int, spec: _ModeSpec, split_id: int, label: int, n: int
) -> tuple[Image.Image, np.ndarray]:
    """The image and mask of item ``n`` of class ``label`` in a split, from its own stream."""
    rng = np.random.default_rng([seed, spec.mode_id, split_id, label, n])
    width, height = (int(v) for v in rng.integers(spec.side_range[0], spec.side_range[1] + 1, 2))
    image, masks = render(rng, spec.name, width, height, [(label, (0, 0, width, height))])
    return image, masks[0]


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


def _write_food11(
    tmp: Path, seed: int, spec: _ModeSpec, counts: dict[str, int]
) -> list[SampleItem]:
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
            image, mask = _render_one(seed, spec, split_id, label, n)
            stem = stems[(label, n)]
            image_rel, mask_rel = f"{split}/{stem}.jpg", f"masks/{split}/{stem}.png"
            _write(tmp, image_rel, _jpeg_bytes(image))
            _write(tmp, mask_rel, _mask_png_bytes(mask))
            items.append(SampleItem(image_rel, label, mask_rel))
    return items


def _write_expression(
    tmp: Path, seed: int, spec: _ModeSpec, counts: dict[str, int]
) -> list[SampleItem]:
    """Rows go split by split, and within a split cycle through the labels, like a shuffle that
    keeps every prefix balanced."""
    items, lines, row = [], ["emotion,pixels,Usage"], 0
    for split_id, split in enumerate(spec.splits):
        for n in range(counts[split]):
            for label in range(len(spec.classes)):
                image, mask = _render_one(seed, spec, split_id, label, n)
                pixels = " ".join(str(int(v)) for v in np.asarray(image).ravel())
                lines.append(f"{label},{pixels},{split}")
                mask_rel = f"masks/{row}.png"
                _write(tmp, mask_rel, _mask_png_bytes(mask))
                items.append(SampleItem(f"{_FER_CSV}#{row}", label, mask_rel))
                row += 1
    _write(tmp, _FER_CSV, ("\n".join(lines) + "\n").encode())
    return items


def _write_catdog(
    tmp: Path, seed: int, spec: _ModeSpec, counts: dict[str, int]
) -> list[SampleItem]:
    items = []
    names = [c.name for c in spec.classes]
    for split_id, split in enumerate(spec.splits):
        for label, name in enumerate(names):
            for n in range(counts[split]):
                image, mask = _render_one(seed, spec, split_id, label, n)
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
    spec = _spec(mode)
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
