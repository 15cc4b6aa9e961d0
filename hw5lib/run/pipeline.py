"""Run a report: set it up (subject.py), plan and run each registry stage under one tqdm bar,
isolate a stage that fails, and write manifest.json and report.pdf.

Data flows one way: config -> inputs -> stages (methods, figures) -> manifest -> report. Nothing
here draws or differentiates by itself.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from hw5lib import __version__
from hw5lib.config import RunConfig
from hw5lib.errors import UserError
from hw5lib.inputs.datasets import OUT_OF_RANGE_FATE, csv_images, open_dataset
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
from hw5lib.report.portable import folder_name, model_spec_name, relative_name
from hw5lib.run.budget import (
    PLAN_MARGIN,
    Clock,
    Deadline,
    Plan,
    Rates,
    measure_rates,
    plan,
    stage_allowance,
)
from hw5lib.run.context import Failure, Run
from hw5lib.run.replay import Decisions, check_same_subject, read_replay
from hw5lib.run.subject import prepare
from hw5lib.stages import STAGES, Stage, cuts_of
from hw5lib.stages.appendix_convergence import ID as CONVERGENCE_ID
from hw5lib.stages.appendix_convergence import convergence_records, write_convergence
from hw5lib.stages.q2_filters import FiltersResult
from hw5lib.stages.q3_confusion import ConfusionResult
from hw5lib.stages.q4_deepdream import DreamResult
from hw5lib.stages.record import FigureRecord
from hw5lib.stages.trust_table import TrustResult, trust_manifest

log = logging.getLogger(__name__)

# RunConfig fields that hold paths of this machine: the manifest records them on their own.
PATH_FIELDS = ("data", "out", "checkpoint", "notes", "command", "replay")


def expected_shares(run: Run, *, at_cap: RunConfig | None = None) -> dict[str, float]:
    """Each adaptive stage's share of its cap: what it spent in this run once it ran, else its
    expected share; with ``at_cap``, what it would spend if nothing converged."""
    shares = {}
    for stage in run.registry:
        if stage.share is None:
            continue
        spent = run.results[stage.name].share if stage.name in run.results else None
        shares[stage.name] = spent if spent is not None else stage.share.expected
        if at_cap is not None:
            shares[stage.name] = stage.share.at_cap(at_cap)
    return shares


def plan_from(run: Run, base: RunConfig, rates: Rates, index: int) -> Plan:
    """The stages from ``index`` on, planned to the time left."""
    stages = run.registry
    shares = expected_shares(run)
    costs = [
        (s.name, lambda c, s=s: s.cost(run, c, shares))
        for s in stages[index:]
        if s.name not in run.skipped
    ]
    return plan(base, costs, rates, run.deadline.left() * PLAN_MARGIN, cuts_of(stages))


def plan_stage(run: Run, base: RunConfig, rates: Rates, index: int) -> float | None:
    """Re-plan the stages from ``index`` on to the time left; set the stage's config and record
    its cuts. Returns the stage's worst-case seconds, or None when it is cut altogether."""
    stage = run.registry[index]
    left = run.deadline.left()
    p = plan_from(run, base, rates, index)
    run.cfg = p.cfg
    for cut in p.cuts:
        if cut.stage == stage.name:
            run.cuts.append(f"{stage.name}: {cut.what}, to fit the {base.budget:.0f} s budget")
    if stage.name in p.cfg.skip_stages:
        return None
    # A stage that may not finish in the time left is not started: a sampled method at its
    # cap (it need not converge early) must fit, or its figure would be cut off half-done.
    worst = worst_case(run, stage, rates)
    if worst > left:
        run.cuts.append(
            f"{stage.name}: not run, it may need {worst:.0f} s and {max(left, 0):.0f} s of the "
            f"{base.budget:.0f} s budget were left"
        )
        return None
    return worst


@contextmanager
def timed(run: Run, name: str, clock: Clock = time.perf_counter) -> Iterator[None]:
    start = clock()
    try:
        yield
    finally:
        run.seconds[name] = clock() - start


