"""The sample set's object shapes: polygons in unit coordinates (y down) whose additive parts fit
in the unit disk, rotated and rasterized with PIL."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

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
def shape(kind: str) -> tuple[Part, ...]:
    """The parts of a shape, centred on its bounding box and scaled so additive parts fit in the
    unit disk: an object of diameter ``d`` then fits in a ``d x d`` square at any rotation."""
    parts = _raw_shape(kind)
    added = np.concatenate([p for p, add in parts if add])
    centre = (added.min(axis=0) + added.max(axis=0)) / 2.0
    radius = float(np.linalg.norm(added - centre, axis=1).max())
    return tuple(((p - centre) / radius, add) for p, add in parts)


@cache
def unit_area(kind: str) -> float:
    """Area of the unit-radius shape (pi for the circle), measured by rasterizing it once."""
    n = 512
    mask = rasterize(shape(kind), scale=n / 2.0, offset=(n / 2.0, n / 2.0), size=(n, n))
    return float(np.count_nonzero(np.asarray(mask))) / (n / 2.0) ** 2


def rasterize(
    parts: Sequence[Part], *, scale: float, offset: tuple[float, float], size: tuple[int, int]
) -> Image.Image:
    """Draw ``parts`` (unit coordinates) as an L image of ``size`` = (W, H): 255 inside."""
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    for poly, add in parts:
        xy = poly * scale + np.asarray(offset)
        draw.polygon([(float(x), float(y)) for x, y in xy], fill=255 if add else 0)
    return image


def rotate(parts: Sequence[Part], degrees: float) -> list[Part]:
    t = math.radians(degrees)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return [(p @ rot.T, add) for p, add in parts]
