"""Appendix: how each sampled or iterated method converged in this run, at the caps it used,
from the records and panels the stages' results declare."""

from __future__ import annotations

from hw5lib.report.convergence_plot import convergence_figure, in_figure_order
from hw5lib.stages.context import Run
from hw5lib.stages.protocol import FigureRecord
from hw5lib.stages.record import write_png

ID = "appendix_convergence"
TITLE = "Convergence of the sampled and iterated methods"


def convergence_records(run: Run) -> dict[str, dict]:
    """manifest.json's "convergence": per method, its stopping rule and what each image took."""
    return {k: v for r in run.results.values() for k, v in r.convergence().items()}


def write_convergence(run: Run) -> FigureRecord | None:
    """The appendix figure; each panel draws the cap its stage ran with (a budget cut included)."""
    panels = in_figure_order(
        [p for r in run.results.values() if (p := r.convergence_panel()) is not None]
    )
    if not panels:
        return None
    write_png(run, f"{ID}.png", convergence_figure(panels, f"{TITLE} in this run"))
    rules = "; ".join(f"{k}: {v['rule']}" for k, v in convergence_records(run).items())
    notes = "".join(f"{p.note} " for p in panels if p.note)
    references = ", ".join(p.reference for p in panels if p.reference)
    return FigureRecord(
        ID,
        "Appendix",
        TITLE,
        "Each method stops once converged rather than at a fixed count. "
        + (f"{rules}. " if rules else "")
        + notes
        + f"Agreement with generous references ({references}) is measured in bench/RESULTS.md.",
        f"{ID}.png",
        None,
        {},
    )
