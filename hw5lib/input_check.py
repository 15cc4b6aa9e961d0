"""Which input convention the checkpoint was trained with, measured before any stage runs.

A model fed the wrong pixels (BGR for RGB, [0,1] for [-1,1], cv2's resize for PIL's) still runs
and every figure still draws, so nothing else would notice. Here the model's accuracy on a fixed,
evenly spaced sample of the labelled images is measured under each candidate convention: channel
order x reader x scaling, plus the one the flags or the checkpoint give. Each image is decoded
once per reader; the other candidates are tensor ops on those pixels.

With a convention recorded or given, it is kept, and a candidate that scores clearly better is
named in a warning. With none, the best candidate is adopted; near-ties keep the HW3 default.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from .budget import Clock, Deadline
from .data import Preprocess
from .datasets import ImageSet
from .images import load_usable
from .metrics import predict

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 200  # labelled images the check scores at most
FIRST_ROUND = 25  # images of the first round; under --budget its speed prices the next rounds
PROBE_IMAGES = 4  # a forward of this many prices the first round before it starts
# A candidate is named as better than the convention in use only when it scores at least
# WARN_GAP higher and at least CHANCE_FACTOR times chance (the majority class's share).
WARN_GAP = 0.10
CHANCE_FACTOR = 2.0
# Accuracies within TIE_MARGIN of the best are ties: the one closest to the HW3 default wins
# (on the sample set cv2's and PIL's resize score alike, and the default reader is kept).
TIE_MARGIN = 0.02
BUDGET_SHARE = 0.05  # under --budget the check may take at most this share of it

ORDERS = ("bgr", "rgb")
READERS = ("cv2", "pil")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# name -> (mean, std) after scaling to [0,1]; ImageNet's statistics only for colour models
SCALINGS: dict[str, tuple[tuple[float, ...] | None, tuple[float, ...] | None]] = {
    "[0,1]": (None, None),
    "[-1,1]": ((0.5,), (0.5,)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

# where the convention in use came from (REPLAYED: the --replay'd run's, whichever way it chose)
ADOPTED, RECORDED, FLAGS, REPLAYED = "adopted", "recorded", "flags", "replayed"


@dataclass(frozen=True)
class Convention:
    """How pixels are read and scaled; ``channel_order`` is None for a 1-channel model."""

    channel_order: str | None
    reader: str
    scaling: str  # a SCALINGS name, or "custom" for other --mean/--std
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def of(cls, pre: Preprocess) -> Convention:
        order = pre.channel_order if pre.channels == 3 else None
        name = scaling_name(pre)
        mean, std = SCALINGS[name] if name != "custom" else (pre.mean, pre.std)
        return cls(order, pre.reader, name, mean, std)

    def apply(self, pre: Preprocess) -> Preprocess:
        """``pre`` read this way (size and channels unchanged)."""
        order = self.channel_order or pre.channel_order
        return replace(pre, channel_order=order, reader=self.reader, mean=self.mean, std=self.std)

    def describe(self) -> str:
        """ "rgb, pil, [0,1]" (the scaling written out when it is custom)."""
        scaling = self.scaling
        if scaling == "custom":
            scaling = f"mean {_numbers(self.mean or (0.0,))} std {_numbers(self.std or (1.0,))}"
        return ", ".join(p for p in (self.channel_order, self.reader, scaling) if p)

    def flags_from(self, other: Convention) -> str:
        """The command-line flags that turn ``other`` into this convention."""
        flags = []
        if self.channel_order != other.channel_order and self.channel_order:
            flags.append(f"--channel-order {self.channel_order}")
        if self.reader != other.reader:
            flags.append(f"--reader {self.reader}")
        if (self.mean, self.std) != (other.mean, other.std):
            flags.append(f"--mean {_numbers(self.mean or (0.0,))}")
            flags.append(f"--std {_numbers(self.std or (1.0,))}")
        return " ".join(flags)

    def distance(self, other: Convention) -> int:
        """How many of channel order, reader and scaling differ."""
        return sum((self.channel_order != other.channel_order, self.reader != other.reader)) + int(
            (self.mean, self.std) != (other.mean, other.std)
        )

    def to_dict(self) -> dict:
        return {
            "channel_order": self.channel_order,
            "reader": self.reader,
            "scaling": self.scaling,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }


def _numbers(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def scaling_name(pre: Preprocess) -> str:
    """The SCALINGS name of ``pre``'s mean/std (one value stands for every channel)."""

    def per_channel(v: tuple[float, ...] | None, neutral: float) -> tuple[float, ...]:
        v = v or (neutral,)
        return v * pre.channels if len(v) == 1 else v

    mine = (per_channel(pre.mean, 0.0), per_channel(pre.std, 1.0))
    for name, (mean, std) in SCALINGS.items():
        if len(per_channel(mean, 0.0)) != pre.channels and mean is not None:
            continue
        theirs = (per_channel(mean, 0.0), per_channel(std, 1.0))
        if all(math.isclose(a, b) for a, b in zip(sum(mine, ()), sum(theirs, ()), strict=True)):
            return name
    return "custom"


