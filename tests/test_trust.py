"""The trust table's reruns on a randomized model: what they cost is tied to the trained run."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from hw5lib import attributions
from hw5lib.config import RunConfig
from hw5lib.sample import SampleInfo
from hw5lib.stages import STAGES
from hw5lib.stages.integrated_gradients import (
    FIRST_CELLS,
    TOLERANCE,
    IntegratedGradientsResult,
    baseline,
    stage_integrated_gradients,
)
from hw5lib.stages.trust import method_table
from hw5lib.subject import prepare


def test_ig_randomization_row_is_capped_at_the_gradients_the_trained_maps_needed(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(
        data=small_sample.root, out=tmp_path, checkpoint=tiny_checkpoint, ig_steps=64, device="cpu"
    )
    run = prepare(cfg)
    run.registry = STAGES
    with tqdm(disable=True) as bar:
        result = stage_integrated_gradients(run, bar)
    run.results["Q4 Integrated Gradients"] = result
    # Rounds keep every gradient: the image that needed the most spent exactly that many.
    assert max(result.gradients) == result.final_steps == max(result.steps)

    # The randomized rerun runs the same rule capped at that count (set below the cap here).
    result.final_steps = 7
    assert run.find(IntegratedGradientsResult) is result
    s = run.subject  # (the trust stage passes a randomized copy; any model shows the cap)
    got = method_table(run)["Integrated Gradients"](run.model, s.x, s.target)

    def rule(cap: int) -> attributions.Converged:
        return attributions.integrated_gradients_until_converged(
            run.model, s.x, s.target, baseline=baseline(run, cfg.ig_baseline), max_steps=cap,
            cells=FIRST_CELLS, tolerance=TOLERANCE,
        )  # fmt: skip

    direct = rule(7)
    assert int(direct.used.max()) <= 7
    torch.testing.assert_close(got, attributions.channel_sum(direct.value), rtol=1e-4, atol=1e-6)
    at_cap = attributions.channel_sum(rule(cfg.ig_steps).value)
    assert not torch.allclose(got, at_cap, rtol=1e-4, atol=1e-6)
