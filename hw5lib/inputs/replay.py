"""--replay MANIFEST: the decisions a run's manifest.json records, read back so that a rerun
makes the same ones instead of deciding them again.

The adaptive methods decide their work as they run (LIME, SmoothGrad and IG stop per image once
converged, filter ascent redoes the filters still climbing, DeepDream stops at the deadline) and
the budget planner cuts to the measured speed. On a slower machine, or one whose floats round
differently, a rule near its threshold can decide otherwise and the figures differ; a replay
runs each stage with the recorded counts, filters and cuts, so they do not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from hw5lib.config import RunConfig
from hw5lib.errors import UserError
from hw5lib.model.preprocess import Preprocess
from hw5lib.report.outputs import sha256_bytes

# manifest.json's section of the decisions a replay reads (with "convergence"'s per-image counts)
SECTION = "decisions"
# What a replay needs, as (section, key) of manifest.json; key None: the section itself.
REQUIRED = (
    ("checkpoint", "sha256"),
    ("dataset", "images"),
    ("dataset", "targets"),
    ("convergence", None),
    ("preprocess", None),
    (SECTION, None),
)
# RunConfig fields a recorded cut may not set: where things are, and what a replay is.
NOT_REPLAYED = ("data", "out", "checkpoint", "notes", "command", "replay", "skip_stages")


@dataclass(frozen=True)
class Decisions:
    """manifest.json's "decisions": what a replay needs beyond the per-image counts."""

    stage_config: Mapping[str, Mapping[str, Any]]  # stage -> settings a budget cut changed
    skipped_stages: tuple[str, ...]  # cut altogether (budget or deadline)
    # what each stage decided as it ran (StageResult.decisions, e.g. Q2's filters and redos),
    # as JSON: the stage that reads it back (Replay.decision) parses it
    made: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage_config": {k: dict(v) for k, v in self.stage_config.items()},
            "skipped_stages": list(self.skipped_stages),
            **self.made,
        }


@dataclass(frozen=True)
class Replay:
    """A manifest's decisions, to be made again exactly."""

    name: str  # the manifest's file name, for messages
    sha256: str  # of the manifest file: the new manifest records what it replayed
    checkpoint: str  # sha256 of the checkpoint it explained
    images: tuple[str, ...]  # the explained images, as the manifest names them
    targets: tuple[int, ...]  # the class each map explained
    decisions: Decisions
    preprocess: Preprocess  # the input convention it used (the input check may have chosen it)
    # method -> its "convergence" record, whose per-image counts its stage reads (counts())
    convergence: Mapping[str, Mapping[str, Any]]

    def config(self, stage: str, cfg: RunConfig) -> RunConfig:
        """``cfg`` with the settings the replayed run's cuts gave ``stage``."""
        return replace(cfg, **self.decisions.stage_config.get(stage, {}))

    def decision(self, key: str) -> Any:
        """A stage's own "decisions" entry as the replayed run recorded it (None: not made)."""
        return self.decisions.made.get(key)

    def recorded(self, method: str, key: str) -> Any:
        """``method``'s ``key`` in its "convergence" record; None where it did not run."""
        record = self.convergence.get(method)
        if record is None:
            return None
        if key not in record:
            raise UserError(
                f"--replay {self.name}: its {method} record has no {key} (written by an older "
                "hw5); rerun without --replay"
            )
        return record[key]

    def counts(self, method: str, key: str) -> tuple[int, ...] | None:
        """``method``'s per-image ``key`` (samples, steps) as the replayed run spent them."""
        values = self.recorded(method, key)
        return None if values is None else tuple(int(v) for v in values)


def read_replay(path: Path) -> Replay:
    """The decisions of ``path``; a file that is not a manifest, or one written before hw5
    recorded them, is a one-line user error saying what is missing."""
    try:
        data = path.read_bytes()
        man = json.loads(data)
    except OSError as err:
        raise UserError(f"--replay {path}: cannot read it ({err.strerror})") from None
    except ValueError:
        raise UserError(f"--replay {path}: not a manifest.json (not JSON)") from None
    if not isinstance(man, dict):
        raise UserError(f"--replay {path}: not a manifest.json (no sections)")
    missing = [
        f"{section}.{key}" if key else section
        for section, key in REQUIRED
        if not isinstance(man.get(section), dict) or (key and key not in man[section])
    ]
    if missing:
        raise UserError(
            f"--replay {path.name}: it records no {', '.join(missing)} (written by an older "
            "hw5, or not by hw5 report); rerun without --replay"
        )
    try:
        return parse(path.name, sha256_bytes(data), man)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"--replay {path.name}: malformed decisions ({err!r})") from None


def parse(name: str, sha256: str, man: dict) -> Replay:
    return Replay(
        name=name,
        sha256=sha256,
        checkpoint=str(man["checkpoint"]["sha256"]),
        images=tuple(map(str, man["dataset"]["images"])),
        targets=tuple(map(int, man["dataset"]["targets"])),
        decisions=decisions_of(man[SECTION]),
        preprocess=Preprocess.from_dict(man["preprocess"]),
        convergence=man["convergence"],
    )


def decisions_of(section: dict) -> Decisions:
    settable = {f.name for f in fields(RunConfig)} - set(NOT_REPLAYED)
    config = {}
    for stage, changes in section["stage_config"].items():
        unknown = sorted(set(changes) - settable)
        if unknown:
            raise ValueError(f"{stage} sets {', '.join(unknown)}")
        config[stage] = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    made = {k: v for k, v in section.items() if k not in ("stage_config", "skipped_stages")}
    return Decisions(config, tuple(section["skipped_stages"]), made)


def check_same_subject(replay: Replay, checkpoint: str, images: Sequence[str]) -> None:
    """Refuse, in one line, a manifest of another model or another data set: its decisions
    were made for other images."""
    if replay.checkpoint != checkpoint:
        raise UserError(
            f"--replay {replay.name}: it was written for another checkpoint (sha256 "
            f"{replay.checkpoint[:12]}..., this one is {checkpoint[:12]}...); replay a manifest "
            "of this model, or run without --replay"
        )
    if tuple(images) != replay.images:
        first = next(
            (i for i, (a, b) in enumerate(zip(replay.images, images, strict=False)) if a != b),
            min(len(images), len(replay.images)),
        )
        there = replay.images[first] if first < len(replay.images) else "nothing"
        here = images[first] if first < len(images) else "nothing"
        raise UserError(
            f"--replay {replay.name}: it explained other images ({len(replay.images)} there, "
            f"{len(images)} here; image {first + 1} is {there} there, {here} here): another "
            "data set or other options; replay a manifest of this data, or run without --replay"
        )
