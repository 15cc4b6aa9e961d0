"""manifest.json: what a run did, built from the run's state and the sections its stages'
results declare (``StageResult.manifest_entries``, ``decisions``, ``convergence``), with each
stage's ``absent`` entries where it did not run. No stage is named here."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hw5lib import __version__
from hw5lib.config import RunConfig
from hw5lib.inputs.datasets import OUT_OF_RANGE_FATE, csv_images, open_dataset
from hw5lib.inputs.replay import Decisions
from hw5lib.report.audit_tables import AUDIT_JSON, audit_overview
from hw5lib.report.portable import folder_name, model_spec_name, relative_name
from hw5lib.stages.appendix_convergence import convergence_records, write_convergence
from hw5lib.stages.context import Failure, Run
from hw5lib.stages.protocol import FigureRecord
from hw5lib.stages.stage import Stage

logger = logging.getLogger(__name__)

# RunConfig fields that hold paths of this machine: the manifest records them on their own.
PATH_FIELDS = ("data", "out", "checkpoint", "notes", "command", "replay")
OUT_OF_RANGE_LISTED = 20  # files the manifest names; the count covers all of them


def figure_records(run: Run) -> list[FigureRecord]:
    """Every stage's figures in run order, then the appendix convergence figure."""
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
    if not cfg.smooth_sigmas:  # no sigma sweep: as before the option
        params.pop("smooth_sigmas")
    if not cfg.shap:  # no SHAP: as before the option
        params.pop("shap")
        params.pop("shap_evaluations")
    return params


def stage_entries(run: Run, stages: Sequence[Stage]) -> dict[str, Any]:
    """The top-level sections the stages supply: each result's, else its stage's ``absent``."""
    entries: dict[str, Any] = {}
    for stage in stages:
        result = run.results.get(stage.name)
        entries |= dict(stage.absent) | (result.manifest_entries() if result else {})
    return entries


def decisions(run: Run, stages: Sequence[Stage]) -> Decisions:
    """What this run decided beyond the per-image counts under "convergence": what --replay
    reads back to make the same decisions."""
    made: dict[str, Any] = {}
    for stage in stages:
        result = run.results.get(stage.name)
        made |= dict(stage.undecided) | (result.decisions() if result else {})
    return Decisions(dict(run.stage_config), tuple(run.cut_stages), made)


def manifest(run: Run, figures: Sequence[FigureRecord], stages: Sequence[Stage]) -> dict:
    cfg = run.cfg
    c, h, w = run.pre.channels, *run.pre.size
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
        **stage_entries(run, stages),
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
        "decisions": decisions(run, stages).to_dict(),
        "replayed": ({"sha256": run.replay.sha256, "cut": run.replay_cut} if run.replay else None),
        "outputs": dict(sorted(run.outputs.items())),
        # only with an audit: a manifest without one stays as before
        **({"audit": a} if (a := audit_summary(cfg.out, run.loaded.sha256)) else {}),
    }


def audit_summary(out: Path, sha256: str) -> dict | None:
    """The per-class summary of the audit ``hw5.py audit DATA OUT`` wrote into this run's OUT,
    when it audited this very checkpoint (same sha256); None when there is none to show."""
    try:
        audit = json.loads((Path(out) / AUDIT_JSON).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("%s not shown in report.pdf: %s", AUDIT_JSON, err)
        return None
    if not isinstance(audit, dict) or (audit.get("model") or {}).get("sha256") != sha256:
        logger.info("%s audited another checkpoint: not shown in report.pdf", AUDIT_JSON)
        return None
    try:
        return audit_overview(audit)
    except (KeyError, TypeError, AttributeError) as err:
        logger.warning("%s not shown in report.pdf: unexpected shape (%r)", AUDIT_JSON, err)
        return None


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


def portable_architecture(architecture: dict) -> dict:
    """A ``--model`` architecture names its file by name, not where it lies."""
    spec = architecture.get("model")
    return architecture | ({"model": model_spec_name(spec)} if isinstance(spec, str) else {})


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