def run_stage(run: Run, stage: Stage, clock: Clock, progress: bool) -> None:
    """Run one stage; anything but a user error is recorded as its failure and the run goes on
    (what it wrote before failing stays listed under outputs)."""
    with (
        timed(run, stage.name, clock),
        tqdm(
            total=stage.units(run),
            desc=stage.name,
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar,
    ):
        try:
            run.results[stage.name] = stage.run(run, bar)
        except UserError:  # the user's to fix: the run stops (Ctrl-C is no Exception)
            raise
        except Exception as err:
            message = f"{type(err).__name__}: {err}".partition("\n")[0]
            run.failures.append(Failure(stage.name, message))
            log.warning("stage %s failed (%s); the other stages go on", stage.name, message)
            log.info("stage %s traceback", stage.name, exc_info=True)


def figure_records(run: Run) -> list[FigureRecord]:
    records = [f for r in run.results.values() for f in r.figures]
    try:
        appendix = write_convergence(run)
    except Exception as err:  # the appendix figure must not cost the manifest
        run.failures.append(Failure("appendix convergence", f"{type(err).__name__}: {err}"))
        appendix = None
    return records + ([appendix] if appendix else [])


def parameters(cfg: RunConfig) -> dict:
    """The run's settings as the manifest records them: no path of this machine (the data,
    checkpoint, output and notes are recorded on their own, by name or hash)."""
    params = {k: v for k, v in vars(cfg).items() if k not in PATH_FIELDS}
    params["images"] = [relative_name(cfg.data, p) for p in cfg.images]
    params["model"] = model_spec_name(cfg.model) if cfg.model else None
    if cfg.preprocess:  # only then: earlier manifests stay byte-identical
        params["preprocess"] = model_spec_name(cfg.preprocess)
    else:
        params.pop("preprocess")
    if cfg.threads is None:  # torch's own choice: the manifest stays as before the option
        params.pop("threads")
    if cfg.checkpoint_key is None:  # the one state_dict that fits: as before the option
        params.pop("checkpoint_key")
    return params


def manifest(run: Run, figures: Sequence[FigureRecord]) -> dict:
    cfg = run.cfg
    c, h, w = run.pre.channels, *run.pre.size
    confusion = run.find(ConfusionResult)
    return {
        "tool": {"name": "hw5", "version": __version__},
        "run": {
            "seed": cfg.seed,
            "device": run.device.type,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": f"{platform.system()}-{platform.machine()}",
            "command": cfg.command,
        },
        "model": {
            "name": type(run.model).__name__,
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "architecture": portable_architecture(run.loaded.architecture),
            "input": [c, h, w],
            "classes": run.classes,
            "input_size": run.input_size,
            "output": run.output.to_dict(),
            "fast_paths": run.fast_paths,
        },
        "checkpoint": {"file": cfg.checkpoint.name, "sha256": run.loaded.sha256},
        "dataset": {
            "root": folder_name(cfg.data),
            "explained_split": open_dataset(cfg.data).root.name if cfg.data else None,
            "images": [relative_name(cfg.data, p) for p in run.subject.paths],
            "targets": run.subject.target.cpu().tolist(),
            "predictions": run.subject.pred.tolist(),
            "confidence": [round(float(v), 6) for v in run.subject.prob.max(1).values],
            "csv": table.to_dict() if (table := csv_images(cfg.data)) else None,
            "labels_out_of_range": labels_out_of_range(run),
        },
        "preprocess": run.pre.to_dict(),
        # the convention the run used, how it was chosen, every candidate's accuracy
        "input_check": run.input_check.to_dict() if run.input_check else None,
        "parameters": parameters(cfg),
        "notes": {"sha256": run.notes.sha256} if run.notes else None,
        "figures": [f.to_dict() for f in figures],
        "accuracy": confusion.accuracy if confusion else None,
        "top_confusions": confusion.top_confusions if confusion else [],
        "trust": trust_manifest(run.find(TrustResult)),
        "budget": {"seconds": cfg.budget} if cfg.budget is not None else None,
        "cuts": [
            f"{name}: skipped, a TorchScript model takes no forward hooks (pass the model "
            "definition with --model and a state_dict to get it)"
            for name in run.skipped
        ]
        + run.cuts,
        "failures": [f.to_dict() for f in run.failures],
        "interrupted": run.interrupted,
        "skipped_images": [
            {"file": relative_name(cfg.data, s.path), "reason": s.reason}
            for s in run.skipped_images
        ],
        "convergence": convergence_records(run),
        "decisions": decisions(run).to_dict(),
        "replayed": ({"sha256": run.replay.sha256, "cut": run.replay_cut} if run.replay else None),
        "outputs": dict(sorted(run.outputs.items())),
    }


OUT_OF_RANGE_LISTED = 20  # files the manifest names; the count covers all of them


def labels_out_of_range(run: Run) -> dict | None:
    """The files whose label names no class of the model: how many, the first by name, and
    what the run did with them (None when there are none)."""
    if not run.out_of_range:
        return None
    return {
        "count": len(run.out_of_range),
        "files": [
            {"file": relative_name(run.cfg.data, p), "label": label}
            for p, label in run.out_of_range[:OUT_OF_RANGE_LISTED]
        ],
        "treated_as": OUT_OF_RANGE_FATE,
    }


def decisions(run: Run) -> Decisions:
    """What this run decided beyond the per-image counts under "convergence": what --replay
    reads back to make the same decisions."""
    ascent, dream = run.find(FiltersResult), run.find(DreamResult)
    return Decisions(
        stage_config=dict(run.stage_config),
        skipped_stages=tuple(run.cut_stages),
        filters=tuple(ascent.layers) if ascent else None,
        dream_steps=dream.steps if dream else None,
    )


def portable_architecture(architecture: dict) -> dict:
    """A ``--model`` architecture names its file by name, not where it lies."""
    spec = architecture.get("model")
    return architecture | ({"model": model_spec_name(spec)} if isinstance(spec, str) else {})


def planned_figures(run: Run) -> list[str]:
    """The figure ids the run's stages plan to write, before any of them runs."""
    ids = [i for s in run.registry if s.name not in run.skipped for i in s.figures(run)]
    return [*ids, CONVERGENCE_ID]


def measure(run: Run, clock: Clock) -> Rates:
    """The model's speed on this machine, on a batch of the explained images."""
    n = min(16, run.cfg.batch_size)
    probe = run.subject.x[:n].repeat(2, 1, 1, 1)[:n]
    return measure_rates(run.inference, run.model, probe, clock=clock)


OUTPUT_SUFFIXES = (".png", ".npz")  # what a stage writes (the manifest lists nothing else)


def previous_outputs(out: Path) -> list[str]:
    """The files a previous run's manifest.json in ``out`` says hw5 wrote (plain names only:
    never a path that could point outside the folder)."""
    try:
        names = json.loads((out / "manifest.json").read_text()).get("outputs") or {}
    except (OSError, ValueError, AttributeError):
        return []
    return [
        n for n in names if isinstance(n, str) and n == Path(n).name and n.endswith(OUTPUT_SUFFIXES)
    ]


def remove_stale(out: Path, previous: Sequence[str], written: Mapping[str, str]) -> None:
    """Remove what an earlier run wrote and this one did not (a figure now cut, or not reached
    before an interrupt): manifest.json then describes exactly the files in the folder."""
    for name in previous:
        if name not in written:
            (out / name).unlink(missing_ok=True)


def write_records(run: Run, previous: Sequence[str]) -> dict:
    """manifest.json and report.pdf for what this run did, however it ended."""
    cfg = run.cfg
    man = manifest(run, figure_records(run))
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
    run.deadline, run.registry = deadline, tuple(stages)
    check = run.input_check.seconds if run.input_check else 0.0
    run.seconds["load"] = deadline.elapsed() - check
    run.seconds["input check"] = check
    run.skipped = [s.name for s in run.registry if run.scripted and s.hooks]
    if cfg.notes is not None:  # a figure the notes misname fails now, before any stage runs
        run.notes = read_notes(cfg.notes)
        check_references(run.notes, planned_figures(run))
    rates = None
    try:
        if cfg.budget is not None:
            rates = measure(run, clock)
            run.seconds["measure speed"] = deadline.elapsed() - run.seconds["load"] - check
            run.replay_cut = replay_overrun(run, cfg, rates)
        rates = run_stages(run, cfg, rates, clock, progress)
    except (KeyboardInterrupt, UserError) as stop:  # record what was done, then stop
        if isinstance(stop, KeyboardInterrupt):
            run.interrupted = type(stop).__name__
        run.cfg = cfg
        write_records(run, previous)
        raise
    run.cfg = cfg
    with timed(run, "report.pdf", clock):
        man = write_records(run, previous)
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


def replay_overrun(run: Run, cfg: RunConfig, rates: Rates) -> str | None:
    """Why the replay does not fit the budget (the planner's estimate of its stages at the
    replayed settings), said in one warning line; None when it fits."""
    if run.replay is None:
        return None
    replay, shares = run.replay, expected_shares(run)
    skip = {*run.skipped, *replay.decisions.skipped_stages}
    needed = sum(
        s.cost(run, replay.config(s.name, cfg), shares).at(rates)
        for s in run.registry
        if s.name not in skip
    )
    left = run.deadline.left() * PLAN_MARGIN
    if needed <= left:
        return None
    why = (
        f"the replay of {replay.name} needs about {needed:.0f} s and {max(left, 0):.0f} s of "
        f"the {cfg.budget:.0f} s budget are left: cut to fit as without --replay"
    )
    log.warning(why)
    return why


def record_settings(run: Run, cfg: RunConfig, stage: Stage) -> None:
    """The settings of ``stage`` (its options and what its cuts change) that the budget's cuts
    changed from the command's, as it is about to run with ``run.cfg``: what --replay gives it
    again."""
    read = {*stage.options, *(k for c in stage.cuts for k in c.change if k != "skip")}
    changed = {
        k: getattr(run.cfg, k) for k in sorted(read) if getattr(run.cfg, k) != getattr(cfg, k)
    }
    if changed:
        run.stage_config[stage.name] = changed


def run_stages(
    run: Run, cfg: RunConfig, rates: Rates | None, clock: Clock, progress: bool
) -> Rates | None:
    """Each stage in registry order: planned to the time left (or with the settings the
    replayed run gave it), run, its failure isolated. Returns the rates last planned with."""
    replayed = run.replay is not None and not run.replay_cut  # a cut replay is planned anew
    cut_before = run.replay.decisions.skipped_stages if run.replay and replayed else ()
    reprobed = False
    for index, stage in enumerate(run.registry):
        if stage.name in run.skipped:
            continue
        if stage.name in cut_before:
            run.cuts.append(f"{stage.name}: not run, as in the replayed run")
            run.cut_stages.append(stage.name)
            continue
        if run.deadline.passed():
            run.cuts.append(f"{stage.name}: not run, the {cfg.budget:.0f} s budget was spent")
            run.cut_stages.append(stage.name)
            continue
        if rates is None or replayed:
            run.cfg = run.replay.config(stage.name, cfg) if run.replay else cfg
            worst = None if rates is None else worst_case(run, stage, rates)
        else:
            if not reprobed and plan_from(run, cfg, rates, index).cuts:
                # A cut changes the figures: before the first, a second probe, so that one
                # moment of other work on the machine does not decide it.
                rates, reprobed = rates.best(measure(run, clock)), True
            worst = plan_stage(run, cfg, rates, index)
            if worst is None:
                run.cut_stages.append(stage.name)
                continue
        record_settings(run, cfg, stage)
        if worst is None:
            run_stage(run, stage, clock, progress)
            continue
        whole, run.deadline = run.deadline, run.deadline.within(stage_allowance(worst))
        try:
            run_stage(run, stage, clock, progress)
        finally:
            run.deadline = whole
    return rates


def worst_case(run: Run, stage: Stage, rates: Rates) -> float:
    """The stage's seconds at ``run.cfg`` if its sampled methods spend their caps."""
    return stage.cost(run, run.cfg, expected_shares(run, at_cap=run.cfg)).at(rates)


__all__ = ["RunConfig", "run_report", "sha256_file"]
