"""What the input check found: each candidate's score against the convention in use, the
evidence it weighed, and the convention chosen (recorded in manifest.json "input_check")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hw5lib.inputs.conventions import Convention
from hw5lib.inputs.sequential_test import (
    ALPHA,
    MAX_FORWARDS,
    MIN_IMAGES,
    Tally,
    mcnemar,
)

TEST = "exact McNemar (two-sided binomial test on the images one convention gets right and the other wrong)"


# where the convention in use came from (REPLAYED: the --replay'd run's, whichever way it chose)
ADOPTED, RECORDED, FLAGS, REPLAYED = "adopted", "recorded", "flags", "replayed"


@dataclass(frozen=True)
class Score:
    """One candidate's result: its accuracy on the ``images`` it was scored on and, against the
    convention in use on the same images, the images only it got right (``wins``), only the
    other got right (``losses``) and McNemar's ``p`` (None for the convention in use)."""

    convention: Convention
    accuracy: float
    images: int = 0
    wins: int = 0
    losses: int = 0
    p: float | None = None

    def to_dict(self) -> dict:
        d = self.convention.to_dict() | {"accuracy": round(self.accuracy, 4), "images": self.images}
        if self.p is not None:
            d |= {"discordant": [self.wins, self.losses], "p": float(f"{self.p:.4g}")}
        return d


@dataclass(frozen=True)
class Evidence:
    """The test behind the decision, as manifest.json records it."""

    level: float  # the per-comparison level: ALPHA / (challengers x tests)
    challengers: int
    tests: int  # rounds at which the test is made
    rounds: tuple[int, ...]  # images scored after each round run
    forwards: int  # images x conventions scored
    decision: str  # "adopted", "warned", "kept: ..." (why)

    def to_dict(self) -> dict:
        return {
            "name": TEST,
            "alpha": ALPHA,
            "correction": f"Bonferroni over {self.challengers} challengers x {self.tests} rounds",
            "level": float(f"{self.level:.4g}"),
            "min_images": MIN_IMAGES,
            "rounds": list(self.rounds),
            "forwards": self.forwards,
            "max_forwards": MAX_FORWARDS,
            "decision": self.decision,
        }


@dataclass(frozen=True)
class InputCheck:
    """What the check measured and decided; ``note`` is the one line said about it (stderr and
    the report's title page), ``warning`` the same when it asks the user to act."""

    chosen: Convention  # the convention the run uses
    source: str  # ADOPTED, RECORDED, FLAGS or REPLAYED
    note: str
    images: int = 0  # labelled images scored; 0: not checked
    scores: tuple[Score, ...] = ()
    warning: str | None = None
    seconds: float = 0.0  # wall time: timings.json, not the manifest (reruns stay identical)
    evidence: Evidence | None = None

    @property
    def checked(self) -> bool:
        return self.images > 0

    def to_dict(self) -> dict:
        return {
            "checked": self.checked,
            "images": self.images,
            "test": None if self.evidence is None else self.evidence.to_dict(),
            "candidates": [s.to_dict() for s in self.scores],
            "chosen": self.chosen.to_dict(),
            "source": self.source,
            "note": self.note,
            "warning": self.warning,
        }


def preprocess_source(flagged: bool, recorded: bool) -> str:
    return FLAGS if flagged else RECORDED if recorded else ADOPTED


def scores_of(
    tally: Tally, conventions: Sequence[Convention], in_use: Convention
) -> tuple[Score, ...]:
    out = []
    for c in conventions:
        right = tally.of(c)
        accuracy = float(right.float().mean()) if len(right) else 0.0
        if c == in_use:
            out.append(Score(c, accuracy, len(right)))
            continue
        wins, losses = tally.versus(c, in_use)
        out.append(Score(c, accuracy, len(right), wins, losses, mcnemar(wins, losses)))
    return tuple(out)


def unchecked(in_use: Convention, source: str, why: str) -> InputCheck:
    return InputCheck(in_use, source, f"the input convention could not be checked: {why}")
