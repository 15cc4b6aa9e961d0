"""The trust table's reruns on a randomized model: what they cost is tied to the trained run."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from hw5lib import attributions
from hw5lib.context import RunConfig
from hw5lib.pipeline import prepare
from hw5lib.sample import SampleInfo
from hw5lib.stages import ig_baseline, stage_integrated_gradients
from hw5lib.trust import method_table


def test_ig_randomization_row_uses_the_steps_the_trained_maps_needed(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(
        data=small_sample.root, out=tmp_path, checkpoint=tiny_checkpoint, ig_steps=64, device="cpu"
    )
    run = prepare(cfg)
    with tqdm(disable=True) as bar:
        stage_integrated_gradients(run, bar)
    gradients = run.convergence["Integrated Gradients"]["gradients"]  # type: ignore[index]
    steps = run.extra["ig_final_steps"]
    assert isinstance(steps, int)
    # 8 + 16 + ... + steps gradients for the image that needed the most: its last doubling.
    assert max(gradients) == 2 * steps - 8

    # The randomized rerun takes that count (set below the cap, so the cap would not match).
    run.extra["ig_final_steps"] = 8
    s = run.subject  # (the trust stage passes a randomized copy; any model shows the steps)
    got = method_table(run)["Integrated Gradients"](run.model, s.x, s.target)
    direct = attributions.integrated_gradients(
        run.model, s.x, s.target, baseline=ig_baseline(run, cfg.ig_baseline), steps=8
    )
    torch.testing.assert_close(got, attributions.channel_sum(direct), rtol=1e-4, atol=1e-6)
    at_cap = attributions.integrated_gradients(
        run.model, s.x, s.target, baseline=ig_baseline(run, cfg.ig_baseline), steps=cfg.ig_steps
    )
    assert not torch.allclose(got, attributions.channel_sum(at_cap), rtol=1e-4, atol=1e-6)
