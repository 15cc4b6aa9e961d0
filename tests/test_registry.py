"""The stage registry: a method added in one place reaches the manifest, the report and the
trust table; a stage that raises costs its own figures and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pypdf import PdfReader
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib import cli
from hw5lib.config import RunConfig
from hw5lib.inputs.sample import SampleInfo
from hw5lib.methods import attributions, lime_adapter
from hw5lib.run.budget import FIGURE_SECONDS, Work
from hw5lib.run.context import Run
from hw5lib.run.pipeline import run_report
from hw5lib.stages import STAGES, with_stage
from hw5lib.stages.record import Explain, Method, Stage, StageResult, explained, save_attribution

FAST = dict(lime_samples=40, filter_steps=5, smooth_samples=4, ig_steps=4, per_class=1)
CLI_FAST = ["--lime-samples", "40", "--filter-steps", "5", "--smooth-samples", "4",
            "--ig-steps", "4", "--per-class", "1", "--quiet"]  # fmt: skip


# ---------------------------------------------------------------- a throwaway method: one file's
# worth of code and one registry entry, defined here and nowhere else


def squared_gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """(d logit / d x)^2 summed over channels: [N,C,H,W] -> [N,H,W]."""
    return attributions.input_gradient(model, x, target).pow(2).sum(dim=1)


def explain(run: Run) -> Explain:
    return squared_gradient


def stage_squared_gradient(run: Run, bar: tqdm) -> StageResult:
    s = run.subject
    maps = squared_gradient(run.gradients, s.x, s.target)
    bar.update()
    record = save_attribution(
        run, "q4_squared_gradient", "Q4", "Squared gradient", "A throwaway method.", maps
    )
    return StageResult([record], {"Squared gradient": maps.cpu()})


SQUARED = Stage(
    "Q4 squared gradient",
    "Q4",
    stage_squared_gradient,
    lambda run, cfg, shares: Work(backward=explained(run), seconds=FIGURE_SECONDS),
    methods=(Method("Squared gradient", explain),),
)


def report_text(out: Path) -> str:
    return "\n".join(p.extract_text() for p in PdfReader(out / "report.pdf").pages)


def test_a_method_registered_in_one_entry_reaches_manifest_report_and_trust_table(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(
        data=small_sample.root, out=tmp_path, checkpoint=tiny_checkpoint, device="cpu", **FAST
    )
    man, _ = run_report(cfg, progress=False, stages=with_stage(SQUARED))
    figure = next(f for f in man["figures"] if f["id"] == "q4_squared_gradient")
    assert figure["section"] == "Q4" and (tmp_path / figure["png"]).is_file()
    assert "q4_squared_gradient.npz" in man["outputs"]
    rows = {row[0]: row for row in man["trust"]["rows"]}
    columns = man["trust"]["columns"]
    row = rows["Squared gradient"]
    assert (
        row[columns.index("randomization rank corr.")] is not None
    )  # its explain() was rerun on the randomized model
    assert "Squared gradient" in report_text(tmp_path)
    assert man["failures"] == []


def test_with_stage_puts_a_new_entry_before_the_trust_checks() -> None:
    stages = with_stage(SQUARED)
    assert stages[-1] is STAGES[-1] and stages[-2] is SQUARED
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
