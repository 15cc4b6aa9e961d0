"""Q3: LIME over SLIC superpixels, foldover Hadamard samples until the top superpixels are settled."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from hw5lib.config import COURSE, RunConfig
from hw5lib.methods import course, lime_adapter, lime_stopping
from hw5lib.report import attribution_figures
from hw5lib.stages.context import Method, Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.lime_images import explain_images
from hw5lib.stages.lime_result import METHOD, LimeStageResult
from hw5lib.stages.protocol import FigureRecord
from hw5lib.stages.record import (
    explained,
    mask_caption,
    number,
    unexplained,
    unexplained_caption,
    write_png,
)
from hw5lib.stages.stage import Share, Stage
from hw5lib.tolerances import ITERATED_VALUES, LIME_TOP, ArrayRule

NAME = "Q3 LIME"


def stage_lime(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> LimeStageResult:
    results = explain_images(run, cfg, deadline, bar, NAME)
    if not results:
        return LimeStageResult(cap=cfg.lime_samples)
    used = [r.samples for r in results]
    n = len(results)
    s = run.subject.first(n)
    segs = np.stack([r.segments for r in results])
    width = max(len(r.weights) for r in results)
    weights = np.zeros((n, width))
    for i, r in enumerate(results):
        weights[i, : len(r.weights)] = r.weights
    fig = attribution_figures.lime_figure(
        s.pixels,
        segs,
        [r.weights for r in results],
        s.titles(run.classes),
        "LIME: superpixels for (green) and against (red) the class"
        + (" (course: stock lime on logits)" if cfg.conventions == COURSE else ""),
        notes=[r.failure for r in results],
    )
    write_png(run, "q3_lime.png", fig)
    run.write_npz(
        "q3_lime.npz",
        input=s.x.cpu().numpy(),
        target=s.target.cpu().numpy(),
        segments=segs,
        weights=weights,
        score=np.array([r.score for r in results]),
    )
    # The superpixel explanation as a per-pixel map, for the mask share and the trust table.
    maps = np.stack([r.weights[r.segments] for r in results])
    complete = n == len(run.subject.paths)
    is_course = cfg.conventions == COURSE
    method = (
        f"stock lime as the course's sample code (--conventions course): {cfg.lime_samples} "
        f"independent perturbed samples per image from one random stream seeded with "
        f"{course.LIME_SEED + cfg.seed}, the model's logits, over {course.SLIC_TEXT}"
        if is_course
        else f"{sampling_text(cfg, used)}, over SLIC superpixels (n_segments=100, "
        f"compactness=1, sigma=1, numbered from 0)"
    )
    missing = unexplained(run, [r.failure for r in results])
    usual = course.SLIC_TEXT if is_course else lime_adapter.COURSE_SLIC
    fallback = {p.name: r.segmentation for p, r in zip(s.paths, results, strict=True)
                if r.segmentation != usual}  # fmt: skip
    explained_scores = [r.score for r in results if r.failure is None]
    mean_r2 = number(float(np.mean(explained_scores)) if explained_scores else math.nan)
    params: dict = {
        "samples": used,
        "cap": cfg.lime_samples,
        "seed": cfg.seed,
        "conventions": cfg.conventions,
    }
    if missing:
        params["unexplained"] = missing
    if fallback:
        params["segmentation"] = fallback
    record = FigureRecord(
        "q3_lime",
        STAGE.section,
        "LIME explanations",
        f"LIME (Ribeiro et al., 2016) with {method}; the 5 most positive superpixels are "
        f"green, the 5 most negative red. Mean R^2 of lime's local linear model: {mean_r2}."
        + segmentation_caption(fallback)
        + unexplained_caption(missing)
        + (mask_caption(run, maps) if complete else ""),
        "q3_lime.png",
        "q3_lime.npz",
        params,
    )
    return LimeStageResult(
        [record],
        # the trust table compares methods on the same images
        {METHOD: torch.from_numpy(maps).float()} if complete else {},
        share=float(np.mean(used)) / cfg.lime_samples,
        results=results,
        complete=complete,
        cap=cfg.lime_samples,
        course=is_course,
    )


def sampling_text(cfg: RunConfig, used: list[int]) -> str:
    if not cfg.adaptive:
        return f"{cfg.lime_samples} foldover Hadamard perturbed samples per image"
    return (
        f"{min(used)}-{max(used)} (mean {np.mean(used):.0f}) foldover Hadamard perturbed samples per "
        f"image, stopped once as precise as {lime_stopping.MATCHED_SAMPLES} independent ones "
        f"and the top {lime_stopping.TOP_K} settled"
    )


def segmentation_caption(fallback: dict[str, str]) -> str:
    """Where the course SLIC gave too few superpixels (a low-contrast photo), what was used."""
    if not fallback:
        return ""
    listed = "; ".join(f"{name}: {how}" for name, how in fallback.items())
    return f" Superpixels made otherwise for {len(fallback)} image(s): {listed}."


def lime_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    """LIME samples per image: never fewer than the floor of its stopping rule."""
    floor = min(cfg.lime_samples, lime_stopping.MIN_SAMPLES)
    samples = (
        cfg.lime_samples
        if cfg.conventions == COURSE
        else max(floor, cfg.lime_samples * shares[NAME])
    )
    return Work(forward=explained(run) * samples, seconds=0.3 * explained(run) + FIGURE_SECONDS)


STAGE = Stage(
    NAME,
    "Q3",
    stage_lime,
    lime_cost,
    units=lambda run, cfg: explained(run),
    cuts=(
        Cut(NAME, "600 samples per image, no more", {"lime_samples": 600}, rank=6),
        Cut(
            NAME,
            "300 samples per image, no more",
            {"lime_samples": 300},
            rank=14,
        ),
    ),
    options=("lime_samples", "adaptive", "seed", "trust", "conventions"),
    methods=(Method(METHOD),),
    share=Share(expected=0.5),
    figures=lambda run: ("q3_lime",),
    verify=(
        ArrayRule("q3_lime", "weights", LIME_TOP),
        ArrayRule("q3_lime", "score", ITERATED_VALUES),
    ),
)
