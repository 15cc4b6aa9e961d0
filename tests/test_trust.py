"""The trust table's reruns on a randomized model: what they cost is tied to the trained run."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.inputs.sample import SampleInfo
from hw5lib.methods import attributions, faithfulness, integrated_gradients, randomization
from hw5lib.run.subject import prepare
from hw5lib.stages import q1_saliency, q4_cams, q4_grad_x_input
from hw5lib.stages.costs import Deadline
from hw5lib.stages.ig_estimate import FIRST_CELLS, TOLERANCE, baseline
from hw5lib.stages.q4_integrated_gradients import (
    IntegratedGradientsResult,
    stage_integrated_gradients,
)
from hw5lib.stages.q4_smoothgrad import NOISE_STREAM, ROUND, SmoothGradResult, stage_smoothgrad
from hw5lib.stages.registry import STAGES, methods_of
from hw5lib.stages.trust_table import method_table, stage_trust


def run_deadline() -> Deadline:
    return Deadline(None)  # no budget: never passed


def test_ig_randomization_row_is_capped_at_the_gradients_the_trained_maps_needed(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(
        data=small_sample.root, out=tmp_path, checkpoint=tiny_checkpoint, ig_steps=64, device="cpu"
    )
    run = prepare(cfg)
    run.methods = methods_of(STAGES)
    with tqdm(disable=True) as bar:
        result = stage_integrated_gradients(run, cfg, run_deadline(), bar)
    run.results["Q4 Integrated Gradients"] = result
    # Rounds keep every gradient: the image that needed the most spent exactly that many.
    assert max(result.gradients) == result.final_steps == max(result.steps)

    # The randomized rerun runs the same rule capped at that count (set below the cap here).
    result.final_steps = 7
    assert run.find(IntegratedGradientsResult) is result
    s = run.subject  # (the trust stage passes a randomized copy; any model shows the cap)
    got = method_table(run, cfg, run_deadline())["Integrated Gradients"](run.model, s.x, s.target)

    def rule(cap: int) -> attributions.Converged:
        return integrated_gradients.integrated_gradients_until_converged(
            run.model, s.x, s.target, baseline=baseline(run, cfg.ig_baseline), max_steps=cap,
            cells=FIRST_CELLS, tolerance=TOLERANCE,
        )  # fmt: skip

    direct = rule(7)
    assert int(direct.used.max()) <= 7
    torch.testing.assert_close(got, attributions.channel_sum(direct.value), rtol=1e-4, atol=1e-6)
    at_cap = attributions.channel_sum(rule(cfg.ig_steps).value)
    assert not torch.allclose(got, at_cap, rtol=1e-4, atol=1e-6)


def test_smoothgrad_randomization_row_uses_each_images_trained_sample_count(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(data=small_sample.root, out=tmp_path, checkpoint=tiny_checkpoint, device="cpu")
    run = prepare(cfg)
    run.methods = methods_of(STAGES)
    with tqdm(disable=True) as bar:
        result = stage_smoothgrad(run, cfg, run_deadline(), bar)
    run.results["Q4 SmoothGrad"] = result
    assert run.find(SmoothGradResult) is result
    s = run.subject
    random = randomization.randomized_copy(run.model, 5, torch.Generator().manual_seed(1))
    # Counts other than the trained run's own, per image: what the rerun spends is theirs.
    counts = [2 * ROUND if i % 2 else ROUND for i in range(len(s.paths))]
    result.samples = counts
    got = method_table(run, cfg, run_deadline())["SmoothGrad"](random, s.x, s.target)
    for count in set(counts):  # each image as a fixed-count SmoothGrad with the trained noise
        fixed = attributions.smoothgrad_until_converged(
            attributions.saliency,
            random,
            s.x,
            s.target,
            max_samples=count,
            min_samples=count,
            round_samples=ROUND,
            sigma=cfg.smooth_sigma,
            generator=run.generator(NOISE_STREAM),
        )
        assert (fixed.used == count).all()
        rows = [i for i, c in enumerate(counts) if c == count]
        torch.testing.assert_close(got[rows], fixed.value[rows], rtol=0, atol=0)
    # Run until converged, the random model reaches other counts than these.
    until = attributions.smoothgrad_until_converged(
        attributions.saliency,
        random,
        s.x,
        s.target,
        max_samples=cfg.smooth_samples,
        min_samples=ROUND,
        round_samples=ROUND,
        sigma=cfg.smooth_sigma,
        generator=run.generator(NOISE_STREAM),
    )
    assert until.used.tolist() != counts


class _Counting(nn.Module):
    """Counts the images its model scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += len(x)
        return self.model(x)


def test_saliency_and_grad_x_input_reruns_share_one_input_gradient(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(data=small_sample.root, out=tmp_path, checkpoint=tiny_checkpoint, device="cpu")
    run = prepare(cfg)
    run.methods = methods_of(STAGES)
    s = run.subject
    model = _Counting(randomization.randomized_copy(run.model, 5, torch.Generator().manual_seed(2)))
    table = method_table(run, cfg, run_deadline())
    got = {m: table[m](model, s.x, s.target) for m in (q1_saliency.METHOD, q4_grad_x_input.METHOD)}
    assert model.images == len(s.x)  # one pass for both
    for module in (q1_saliency, q4_grad_x_input):  # each method's own explain, a pass each
        alone = module.explain(run, cfg, run_deadline())(model, s.x, s.target)
        torch.testing.assert_close(got[module.METHOD], alone, rtol=0, atol=0)
    assert model.images == 3 * len(s.x)
    other = s.x.flip(0)  # other images: a new gradient, not the cached one
    torch.testing.assert_close(
        table[q1_saliency.METHOD](model, other, s.target),
        q1_saliency.explain(run, cfg, run_deadline())(model, other, s.target),
        rtol=0,
        atol=0,
    )


def test_trust_rows_repeat_exactly_and_match_one_deletion_call_per_method(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(data=small_sample.root, out=tmp_path, checkpoint=tiny_checkpoint, device="cpu")
    run = prepare(cfg)
    run.methods = methods_of(STAGES)
    s = run.subject
    with tqdm(disable=True) as bar:
        for stage in (q1_saliency.STAGE, q4_grad_x_input.STAGE, q4_cams.STAGE):
            run.results[stage.name] = stage.run(run, cfg, run_deadline(), bar)
        first = stage_trust(run, cfg, run_deadline(), bar)
        second = stage_trust(run, cfg, run_deadline(), bar)
    assert first.rows == second.rows  # deterministic: the same numbers twice
    maps = run.maps()
    scored = [row for row in first.rows if row["method"] in maps]
    assert {row["method"] for row in scored} == set(maps)
    for row in scored:
        alone = faithfulness.deletion_insertion(
            run.inference,
            s.x,
            s.target,
            maps[row["method"]],
            steps=cfg.deletion_steps,
            baseline="zero",
            insertion_baseline="blur",
            batch_size=cfg.batch_size,
            head=run.output.kind,
        )
        assert abs(row["deletion"] - float(alone["deletion"].mean())) <= 1e-6
        assert abs(row["insertion"] - float(alone["insertion"].mean())) <= 1e-6
        assert "randomization" in row
