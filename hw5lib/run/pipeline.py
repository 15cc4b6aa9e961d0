"""Run a report: set it up (subject.py), plan each registry stage to the time left and run it
with its planned settings and deadline under one tqdm bar, isolate a stage that fails, and write
manifest.json (manifest.py) and report.pdf.

Data flows one way: config -> inputs -> stages (methods, figures) -> manifest -> report. Nothing
here draws or differentiates by itself, and no stage is named: the runner reads only what the
registry entries declare.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.errors import UserError
from hw5lib.inputs.replay import check_same_subject, read_replay
from hw5lib.model.hooks import torch_threads
from hw5lib.report import pdf
from hw5lib.report.notes import check_references, read_notes, unproduced
from hw5lib.report.outputs import (
    atomic_write_bytes,
    finite_or_null,
    json_bytes,
    output_folder,
    sha256_file,
)
from hw5lib.report.portable import relative_name
from hw5lib.run.budget import PLAN_MARGIN, Plan, measure_rates, plan, stage_allowance
from hw5lib.run.manifest import figure_records, manifest, previous_outputs, remove_stale
from hw5lib.run.subject import prepare
from hw5lib.stages.appendix_convergence import ID as CONVERGENCE_ID
from hw5lib.stages.context import Failure, Run
from hw5lib.stages.costs import Clock, Deadline, Rates
from hw5lib.stages.registry import STAGES, cuts_of, methods_of
from hw5lib.stages.stage import Stage

log = logging.getLogger(__name__)

# RunConfig fields that hold paths of this machine: the manifest records them on their own.
PATH_FIELDS = ("data", "out", "checkpoint", "notes", "command", "replay")


def expected_shares(
    run: Run, stages: Sequence[Stage], *, at_cap: RunConfig | None = None
) -> dict[str, float]:
    """Each adaptive stage's share of its cap: what it spent in this run once it ran, else its
    expected share; with ``at_cap``, what it would spend if nothing converged."""
    shares = {}
    for stage in stages:
        if stage.share is None:
            continue
        spent = run.results[stage.name].share if stage.name in run.results else None
        shares[stage.name] = spent if spent is not None else stage.share.expected
        if at_cap is not None:
            shares[stage.name] = stage.share.at_cap(at_cap)
    return shares


def plan_from(
    run: Run, stages: Sequence[Stage], deadline: Deadline, rates: Rates, index: int
) -> Plan:
    """The stages from ``index`` on, planned to the time left."""
    shares = expected_shares(run, stages)
    costs = [
        (s.name, lambda c, s=s: s.cost(run, c, shares))
        for s in stages[index:]
        if s.name not in run.skipped
    ]
    return plan(run.cfg, costs, rates, deadline.left() * PLAN_MARGIN, cuts_of(stages))


def plan_stage(
    run: Run, stages: Sequence[Stage], deadline: Deadline, rates: Rates, index: int
) -> tuple[RunConfig, float] | None:
    """Re-plan the stages from ``index`` on to the time left and record the stage's cuts.
    Returns its planned settings and worst-case seconds, or None when it is cut altogether."""
    stage, budget = stages[index], run.cfg.budget
    left = deadline.left()
    p = plan_from(run, stages, deadline, rates, index)
    for cut in p.cuts:
        if cut.stage == stage.name:
            run.cuts.append(f"{stage.name}: {cut.what}, to fit the {budget:.0f} s budget")
    if stage.name in p.cfg.skip_stages:
        return None
    # A stage that may not finish in the time left is not started: a sampled method at its
    # cap (it need not converge early) must fit, or its figure would be cut off half-done.
    worst = worst_case(run, stages, stage, p.cfg, rates)
    if worst > left:
        run.cuts.append(
            f"{stage.name}: not run, it may need {worst:.0f} s and {max(left, 0):.0f} s of the "
            f"{budget:.0f} s budget were left"
        )
        return None
    return p.cfg, worst


@contextmanager
def timed(run: Run, name: str, clock: Clock = time.perf_counter) -> Iterator[None]:
    start = clock()
    try:
        yield
    finally:
        run.seconds[name] = clock() - start


def run_stage(
    run: Run, stage: Stage, cfg: RunConfig, deadline: Deadline, clock: Clock, progress: bool
) -> None:
    """Run one stage with its planned settings and deadline; anything but a user error is
    recorded as its failure and the run goes on (what it wrote before failing stays listed
    under outputs)."""
    with (
        timed(run, stage.name, clock),
        tqdm(
            total=stage.units(run, cfg),
            desc=stage.name,
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar,
    ):
        try:
            run.results[stage.name] = stage.run(run, cfg, deadline, bar)
        except UserError:  # the user's to fix: the run stops (Ctrl-C is no Exception)
            raise
        except Exception as err:
            message = f"{type(err).__name__}: {err}".partition("\n")[0]
            run.failures.append(Failure(stage.name, message))
            log.warning("stage %s failed (%s); the other stages go on", stage.name, message)
            log.info("stage %s traceback", stage.name, exc_info=True)


def planned_figures(run: Run, stages: Sequence[Stage]) -> list[str]:
    """The figure ids the run's stages plan to write, before any of them runs."""
    ids = [i for s in stages if s.name not in run.skipped for i in s.figures(run)]
    return [*ids, CONVERGENCE_ID]


