"""The stage registry: a method added in one place reaches the manifest, the report and the
trust table; a stage that raises costs its own figures and nothing else."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pypdf import PdfReader
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib import cli, verify
from hw5lib.config import RunConfig
from hw5lib.inputs.sample import SampleInfo
from hw5lib.methods import attributions, lime_adapter
from hw5lib.report.convergence_plot import PANEL_WIDTH, Panel
from hw5lib.report.figures import DPI
from hw5lib.run.pipeline import run_report
from hw5lib.stages.context import Explain, Method, Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Deadline, Work
from hw5lib.stages.protocol import Stability, StageResult
from hw5lib.stages.record import explained, save_attribution
from hw5lib.stages.registry import STAGES, verify_rules, with_stage
from hw5lib.stages.stage import Share, Stage
from hw5lib.tolerances import RANKED, ArrayRule

FAST = dict(lime_samples=40, filter_steps=5, smooth_samples=4, ig_steps=4, per_class=1)
CLI_FAST = ["--lime-samples", "40", "--filter-steps", "5", "--smooth-samples", "4",
            "--ig-steps", "4", "--per-class", "1", "--quiet"]  # fmt: skip


# ---------------------------------------------------------------- a throwaway sampled method: one
# file's worth of code and one registry entry, defined here and nowhere else

TOY = "Toy noisy gradient"
TOY_ID = "q4_toy"
ROUND, CAP, STREAM = 2, 8, 99
LEVELS = 3  # its "stopping rule": image i takes ROUND * (1 + i % LEVELS) samples


def noisy_gradient(model: nn.Module, x: Tensor, target: Tensor, counts: list[int]) -> Tensor:
    """Squared input gradient averaged over ``counts[i]`` noisy copies of image i [N,H,W]."""
    g = torch.Generator().manual_seed(STREAM)
    maps = []
    for xi, ti, n in zip(x, target, counts, strict=True):
        noisy = xi + 0.1 * torch.randn((n, *xi.shape), generator=g)
        grad = attributions.input_gradient(model, noisy, ti.repeat(n))
        maps.append(grad.pow(2).sum(dim=1).mean(dim=0))
    return torch.stack(maps)


@dataclass
class ToyResult(StageResult):
    samples: list[int] = field(default_factory=list)

    def convergence(self) -> dict[str, dict]:
        return {TOY: {"rule": f"toy rule, rounds of {ROUND}; cap {CAP}", "samples": self.samples}}

    def convergence_panel(self) -> Panel:
        return Panel(
            "Toy: samples", "image", "samples", CAP, bars=self.samples, reference="toy ref"
        )

    def stability(self) -> dict[str, Stability]:
        return {TOY: Stability(0.5, "toy, a constant")}

    def decisions(self) -> dict[str, Any]:
        return {"toy_rounds": max(self.samples) // ROUND}


def toy_explain(run: Run, cfg: RunConfig, deadline: Deadline) -> Explain:
    trained = run.find(ToyResult)
    return lambda m, x, t: noisy_gradient(m, x, t, trained.samples if trained else [CAP] * len(x))


def stage_toy(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> ToyResult:
    s = run.subject
    replayed = run.replayed(TOY, "samples", CAP)
    counts = replayed or [ROUND * (1 + i % LEVELS) for i in range(len(s.paths))]
    maps = noisy_gradient(run.gradients, s.x, s.target, counts)
    bar.update()
    record = save_attribution(run, TOY_ID, "Q4", "Toy", "A throwaway sampled method.", maps)
    return ToyResult([record], {TOY: maps.cpu()}, share=np.mean(counts) / CAP, samples=counts)


def toy_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    return Work(backward=explained(run) * CAP * shares["Q4 toy"], seconds=FIGURE_SECONDS)


TOY_STAGE = Stage(
    "Q4 toy",
    "Q4",
    stage_toy,
    toy_cost,
    methods=(Method(TOY, toy_explain, sampled=True, rerun_note="the toy at its trained counts"),),
    share=Share(expected=0.5),
    figures=lambda run: (TOY_ID,),
    undecided={"toy_rounds": None},
    verify=(ArrayRule(TOY_ID, "map", RANKED), ArrayRule(TOY_ID, "attribution", RANKED)),
)


def report_text(out: Path) -> str:
    return "\n".join(p.extract_text() for p in PdfReader(out / "report.pdf").pages)


def test_a_sampled_method_registered_in_one_entry_reaches_every_part_of_the_run(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Figure list, manifest, convergence record and figure, trust table, replay and verify all
    take the toy from its registry entry alone."""
    cfg = RunConfig(
        data=small_sample.root, out=tmp_path / "a", checkpoint=tiny_checkpoint, device="cpu",
        **FAST,
    )  # fmt: skip
    stages = with_stage(TOY_STAGE)
    man, _ = run_report(cfg, progress=False, stages=stages)
    assert man["failures"] == []
    figure = next(f for f in man["figures"] if f["id"] == TOY_ID)
    assert figure["section"] == "Q4" and f"{TOY_ID}.npz" in man["outputs"]
    assert "Toy" in report_text(cfg.out)
    # convergence: its record in the manifest, its rule and reference in the appendix caption,
    # its panel in the figure (six panels: LIME, SmoothGrad, IG, SHAP, the toy, filter ascent)
    n = len(man["dataset"]["images"])
    counts = [ROUND * (1 + i % LEVELS) for i in range(n)]
    assert man["convergence"][TOY]["samples"] == counts
    appendix = next(f for f in man["figures"] if f["id"] == "appendix_convergence")
    assert "toy rule" in appendix["caption"] and "toy ref" in appendix["caption"]
    with Image.open(cfg.out / appendix["png"]) as png:
        assert png.width == round(6 * PANEL_WIDTH * DPI)
    # trust table: its row, rerun on the randomized model, its stability and notes
    columns, rows = man["trust"]["columns"], {r[0]: r for r in man["trust"]["rows"]}
    assert rows[TOY][columns.index("randomization rank corr.")] is not None
    assert rows[TOY][columns.index("stability")] == 0.5
    assert "toy, a constant" in man["trust"]["notes"]
    assert "the toy at its trained counts" in man["trust"]["notes"]
    assert man["decisions"]["toy_rounds"] == max(counts) // ROUND

    # replay: another rule decides other counts; the replay makes the recorded ones again
    monkeypatch.setattr(sys.modules[__name__], "LEVELS", 1)
    fresh, _ = run_report(replace(cfg, out=tmp_path / "b"), progress=False, stages=stages)
    assert fresh["convergence"][TOY]["samples"] != counts
    replayed, _ = run_report(
        replace(cfg, out=tmp_path / "c", replay=cfg.out / "manifest.json"),
        progress=False,
        stages=stages,
    )
    assert replayed["convergence"][TOY]["samples"] == counts
    assert (tmp_path / "c" / f"{TOY_ID}.npz").read_bytes() == (
        cfg.out / f"{TOY_ID}.npz"
    ).read_bytes()

    # verify: its declared rule (rank correlation) accepts a rounding-like change that the
    # default for a float array (EXACT) would not
    with np.load(tmp_path / "c" / f"{TOY_ID}.npz") as z:
        arrays = dict(z)
    arrays["map"] = arrays["map"] * 1.01
    np.savez(tmp_path / "c" / f"{TOY_ID}.npz", **arrays)
    declared = verify.verify(cfg.out, tmp_path / "c", verify_rules(stages))
    toy = next(v for v in declared.verdicts if v.figure == TOY_ID)
    assert toy.verdict == verify.REPRODUCED
    default = verify.verify(cfg.out, tmp_path / "c", verify_rules(STAGES))
    assert next(v for v in default.verdicts if v.figure == TOY_ID).verdict == verify.DIFFERS


