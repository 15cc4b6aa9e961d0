"""--budget: the planner prices stages with the measured speed, cuts the cheapest-to-lose work
first, and a hard deadline stops what overruns. Time here is a fake clock that only a
deliberately slow model moves, so every assertion is exact and no test depends on the machine."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hw5lib.config import RunConfig
from hw5lib.inputs.sample import SampleInfo
from hw5lib.run.budget import plan
from hw5lib.run.pipeline import run_report
from hw5lib.stages import q4_integrated_gradients, q4_smoothgrad_sigma
from hw5lib.stages.costs import RESERVE_SECONDS, Cut, Deadline, Rates, Work
from hw5lib.stages.registry import CUTS, STAGES
from tests.fake_clock import CLOCK
from tests.zoo import SlowNet

REPO = Path(__file__).resolve().parent.parent


def config(data: Path, out: Path, checkpoint: Path, **changes: object) -> RunConfig:
    base = RunConfig(
        data=data,
        out=out,
        checkpoint=checkpoint,
        model=f"{REPO / 'tests' / 'zoo.py'}:SlowNet",
        size=32,
        channel_order="rgb",
        per_class=1,
        lime_samples=100,
        filter_steps=5,
        smooth_samples=10,
        ig_steps=8,
        device="cpu",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slow") / "slow.pt"
    torch.manual_seed(0)
    torch.save(SlowNet().state_dict(), path)
    return path


def run_on_fake_clock(cfg: RunConfig) -> tuple[dict, dict[str, float]]:
    CLOCK.now = 0.0
    return run_report(cfg, progress=False, clock=CLOCK)


def test_unplanned_run_of_the_slow_model_takes_far_longer_than_the_budget(
    small_sample: SampleInfo, slow_checkpoint: Path, tmp_path: Path
) -> None:
    _, seconds = run_on_fake_clock(config(small_sample.root, tmp_path, slow_checkpoint))
    assert seconds["total"] > 4 * 60  # so the next test's 120 s budget must cut


def test_planner_fits_a_tiny_budget_by_cutting_and_says_what(
    small_sample: SampleInfo, slow_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = config(small_sample.root, tmp_path, slow_checkpoint, budget=120.0)
    man, seconds = run_on_fake_clock(cfg)
    assert seconds["total"] <= 120.0
    assert man["budget"] == {"seconds": 120.0}
    assert man["cuts"] and all("budget" in c for c in man["cuts"])
    # The cheapest work to lose went first (the sigma sweep, off here, saves nothing to cut);
    # the explanations themselves are still there.
    first = next(c for c in CUTS if c.stage != q4_smoothgrad_sigma.NAME)
    assert any(first.what in c for c in man["cuts"])
    # What ran is complete: the manifest, the report, the first figures.
    assert (tmp_path / "report.pdf").is_file()
    assert {"q1_saliency", "q3_lime", "q4_smoothgrad"} <= {f["id"] for f in man["figures"]}
    assert not any("budget was spent" in c for c in man["cuts"])  # planned, not stopped
    # The input check is correctness, not a cross-check: never skipped or cut for time.
    check = man["input_check"]
    assert check["checked"] and check["images"] > 0 and "--budget" not in check["note"]
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["rates"]["forward_per_s"] == pytest.approx(1 / 0.05)


def test_hard_deadline_stops_a_model_that_slows_down_after_planning(
    small_sample: SampleInfo, slow_checkpoint: Path, tmp_path: Path
) -> None:
    # 5x slower once past the speed measurement: every estimate is far too low.
    slowdown = 5.0
    cfg = config(
        small_sample.root,
        tmp_path,
        slow_checkpoint,
        budget=120.0,
        model_args={"slow_after": 200, "slowdown": slowdown},
        input_check=False,  # its ~1000 forwards would come first and slow the speed probe too
    )
    man, seconds = run_on_fake_clock(cfg)
    assert any("budget was spent" in c for c in man["cuts"]), (man["cuts"], seconds)
    # Stages stop between model batches: past the deadline by at most one batch (a LIME
    # round of 100 images here), which the reserve kept for the report absorbs.
    one_batch = 100 * 0.05 * slowdown
    assert seconds["total"] <= 120.0 - RESERVE_SECONDS + one_batch
    assert (tmp_path / "manifest.json").is_file() and (tmp_path / "report.pdf").is_file()


def test_a_second_probe_keeps_a_busy_moment_from_cutting(
    small_sample: SampleInfo, slow_checkpoint: Path, tmp_path: Path
) -> None:
    # The first speed probe (96 images: a warm-up and two batches of 16, forward and backward)
    # meets a machine 5x slower than the rest of the run: planned on it alone, the 120 s budget
    # would be cut (the test above); the second probe, taken before the first cut, sees the
    # real speed, so nothing is cut and every figure is the full one.
    cfg = config(
        small_sample.root,
        tmp_path,
        slow_checkpoint,
        budget=120.0,
        model_args={"slow_after": 96, "slowdown": 0.2},
        input_check=False,
    )
    man, seconds = run_on_fake_clock(cfg)
    assert man["cuts"] == []
    assert seconds["total"] <= 120.0
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["rates"]["forward_per_s"] == pytest.approx(1 / (0.05 * 0.2))


def test_generous_budget_cuts_nothing(
    small_sample: SampleInfo, slow_checkpoint: Path, tmp_path: Path
) -> None:
    man, _ = run_on_fake_clock(
        config(small_sample.root, tmp_path, slow_checkpoint, budget=10_000.0)
    )
    assert [c for c in man["cuts"] if "budget" in c] == []


# ---------------------------------------------------------------------- the planner alone

RATES = Rates(forward=10.0, backward=5.0)


def test_plan_applies_cuts_in_order_until_the_estimate_fits() -> None:
    cfg = RunConfig(data=None, out=Path("o"), checkpoint=Path("c"))
    costs = [
        ("A", lambda c: Work(forward=c.lime_samples)),  # 100 s at 1000 samples
        ("B", lambda c: Work(backward=c.smooth_samples)),  # 10 s at 50 samples
    ]
    cuts = [
        Cut("B", "fewer B", {"smooth_samples": 25}),
        Cut("C", "not a remaining stage", {"trust": False}),
        Cut("A", "fewer A", {"lime_samples": 500}),
        Cut("A", "no A", {"skip": True}),
    ]
    p = plan(cfg, costs, RATES, 80.0, cuts)
    assert [c.what for c in p.cuts] == ["fewer B", "fewer A"]
    assert p.total == pytest.approx(55.0)
    assert p.cfg.smooth_samples == 25 and p.cfg.lime_samples == 500 and p.cfg.trust
    p = plan(cfg, costs, RATES, 1.0, cuts)
    assert "A" in p.cfg.skip_stages and p.seconds["A"] == 0.0
    assert plan(cfg, costs, RATES, 200.0, cuts).cuts == []


def test_every_cut_names_its_own_stage_and_changes_a_real_setting() -> None:
    cfg = RunConfig(data=None, out=Path("o"), checkpoint=Path("c"))
    for stage in STAGES:
        for cut in stage.cuts:
            assert cut.stage == stage.name
            assert cut.apply(cfg) != cfg
    assert len({c.rank for c in CUTS}) == len(CUTS)  # one order over all stages


def test_cuts_go_cross_checks_first_then_subsets_then_whole_stages() -> None:
    order = [(c.stage, c.change) for c in CUTS]
    assert order == [
        ("Q4 SmoothGrad sigma sweep", {"skip": True}),  # an extra, off unless asked for
        ("trust checks", {"randomize_sampled": False}),
        ("Q3 confusion matrix", {"eval_limit": 500}),
        ("Q4 DeepDream", {"dream_images": 1}),
        ("trust checks", {"deletion_steps": 8}),
        ("Q4 SHAP", {"shap_evaluations": 1}),
        ("Q2 filters", {"filter_layer_count": 2}),
        ("Q3 LIME", {"lime_samples": 600}),
        ("Q4 SHAP", {"skip": True}),
        ("trust checks", {"skip": True}),
        ("Q4 DeepDream", {"skip": True}),
        ("Q3 confusion matrix", {"eval_limit": 100}),
        ("Q4 Integrated Gradients", {"ig_steps": 16}),
        ("Q4 SmoothGrad", {"smooth_samples": 20}),
        ("Q2 filters", {"filter_layer_count": 1}),
        ("Q2 filters", {"filter_steps": 40}),
        ("Q3 LIME", {"lime_samples": 300}),
        ("Q4 feature maps", {"skip": True}),
        ("Q4 Grad-CAM, LayerCAM", {"skip": True}),
    ]


def test_deadline_counts_the_reserve_and_never_expires_without_a_budget() -> None:
    CLOCK.now = 100.0
    d = Deadline(60.0, CLOCK)
    CLOCK.advance(60.0 - RESERVE_SECONDS - 1)
    assert d.left() == pytest.approx(1.0) and not d.passed()
    CLOCK.advance(2)
    assert d.passed()
    assert Deadline(None, CLOCK).left() == float("inf")


def test_worst_case_prices_ig_at_its_cap_since_its_rounds_keep_every_gradient() -> None:
    # IG's rounds refine one subdivision, every earlier gradient kept: an image that never
    # converges evaluates exactly --ig-steps gradients (no discarded rounds to price).
    cfg = RunConfig(data=None, out=Path("o"), checkpoint=Path("c"), ig_steps=32)
    at_cap = {s.name: s.share.at_cap(cfg) for s in STAGES if s.share is not None}
    assert at_cap.pop(q4_integrated_gradients.NAME) == 1.0
    assert set(at_cap.values()) == {1.0}  # LIME, SmoothGrad, filters: their caps
    assert q4_integrated_gradients.share_at_cap(replace(cfg, adaptive=False)) == 1.0


def test_a_cut_never_raises_a_setting_the_user_set_lower() -> None:
    cfg = RunConfig(data=None, out=Path("o"), checkpoint=Path("c"), lime_samples=100)
    assert Cut("Q3 LIME", "cap", {"lime_samples": 600}).apply(cfg) == cfg
    assert Cut("Q3 confusion matrix", "subset", {"eval_limit": 500}).apply(cfg).eval_limit == 500


def test_a_budget_that_is_not_positive_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hw5lib.cli import main

    code = main(["report", str(tmp_path), str(tmp_path / "out"), "--checkpoint", "x.pt",
                 "--budget", "-5"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "hw5: error: --budget must be positive, got -5.0"


def test_help_states_the_stopping_rules_and_the_budget(capsys: pytest.CaptureFixture[str]) -> None:
    from hw5lib.cli import main

    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps each option's help
    for rule in ("foldover Hadamard", "at least", "0.98", "completeness error", "--budget SECONDS"):
        assert rule in text