def candidates(pre: Preprocess) -> list[Convention]:
    """Every channel order x reader x scaling for ``pre``'s channels, the HW3 default first,
    plus ``pre``'s own convention where it is none of them."""
    orders: Sequence[str | None] = ORDERS if pre.channels == 3 else (None,)
    scalings = [s for s in SCALINGS if pre.channels == 3 or s != "imagenet"]
    out = [
        Convention(order, reader, name, *SCALINGS[name])
        for order in orders
        for reader in READERS
        for name in scalings
    ]
    own = Convention.of(pre)
    if all(own.distance(c) for c in out):
        out.append(own)
    return out


@dataclass(frozen=True)
class Score:
    convention: Convention
    accuracy: float

    def to_dict(self) -> dict:
        return self.convention.to_dict() | {"accuracy": round(self.accuracy, 4)}


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

    @property
    def checked(self) -> bool:
        return self.images > 0

    def to_dict(self) -> dict:
        return {
            "checked": self.checked,
            "images": self.images,
            "candidates": [s.to_dict() for s in self.scores],
            "chosen": self.chosen.to_dict(),
            "source": self.source,
            "note": self.note,
            "warning": self.warning,
        }


def preprocess_source(flagged: bool, recorded: bool) -> str:
    return FLAGS if flagged else RECORDED if recorded else ADOPTED