def measure(run: Run, clock: Clock) -> Rates:
    """The model's speed on this machine, on a batch of the explained images."""
    n = min(16, run.cfg.batch_size)
    probe = run.subject.x[:n].repeat(2, 1, 1, 1)[:n]
    return measure_rates(run.inference, run.model, probe, clock=clock)


def write_records(run: Run, stages: Sequence[Stage], previous: Sequence[str]) -> dict:
    """manifest.json and report.pdf for what this run did, however it ended."""
    cfg = run.cfg
    man = manifest(run, figure_records(run), stages)
    man, non_finite = finite_or_null(man)
    man["non_finite"] = non_finite  # each null that stands for a NaN or inf, and where
    remove_stale(cfg.out, previous, run.outputs)
    atomic_write_bytes(cfg.out / "manifest.json", json_bytes(man))
    if run.notes and not run.interrupted:  # an interrupted run wrote only some, as it says
        for ref in unproduced(run.notes, [f["id"] for f in man["figures"]]):
            log.warning(
                "notes line %d names %s, which this run did not write", ref.line, ref.figure
            )
    pdf.write_report(man, cfg.out, cfg.out / "report.pdf", run.notes)
    return man


def run_report(
    cfg: RunConfig,
    *,
    progress: bool = True,
    clock: Clock = time.perf_counter,
    started: float | None = None,
    stages: Sequence[Stage] = STAGES,
) -> tuple[dict, dict[str, float]]:
    """Run every stage, write the figures, arrays and manifest.json; return them and timings.

    With ``cfg.budget`` the model's speed is measured first and every stage is planned to the
    time left (budget.py); past the deadline, stages stop and the manifest names what was cut.
    A stage that fails is named in the manifest's ``failures``; the others still run. On an
    interrupt (Ctrl-C, SIGTERM) or a user error in a stage, the manifest and report of what was
    done are written before the exception goes on.
    """
    with (
        output_folder(cfg.out),  # checked writable and locked before the model loads
        torch_threads(cfg.threads),  # --threads: another CPU's reduction order, for verify
    ):
        return _run_report(cfg, progress, clock, started, stages)


def _run_report(
    cfg: RunConfig, progress: bool, clock: Clock, started: float | None, stages: Sequence[Stage]
) -> tuple[dict, dict[str, float]]:
    previous = previous_outputs(cfg.out)
    deadline = Deadline(cfg.budget, clock, started)  # the clock runs from the command's start
    replay = read_replay(cfg.replay) if cfg.replay is not None else None
    run = prepare(cfg, deadline, replay.preprocess if replay else None)
    if replay is not None:
        check_same_subject(
            replay, run.loaded.sha256, [relative_name(cfg.data, p) for p in run.subject.paths]
        )
        # a --targets pred near a tie could pick another class on another machine
        run.subject.target = torch.tensor(replay.targets, device=run.subject.target.device)
        run.replay = replay
    stages = tuple(stages)
    check = run.input_check.seconds if run.input_check else 0.0
    run.seconds["load"] = deadline.elapsed() - check
    run.seconds["input check"] = check
    run.skipped = [s.name for s in stages if run.scripted and s.hooks]
    run.methods = methods_of(stages, run.skipped)
    if cfg.notes is not None:  # a figure the notes misname fails now, before any stage runs
        run.notes = read_notes(cfg.notes)
        check_references(run.notes, planned_figures(run, stages))
    rates = None
    try:
        if cfg.budget is not None:
            rates = measure(run, clock)
            run.seconds["measure speed"] = deadline.elapsed() - run.seconds["load"] - check
            run.replay_cut = replay_overrun(run, stages, deadline, rates)
        rates = run_stages(run, stages, deadline, rates, clock, progress)
    except (KeyboardInterrupt, UserError) as stop:  # record what was done, then stop
        if isinstance(stop, KeyboardInterrupt):
            run.interrupted = type(stop).__name__
        write_records(run, stages, previous)
        raise
    with timed(run, "report.pdf", clock):
        man = write_records(run, stages, previous)
    run.seconds["total"] = deadline.elapsed()
    atomic_write_bytes(
        cfg.out / "timings.json",
        json_bytes(
            {
                "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
                "rates": rates.to_dict() if rates else None,
            }
        ),
    )
    return man, run.seconds


