"""Appendix: how each sampled or iterated method converged in this run, at the caps it used."""

from __future__ import annotations

from hw5lib.report import figures
from hw5lib.run.context import Run
from hw5lib.stages import q3_lime, q4_integrated_gradients, q4_smoothgrad
from hw5lib.stages.q2_filters import FiltersResult
from hw5lib.stages.record import FigureRecord

ID = "appendix_convergence"


def convergence_records(run: Run) -> dict[str, dict]:
    """manifest.json's "convergence": per method, its stopping rule and what each image took."""
    found = {
        "LIME": run.find(q3_lime.LimeStageResult),
        "SmoothGrad": run.find(q4_smoothgrad.SmoothGradResult),
        "Integrated Gradients": run.find(q4_integrated_gradients.IntegratedGradientsResult),
    }
    return {
        name: r.convergence()
        for name, r in found.items()
        if r is not None and (not isinstance(r, q3_lime.LimeStageResult) or r.results)
    }


def write_convergence(run: Run) -> FigureRecord | None:
    """The appendix figure; each panel draws the cap its stage ran with (a budget cut included)."""
    records = convergence_records(run)
    ascent = run.find(FiltersResult)
    if not records and ascent is None:
        return None
    lime_run = run.find(q3_lime.LimeStageResult)
    # the traces as the manifest rounds them: the figure shows what the manifest records
    fig = figures.convergence_figure(
        records.get("LIME", {}).get("samples"),
        lime_run.cap if lime_run else run.cfg.lime_samples,
        records.get("SmoothGrad", {}).get("agreement"),
        q4_smoothgrad.ROUND,
        records.get("Integrated Gradients", {}).get("completeness_error"),
        records.get("Integrated Gradients", {}).get("gradients_per_round"),
        ascent.curves if ascent else [],
        "Convergence of the sampled and iterated methods in this run",
    )
    run.write_png(f"{ID}.png", fig)
    rules = "; ".join(f"{k}: {v['rule']}" for k, v in records.items())
    return FigureRecord(
        ID,
        "Appendix",
        "Convergence of the sampled and iterated methods",
        "Each method stops once converged rather than at a fixed count. "
        + rules
        + ". The filter-ascent panel shows each filter's mean activation over its final value; "
        "a filter still rising at the end of its schedule is redone from a new start with one "
        "twice as long, and the higher result kept. "
        "Agreement with generous references (1000-sample LIME, 200-sample SmoothGrad, 300-step "
        "IG, 400-step ascent) is measured in bench/RESULTS.md.",
        f"{ID}.png",
        None,
        {},
    )
