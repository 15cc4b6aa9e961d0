"""The Q2 filter figure's caption: how its images were made (the course's ascent or the
default one, the filters redone, the layers that climbed a tile) and what each layer's filters
reached against their start and the best explained image."""

from __future__ import annotations

from collections.abc import Sequence

from hw5lib.config import COURSE, RunConfig
from hw5lib.methods import course
from hw5lib.stages.context import Run
from hw5lib.stages.filter_layers import planned_layers, tiled_canvases
from hw5lib.stages.record import number

# (layer, its filters, per filter: reached, start image, best explained image)
Reached = tuple[str, Sequence[int], Sequence[Sequence[float]]]


def ascent_text(run: Run, cfg: RunConfig, tried: int, kept: int) -> str:
    """How the figure's images were made, for its caption."""
    if cfg.conventions == COURSE:
        return (
            f"As the course's sample code (--conventions course): each image starts from the "
            f"first explained image ({run.subject.paths[0].name}) and climbs one filter's summed "
            f"activation for {course.ASCENT_STEPS} Adam steps (lr {course.ASCENT_LR:g}) on the "
            f"model input itself, with no regularizer, shown min-max scaled; one row per layer."
        )
    return (
        f"Each image starts from near-gray noise and climbs one filter's mean activation for "
        f"{cfg.filter_steps} AdamW steps on a Fourier-parameterized image with random jitter, "
        f"rotation and scale (Olah et al., 2017), one row per layer; "
        f"{redo_note(tried, kept, cfg.filter_steps)}.{tile_note(run)}"
    )


def tile_note(run: Run) -> str:
    """Which layers climbed a periodic tile, for the caption."""
    tiled = tiled_canvases(run, planned_layers(run))
    if not tiled:
        return ""
    sides = ", ".join(f"{n} {c.period[0]}x{c.period[1]}" for n, c in tiled.items())
    return (
        f" Where a layer's units see a small part of the image, its images climb a periodic "
        f"tile (at least the receptive field, found by gradient, and a quarter of the image "
        f"side) seen repeated, and are shown repeated without seams to the full size: {sides}."
    )


def summary(layers: Sequence[Reached]) -> str:
    return "; ".join(
        f"{name}: filters {list(idx)} reach mean activation "
        + ", ".join(number(end) for end, _, _ in gain)
        + " (start image "
        + ", ".join(number(start) for _, start, _ in gain)
        + "; best real image "
        + ", ".join(number(best) for _, _, best in gain)
        + ")"
        for name, idx, gain in layers
    )


def redo_note(tried: int, kept: int, steps: int) -> str:
    if not tried:
        return "every filter had stopped climbing by the end"
    return (
        f"{tried} {'filter' if tried == 1 else 'filters'} still climbing at the end "
        f"{'was' if tried == 1 else 'were'} redone from a new start with "
        f"{2 * steps} steps; the {kept} that climbed higher are shown"
    )