def labelled_sample(split: ImageSet | None, num_outputs: int) -> tuple[list[int], list[int]]:
    """Up to SAMPLE_IMAGES indices into ``split``, evenly spaced over its sorted labelled
    images (a Food-11 or ImageFolder list is sorted by class, so this is stratified), and
    their labels."""
    if split is None:
        return [], []
    usable = [i for i, lb in enumerate(split.labels) if lb is not None and lb < num_outputs]
    n = min(len(usable), SAMPLE_IMAGES)
    picked = [usable[k * len(usable) // n] for k in range(n)]
    return picked, [int(split.labels[i]) for i in picked]  # type: ignore[arg-type]


def nested_rounds(n: int, first: int = FIRST_ROUND) -> list[list[int]]:
    """Positions 0..n-1 in rounds whose every prefix is evenly spread: every step-th position,
    then those halfway between, and so on; each round after the second doubles the images."""
    step = 1
    while n / (2 * step) >= first:
        step *= 2
    rounds = [list(range(0, n, step))]
    while step > 1:
        step //= 2
        rounds.append(list(range(step, n, 2 * step)))
    return rounds


def correct_counts(
    model: nn.Module,
    pixels: dict[str, Tensor],
    labels: Tensor,
    conventions: Sequence[Convention],
    pre: Preprocess,
    batch_size: int,
) -> Tensor:
    """(K,) images each convention gets right; ``pixels`` [N,C,H,W] in [0,1] per reader."""
    counts = []
    for c in conventions:
        x = c.apply(pre).normalize(pixels[c.reader])  # (N, C, H, W)
        counts.append(int((predict(model, x, batch_size=batch_size)[1].cpu() == labels).sum()))
    return torch.tensor(counts)


def decode(paths: Sequence[Path], pre: Preprocess) -> tuple[dict[str, Tensor], list[int]]:
    """Each image once per reader -> display-order pixels [N,C,H,W] in [0,1], and the positions
    of the images both readers could read (an unreadable file is left out)."""
    as_pixels = replace(pre, channel_order="rgb", mean=None, std=None)  # normalize() is a no-op
    loaded = {r: load_usable(paths, replace(as_pixels, reader=r)) for r in READERS}
    both = sorted(set.intersection(*(set(v.kept) for v in loaded.values())))
    return {r: v.x[[v.kept.index(i) for i in both]] for r, v in loaded.items()}, both


def forward_seconds(model: nn.Module, pre: Preprocess, clock: Clock) -> float:
    """Seconds per image of a batched forward: a probe that prices the first round."""
    probe = torch.zeros(PROBE_IMAGES, pre.channels, *pre.size)
    start = clock()
    predict(model, probe, batch_size=PROBE_IMAGES)
    return (clock() - start) / PROBE_IMAGES


def check_input(
    model: nn.Module,
    split: ImageSet | None,
    pre: Preprocess,
    source: str,
    num_outputs: int,
    *,
    batch_size: int = 64,
    deadline: Deadline | None = None,
) -> InputCheck:
    """Score every candidate convention on the labelled sample and decide which to use.

    Under a --budget the check takes at most BUDGET_SHARE of it: the first round is priced by a
    probe forward and each next round by the rounds before, and what cannot be afforded is
    not run (the note says so)."""
    deadline = deadline or Deadline(None)
    clock = deadline.clock
    start = clock()
    in_use = Convention.of(pre)
    indices, labels = labelled_sample(split, num_outputs)
    if not indices:
        return unchecked(in_use, source, "no labelled images (a bare folder or --images only)")
    conventions = candidates(pre)
    rounds = nested_rounds(len(indices))
    allowed = math.inf
    if deadline.budget is not None:
        allowed = min(BUDGET_SHARE * deadline.budget, deadline.left())
        need = len(rounds[0]) * len(conventions) * forward_seconds(model, pre, clock)
        if need > allowed:
            why = f"it needs about {need:.0f} s and the --budget allows it {max(allowed, 0):.0f} s"
            return unchecked(in_use, source, why)
    paths = [split.paths[i] for i in indices]  # type: ignore[union-attr]
    correct = torch.zeros(len(conventions), dtype=torch.long)
    used: list[int] = []
    tried = 0  # sampled images of the rounds run, the unreadable ones included
    for r, positions in enumerate(rounds):
        spent = clock() - start
        if r and spent + len(positions) * spent / len(positions_done(rounds, r)) > allowed:
            break  # the next round would overrun the check's share of the budget
        tried += len(positions)
        pixels, readable = decode([paths[p] for p in positions], pre)
        kept = [positions[k] for k in readable]
        if not kept:  # a round of unreadable files: nothing to score
            continue
        truth = torch.tensor([labels[p] for p in kept], dtype=torch.long)
        correct += correct_counts(model, pixels, truth, conventions, pre, batch_size)
        used += kept
    seconds = clock() - start
    if not used:
        return unchecked(in_use, source, "none of the sampled labelled images could be read")
    scores = tuple(
        Score(c, float(n) / len(used)) for c, n in zip(conventions, correct.tolist(), strict=True)
    )
    chance = majority_share([labels[p] for p in used])
    on = f"on {len(used)} labelled images"
    left_out = [f"{tried - len(used)} unreadable"] if tried > len(used) else []
    if tried < len(indices):
        left_out.append(f"the --budget allowed {tried} of {len(indices)}")
    if left_out:
        on += f" ({'; '.join(left_out)})"
    chosen, note, warning = decide(scores, in_use, source, chance, on)
    return InputCheck(chosen, source, note, len(used), scores, warning, seconds)


def positions_done(rounds: Sequence[Sequence[int]], r: int) -> list[int]:
    return [p for done in rounds[:r] for p in done]


def majority_share(labels: Sequence[int]) -> float:
    """Chance accuracy: the share of the most common label (1/K for a balanced sample)."""
    return max(labels.count(lb) for lb in set(labels)) / len(labels)


def unchecked(in_use: Convention, source: str, why: str) -> InputCheck:
    return InputCheck(in_use, source, f"the input convention could not be checked: {why}")


def decide(
    scores: Sequence[Score], in_use: Convention, source: str, chance: float, on: str
) -> tuple[Convention, str, str | None]:
    """(the convention to use, the note, a warning or None). Recorded or given: kept, and a
    candidate clearly better is named. Neither: the best is adopted, ties go to the default.
    ``on`` says what was scored ("on 200 labelled images")."""
    accuracy = {s.convention: s.accuracy for s in scores}
    top = max(accuracy.values())
    credible = top >= CHANCE_FACTOR * chance
    if source == ADOPTED:
        ties = [s.convention for s in scores if s.accuracy >= top - TIE_MARGIN]
        best = min(ties, key=in_use.distance) if credible else in_use
        if best == in_use:
            return (
                in_use,
                f"no input convention recorded or given: kept the HW3 default "
                f"({in_use.describe()}), which scores {accuracy[in_use]:.2f} {on}"
                + ("" if credible else " (no convention scores well above chance)"),
                None,
            )
        note = (
            f"no input convention recorded or given: adopted {best.describe()}, which scores "
            f"{accuracy[best]:.2f} {on} (the HW3 default {in_use.describe()}: "
            f"{accuracy[in_use]:.2f}); pass {best.flags_from(in_use)} to say so"
        )
        return best, note, note
    ties = [s.convention for s in scores if s.accuracy >= top - TIE_MARGIN]
    best = min(ties, key=in_use.distance)
    what = {FLAGS: "as read", RECORDED: "as the checkpoint records"}.get(source, "as replayed")
    if credible and top - accuracy[in_use] >= WARN_GAP and best != in_use:
        warning = (
            f"the model scores {accuracy[in_use]:.2f} {on} {what} ({in_use.describe()}) "
            f"but {accuracy[best]:.2f} with {best.describe()}: pass {best.flags_from(in_use)} "
            "if that is how it was trained"
        )
        return in_use, warning, warning
    note = (
        f"the input convention {what} ({in_use.describe()}) scores {accuracy[in_use]:.2f} {on}; "
        "no other scores clearly better"
    )
    return in_use, note, None
