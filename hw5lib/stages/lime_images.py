"""LIME for each explained image in turn, as the Q3 LIME stage (``q3_lime``) runs it: ours
(foldover Hadamard samples, ``lime_adapter``) or, with --conventions course, stock lime as the
course's sample code; until every image is explained, the budget is spent, or as a replayed run
did. It defines no stage."""

from __future__ import annotations

from lime import lime_image
from tqdm import tqdm

from hw5lib.config import COURSE, RunConfig
from hw5lib.methods import course, lime_adapter
from hw5lib.stages.context import Run
from hw5lib.stages.costs import Deadline
from hw5lib.stages.lime_result import METHOD

# Bootstrap refit pairs per image behind the trust table's LIME stability: ten pairs put the
# mean over a report's images within a few hundredths of its value with more pairs.
STABILITY_ROUNDS = 10


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
    run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm, name: str
) -> list[lime_adapter.LimeResult]:
    """LIME for each explained image in turn, until done or out of time. The course's images
    share one random stream, drawn from in the order they are explained. A replay explains the
    images the replayed run did, each with its count of samples. ``name``, the stage's, heads
    the cuts it notes."""
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
                f"{name}: {len(s.paths) - i} of {len(s.paths)} images not explained, "
                "the budget was spent"
            )
            break
        bar.update()
    if len(counts) < len(s.paths) and len(results) == len(counts):
        run.cuts.append(
            f"{name}: {len(s.paths) - len(counts)} of {len(s.paths)} images not explained, as "
            "in the replayed run"
        )
    return results