def replay_overrun(
    run: Run, stages: Sequence[Stage], deadline: Deadline, rates: Rates
) -> str | None:
    """Why the replay does not fit the budget (the planner's estimate of its stages at the
    replayed settings), said in one warning line; None when it fits."""
    if run.replay is None:
        return None
    cfg, replay, shares = run.cfg, run.replay, expected_shares(run, stages)
    skip = {*run.skipped, *replay.decisions.skipped_stages}
    needed = sum(
        s.cost(run, replay.config(s.name, cfg), shares).at(rates)
        for s in stages
        if s.name not in skip
    )
    left = deadline.left() * PLAN_MARGIN
    if needed <= left:
        return None
    why = (
        f"the replay of {replay.name} needs about {needed:.0f} s and {max(left, 0):.0f} s of "
        f"the {cfg.budget:.0f} s budget are left: cut to fit as without --replay"
    )
    log.warning(why)
    return why


def record_settings(run: Run, stage: Stage, planned: RunConfig) -> None:
    """The settings of ``stage`` (its options and what its cuts change) that the budget's cuts
    changed from the command's, as it is about to run with ``planned``: what --replay gives it
    again."""
    read = {*stage.options, *(k for c in stage.cuts for k in c.change if k != "skip")}
    changed = {
        k: getattr(planned, k) for k in sorted(read) if getattr(planned, k) != getattr(run.cfg, k)
    }
    if changed:
        run.stage_config[stage.name] = changed


def run_stages(
    run: Run,
    stages: Sequence[Stage],
    deadline: Deadline,
    rates: Rates | None,
    clock: Clock,
    progress: bool,
) -> Rates | None:
    """Each stage in registry order: planned to the time left (or with the settings the
    replayed run gave it), run with those settings and its share of the deadline, its failure
    isolated. Returns the rates last planned with."""
    cfg = run.cfg
    replayed = run.replay is not None and not run.replay_cut  # a cut replay is planned anew
    cut_before = run.replay.decisions.skipped_stages if run.replay and replayed else ()
    reprobed = False
    for index, stage in enumerate(stages):
        if stage.name in run.skipped:
            continue
        if stage.name in cut_before:
            run.cuts.append(f"{stage.name}: not run, as in the replayed run")
            run.cut_stages.append(stage.name)
            continue
        if deadline.passed():
            run.cuts.append(f"{stage.name}: not run, the {cfg.budget:.0f} s budget was spent")
            run.cut_stages.append(stage.name)
            continue
        if rates is None or replayed:
            planned = run.replay.config(stage.name, cfg) if run.replay else cfg
            worst = None if rates is None else worst_case(run, stages, stage, planned, rates)
        else:
            if not reprobed and plan_from(run, stages, deadline, rates, index).cuts:
                # A cut changes the figures: before the first, a second probe, so that one
                # moment of other work on the machine does not decide it.
                rates, reprobed = rates.best(measure(run, clock)), True
            decided = plan_stage(run, stages, deadline, rates, index)
            if decided is None:
                run.cut_stages.append(stage.name)
                continue
            planned, worst = decided
        record_settings(run, stage, planned)
        allowance = deadline if worst is None else deadline.within(stage_allowance(worst))
        run_stage(run, stage, planned, allowance, clock, progress)
    return rates


def worst_case(
    run: Run, stages: Sequence[Stage], stage: Stage, cfg: RunConfig, rates: Rates
) -> float:
    """The stage's seconds at ``cfg`` if its sampled methods spend their caps."""
    return stage.cost(run, cfg, expected_shares(run, stages, at_cap=cfg)).at(rates)


__all__ = ["RunConfig", "run_report", "sha256_file"]