def test_with_stage_puts_a_new_entry_before_the_trust_checks() -> None:
    stages = with_stage(TOY_STAGE)
    assert stages[-1] is STAGES[-1] and stages[-2] is TOY_STAGE
    assert stages[:-2] == STAGES[:-1]


def test_a_stage_that_raises_costs_its_figures_and_nothing_else(
    small_sample: SampleInfo,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("lime broke")

    monkeypatch.setattr(lime_adapter, "explain", broken)
    out = tmp_path / "out"
    code = cli.main(["report", str(small_sample.root), str(out), "--checkpoint",
                     str(tiny_checkpoint), "--device", "cpu", *CLI_FAST])  # fmt: skip
    assert code == cli.STAGE_FAILED
    err = capsys.readouterr().err
    assert "Q3 LIME" in err and "Traceback" not in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["failures"] == [{"stage": "Q3 LIME", "message": "RuntimeError: lime broke"}]
    ids = {f["id"] for f in man["figures"]}
    assert "q3_lime" not in ids and not (out / "q3_lime.png").exists()
    for fid in ("q1_saliency", "q2_filters", "q3_confusion", "q4_smoothgrad", "q4_grad_cam",
                "q4_deepdream", "appendix_convergence"):  # fmt: skip
        assert fid in ids and (out / f"{fid}.png").is_file()
    assert "LIME" not in {row[0] for row in man["trust"]["rows"]}
    text = report_text(out)
    assert "What failed" in text and "lime broke" in text


def test_every_stage_lists_options_that_exist_and_a_section_the_report_has() -> None:
    fields = set(RunConfig.__dataclass_fields__)
    for stage in STAGES:
        assert set(stage.options) <= fields, stage.name
        assert stage.section in ("Q1", "Q2", "Q3", "Q4")
        assert stage.name.startswith(stage.section) or stage.name == "trust checks"
    names = [m.name for s in STAGES for m in s.methods]
    assert len(names) == len(set(names))


def test_readme_layout_names_every_module_of_the_package() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    for path in sorted((root / "hw5lib").rglob("*.py")):
        if path.name != "__init__.py":
            assert path.name in layout, f"README's Layout does not name {path.name}"
