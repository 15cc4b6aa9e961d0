"""Integrated Gradients as a run estimates it: from the run's baseline, on cells refined until
the completeness error is small (or to the cap with --no-adaptive), and in a replay on the
recorded splits. The Q4 stage's maps and the trust table's rerun on the randomized model both
come from ``integrated_gradients_of``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hw5lib.config import RunConfig
from hw5lib.errors import UserError
from hw5lib.methods import attributions, faithfulness, integrated_gradients
from hw5lib.stages.context import Run
from hw5lib.stages.costs import Deadline

METHOD = "Integrated Gradients"
TOLERANCE = 0.01  # completeness error at which IG stops adding gradients
# Equal cells of the first round (5 gradients). Measured on the full-size HW3 Classifier with
# real photos: most images reach 1% in 5-13 gradients, none needed more than 22.
FIRST_CELLS = 4


def tolerance(cfg: RunConfig) -> float:
    """The completeness error IG stops at; 0 with --no-adaptive: every image refined to the cap."""
    return TOLERANCE if cfg.adaptive else 0.0


def baseline(run: Run, kind: str) -> Tensor:
    x = run.subject.x
    if kind == "black":
        return run.to_input(torch.zeros_like(x.cpu()))
    if kind == "blur":
        return faithfulness.gaussian_blur(x)
    raise UserError(f"--ig-baseline must be 'black' or 'blur', not {kind!r}")


def integrated_gradients_of(
    run: Run,
    cfg: RunConfig,
    deadline: Deadline,
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    cap: int | None = None,
) -> attributions.Converged:
    """IG with the run's baseline, refined until converged (at most ``cap``, default
    --ig-steps, gradients per image), or to the cap with --no-adaptive; in a replay of the
    explained images, the recorded splits, round by round (the rounds within the cap where the
    replay was cut)."""
    recorded = run.replay.recorded(METHOD, "splits") if run.replay else None
    # the stage's own maps: the trust table's randomized model decides its splits anew
    same = recorded is not None and len(recorded) == len(x) and model is run.gradients
    return integrated_gradients.integrated_gradients_until_converged(
        model,
        x,
        target,
        baseline=baseline(run, cfg.ig_baseline),
        max_steps=cfg.ig_steps if cap is None else cap,
        cells=FIRST_CELLS,
        tolerance=tolerance(cfg),
        batch_size=cfg.batch_size,
        stop=deadline.passed,
        splits_per_image=[[[float(a) for a in r] for r in s] for s in recorded] if same else None,
    )
