"""One sample image: each mode's classes (a shape and a hue) and sizes, a cluttered background,
and the class objects composited onto it with their masks."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from hw5lib.inputs.sample_shapes import rasterize, rotate, shape, unit_area

MODES = ("food11", "expression", "catdog")

_SUPERSAMPLE = 4  # objects are drawn at 4x and box-filtered down: clean edges, soft alpha
_MARGIN = 2  # pixels kept free between an object and the edge of its box

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive


@dataclass(frozen=True)
class _ClassSpec:
    name: str
    shape: str
    hue: float | None  # degrees; None in grayscale modes
    max_rotation: float  # degrees either way


@dataclass(frozen=True)
class ModeSpec:
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
    "food11": ModeSpec(
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
    "expression": ModeSpec(
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
    "catdog": ModeSpec(
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
    return tuple(c.name for c in mode_spec(mode).classes)


def mode_spec(mode: str) -> ModeSpec:
    if mode not in _SPECS:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return _SPECS[mode]


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


def _background(rng: np.random.Generator, spec: ModeSpec, width: int, height: int) -> np.ndarray:
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
    rng: np.random.Generator, spec: ModeSpec, kind: str, box: Box, width: int, height: int
) -> float:
    """Diameter in pixels: a fraction of the box's short side, nudged so the object covers a
    fraction of the image within ``coverage_range`` (thin shapes get drawn a little larger)."""
    short = min(box[2] - box[0], box[3] - box[1])
    fit = short - 2 * _MARGIN
    area = unit_area(kind) / 4.0  # area per squared diameter
    lo_cov, hi_cov = spec.coverage_range
    d_cov_lo = math.sqrt(lo_cov * width * height / area)
    d_cov_hi = math.sqrt(hi_cov * width * height / area)
    lo = max(spec.diameter_range[0] * short, d_cov_lo)
    hi = min(max(spec.diameter_range[1] * short, lo), d_cov_hi, fit)
    lo = min(lo, hi)
    return float(rng.uniform(lo, hi))


def _draw_object(
    rng: np.random.Generator,
    spec: ModeSpec,
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
    parts = rotate(shape(cls.shape), rng.uniform(-cls.max_rotation, cls.max_rotation))
    added = np.concatenate([p for p, add in parts if add]) * (d / 2.0)
    lo, hi = added.min(axis=0), added.max(axis=0)
    cx = rng.uniform(box[0] + _MARGIN - lo[0], box[2] - _MARGIN - hi[0])
    cy = rng.uniform(box[1] + _MARGIN - lo[1], box[3] - _MARGIN - hi[1])

    s = _SUPERSAMPLE
    big = rasterize(parts, scale=d / 2.0 * s, offset=(cx * s, cy * s), size=(width * s, height * s))
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
    spec = mode_spec(mode)
    canvas = _background(rng, spec, width, height)
    masks = [_draw_object(rng, spec, label, box, canvas) for label, box in objects]
    pixels = np.round(canvas * 255.0).astype(np.uint8)
    if spec.grayscale:
        return Image.fromarray(pixels[:, :, 0], "L"), masks
    return Image.fromarray(pixels, "RGB"), masks


def render_one(
    seed: int, spec: ModeSpec, split_id: int, label: int, n: int
) -> tuple[Image.Image, np.ndarray]:
    """The image and mask of item ``n`` of class ``label`` in a split, from its own stream."""
    rng = np.random.default_rng([seed, spec.mode_id, split_id, label, n])
    width, height = (int(v) for v in rng.integers(spec.side_range[0], spec.side_range[1] + 1, 2))
    image, masks = render(rng, spec.name, width, height, [(label, (0, 0, width, height))])
    return image, masks[0]
