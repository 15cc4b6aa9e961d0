"""Where a map's attribution sits: shares of its mass in the centre, the border and the corners of
the image, and inside the object mask, each next to the share a uniform map would have there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DECIMALS = 4  # every number in audit.json is rounded to this: reruns give the same bytes
# The outer ring is S // BAND wide; its four S/4 x S/4 end squares are the corners, the rest of
# the ring the border, the inner square the centre. For S = 32 a uniform map puts 25% in the
# corners, 50% on the border and 25% in the centre: a watermark or logo sits in the corners.
BAND = 4
REGIONS = ("centre", "border", "corners")
# Attribution sits away from the object in a region when the region holds at least its
# multiple of what a uniform map puts there (region, phrase, multiple): one corner is a
# sixteenth of the image, and a small region's share swings more by chance, so more for it ...
AWAY = (
    ("corner", "in one corner", 2.0),
    ("corners", "in the corners", 1.25),
    ("border", "on the border", 1.25),
)
# ... and more than the images it is compared with by LIFT times its uniform share: 15 points
# in the four corners (a quarter of the image), 3.75 in one corner, where a logo's pull on
# diffuse maps is a few points of mass but several times the rest's.
LIFT = 0.6
# With masks: this much less of the mass inside the object than the compared images (the
# object's area varies too much for a uniform baseline to mean much).
LOCATION_MARGIN = 0.15


@dataclass(frozen=True)
class Shares:
    """Shares of a map's mass per region (they sum to 1); ``inside_object`` is None without
    masks."""

    centre: float
    border: float
    corners: float
    inside_object: float | None
    # the largest of the four corners' shares (a logo sits in one), off the object with masks
    corner: float = 0.0

    def to_json(self) -> dict:
        round_ = None if self.inside_object is None else round(self.inside_object, DECIMALS)
        regions = {r: round(getattr(self, r), DECIMALS) for r in (*REGIONS, "corner")}
        return regions | {"inside_object": round_}


@dataclass(frozen=True)
class Location:
    """Where the (sum-normalised) attribution sits: ``share`` against ``uniform``, the shares of
    a uniform map (inside_object: the mean fraction of the image the mask covers)."""

    share: Shares
    uniform: Shares

    def to_json(self) -> dict:
        return {"share": self.share.to_json(), "uniform": self.uniform.to_json()}


def region_masks(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, border, corners) bool [side,side], disjoint and covering the image."""
    if side < BAND:
        raise ValueError(f"maps must be at least {BAND} pixels wide, got {side}")
    band = side // BAND
    ring = np.ones((side, side), bool)
    ring[band:-band, band:-band] = False
    edge = np.zeros(side, bool)
    edge[:band] = edge[-band:] = True
    corners = edge[:, None] & edge[None, :]
    return ~ring, ring & ~corners, corners


def normalise(maps: np.ndarray) -> np.ndarray:
    """[N,S,S] non-negative -> float64 maps summing to 1; an all-zero (or non-finite) map
    becomes uniform: it says nothing about where the model looks."""
    maps = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64), posinf=0.0), 0.0, None)
    total = maps.sum(axis=(1, 2), keepdims=True)
    uniform = np.full_like(maps, 1.0 / max(maps[0].size, 1) if maps.size else 0.0)
    return np.where(total > 0, maps / np.where(total > 0, total, 1.0), uniform)


def locate(probs: np.ndarray, masks: np.ndarray | None) -> Location:
    """Mean region shares of sum-normalised maps [N,S,S] (= the shares of their mean map), and
    the mean share inside each image's own mask [N,S,S]. No maps: a uniform map's shares."""
    side = probs.shape[-1]
    regions = region_masks(side)
    base = [float(r.mean()) for r in regions]
    mean = probs.mean(axis=0) if len(probs) else np.full((side, side), 1.0 / side**2)
    shares = [float(mean[r].sum()) for r in regions]
    band = side // BAND
    ends = (slice(0, band), slice(side - band, side))
    off = probs if masks is None else probs * ~masks  # with masks: the mass off the object
    off_mean = off.mean(axis=0) if len(probs) else mean
    corner = max(float(off_mean[r, c].sum()) for r in ends for c in ends)
    corner_base = band * band / side**2
    inside = area = None
    if masks is not None:
        area = float(masks.mean()) if masks.size else 1.0
        inside = float((probs * masks).sum(axis=(1, 2)).mean()) if len(probs) else area
    return Location(Shares(*shares, inside, corner), Shares(*base, area, corner_base))


def _phrase(share: float, region: str, uniform: float, reference: float, compared: str) -> str:
    return f"attribution {share:.0%} {region} (uniform {uniform:.0%}, {reference:.0%} {compared})"


def away_from_object(
    location: Location, reference: Sequence[Location], compared: str = "in the rest of the class"
) -> str | None:
    """Does ``location`` concentrate away from the object compared with ``reference`` (their
    median)? With masks: less inside the object, or one corner's mass off the object; without:
    in one corner, the corners or on the border. Returns the phrase with the numbers, or None."""
    if not reference:
        return None
    share, base = location.share, location.uniform
    if share.inside_object is not None and base.inside_object is not None:
        # Masks say where the object is: only the mass outside it counts.
        refs = [r.share.inside_object for r in reference if r.share.inside_object is not None]
        if not refs:
            return None
        inside, ref = share.inside_object, float(np.median(refs))
        if inside <= ref - LOCATION_MARGIN:
            return _phrase(inside, "inside the object", base.inside_object, ref, compared)
    # The regions a watermark or a frame occupies; with masks, one corner's mass off the object
    # (diffuse maps, saliency, spread a logo's pull: the mass it takes from the object is small
    # though the corner it sits in stands out).
    found = []
    masked = share.inside_object is not None
    for region, name, concentration in AWAY[:1] if masked else AWAY:
        s, u = getattr(share, region), getattr(base, region)
        ref = float(np.median([getattr(r.share, region) for r in reference]))
        if s >= concentration * u and s - ref >= LIFT * u:
            found.append((s - ref, _phrase(s, name, u, ref, compared)))
    return max(found)[1] if found else None
