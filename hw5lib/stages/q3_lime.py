"""Q3: LIME over SLIC superpixels, foldover Hadamard samples until the top superpixels are settled."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from lime import lime_image
from tqdm import tqdm

from hw5lib.config import COURSE, RunConfig
from hw5lib.methods import course, lime_adapter, lime_stopping
from hw5lib.report import attribution_figures
from hw5lib.report.convergence_plot import Panel
from hw5lib.stages.context import Method, Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.protocol import FigureRecord, Stability, StageResult
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
METHOD = "LIME"
# Bootstrap refit pairs per image behind the trust table's LIME stability: ten pairs put the
# mean over a report's images within a few hundredths of its value with more pairs.
STABILITY_ROUNDS = 10


@dataclass
class LimeStageResult(StageResult):
    results: list[lime_adapter.LimeResult] = field(default_factory=list)
    complete: bool = False  # every explained image has its explanation
    cap: int = 0
    course: bool = False  # stock lime as the course's sample code (--conventions course)

    def convergence(self) -> dict[str, dict]:
        return {METHOD: self.record()} if self.results else {}

    def convergence_panel(self) -> Panel | None:
        if not self.results:
            return None
        return Panel(
            "LIME: samples drawn",
            "image",
            "samples",
            self.cap,
            bars=[r.samples for r in self.results],
            reference=f"{lime_stopping.MATCHED_SAMPLES}-sample LIME",
        )

    def stability(self) -> dict[str, Stability]:
        """The predicted top-5 superpixel overlap with a rerun under another seed, from bootstrap
        resamples of each run's own samples (``lime_adapter.resampled_agreement``)."""
        results = self.results if self.complete else []
        values = [r.stability for r in results if r.stability is not None]
        return {
            METHOD: Stability(
                float(np.mean(values)) if values else None,
                f"LIME, the top-{lime_stopping.TOP_K} superpixel overlap with a rerun under "
                f"another seed, predicted by refitting lime on bootstrap resamples of its own "
                f"samples ({len(values)} images)",
            )
        }

    def record(self) -> dict:
        rule = (
            f"stock lime, {self.cap} independent samples (the course's)"
            if self.course
            else f"foldover Hadamard samples (masks and complements) in rounds of {lime_stopping.ROUND_SAMPLES}, at least "
            f"{lime_stopping.MIN_SAMPLES}, until as precise as {lime_stopping.MATCHED_SAMPLES} "
            f"independent ones and the top {lime_stopping.TOP_K} separated by "
            f">= {lime_stopping.TOP_SEPARATION:g} standard error; cap {self.cap}"
        )
        return {
            "rule": rule,
            "samples": [r.samples for r in self.results],
            "needed": [[round(t[1], 1) for t in r.trace] for r in self.results],
            "separation": [[round(t[2], 2) for t in r.trace] for r in self.results],
        }


def lime_of(
    run: Run,
    cfg: RunConfig,
    deadline: Deadline,
    i: int,
    label: int,
    samples: int | None = None,
) -> lime_adapter.LimeResult:
    """LIME for explained image ``i`` (gray images go to lime as RGB and back); with the trust
    checks on, also its predicted agreement with a rerun (no extra model forwards). A replay
    gives ``samples``, drawn exactly."""
    s = run.subject
    return lime_adapter.explain(
        run.inference,
        lime_adapter.as_rgb(s.pixels[i]),
        label,
        to_input=run.to_input,
        channels=run.pre.channels,
        # a replayed 0 (the image failed before its first batch) fails again at the cap
        samples=samples or cfg.lime_samples,
        seed=cfg.seed,
        adaptive=cfg.adaptive,
        exact=samples is not None,
        stop=deadline.passed,
        stability_rounds=STABILITY_ROUNDS if cfg.trust else 0,
        head=run.output.kind,
    )


def course_lime_of(
    run: Run,
    cfg: RunConfig,
    deadline: Deadline,
    i: int,
    explainer: lime_image.LimeImageExplainer,
    samples: int | None = None,
) -> lime_adapter.LimeResult:
    """Stock lime on explained image ``i``'s model input, as the course's sample code."""
    s = run.subject
    if deadline.passed():
        raise lime_adapter.OutOfTime
    return course.lime_explain(
        explainer,
        run.inference,
        s.x[i],
        int(s.target[i]),
        samples=samples or cfg.lime_samples,
        batch_size=cfg.batch_size,
    )


def explain_images(
    run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm
) -> list[lime_adapter.LimeResult]:
    """LIME for each explained image in turn, until done or out of time. The course's images
    share one random stream, drawn from in the order they are explained. A replay explains the
    images the replayed run did, each with its count of samples."""
    s = run.subject
    shared = course.lime_explainer(cfg.seed) if cfg.conventions == COURSE else None
    replayed = run.replayed(METHOD, "samples", cfg.lime_samples)
    counts: list[int | None] = list(replayed) if replayed is not None else [None] * len(s.paths)
    results = []
    for i, samples in enumerate(counts):
        try:
            results.append(
                lime_of(run, cfg, deadline, i, int(s.target[i]), samples)
                if shared is None
                else course_lime_of(run, cfg, deadline, i, shared, samples)
            )
        except lime_adapter.OutOfTime:
            run.cuts.append(
                f"{NAME}: {len(s.paths) - i} of {len(s.paths)} images not explained, "
                "the budget was spent"
            )
            break
        bar.update()
    if len(counts) < len(s.paths) and len(results) == len(counts):
        run.cuts.append(
            f"{NAME}: {len(s.paths) - len(counts)} of {len(s.paths)} images not explained, as "
            "in the replayed run"
        )
    return results


def stage_lime(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> LimeStageResult:
    results = explain_images(run, cfg, deadline, bar)
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
