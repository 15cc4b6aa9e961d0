"""Which input convention the checkpoint was trained with, measured before any stage runs.

A model fed the wrong pixels (BGR for RGB, [0,1] for [-1,1], cv2's resize for PIL's) still runs
and every figure still draws, so nothing else would notice. Here the model is scored on the same
evenly spaced labelled images under each candidate convention: channel order x reader (cv2 with
INTER_LINEAR, INTER_CUBIC or INTER_AREA; PIL) x scaling ([0,1], [-1,1], ImageNet's mean/std, the
data set's own), plus the one the flags or the checkpoint give. Each image is decoded once by cv2
and once by PIL; the other candidates are resizes and tensor ops on those pixels.

A convention replaces (or is named against) the one in use only on evidence: an exact McNemar
test on the images one gets right and the other wrong, at family-wise level ALPHA, Bonferroni-
corrected over the challengers and the rounds at which it is tested, on at least MIN_IMAGES
images. The images are scored in rounds (about 16, then doubling, up to SAMPLE_IMAGES), and the
check stops as soon as that decides: a challenger significantly better, or none that could
still become so. It is never cut or skipped for time (a busy machine must not explain other
pixels than a quiet one); MAX_FORWARDS bounds its cost.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hw5lib.errors import BadImage
from hw5lib.inputs.datasets import ImageSet
from hw5lib.inputs.images import load_usable, pixel_variants
from hw5lib.inputs.preprocess import READERS, Preprocess
from hw5lib.methods.metrics import predict

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 200  # labelled images the check scores at most
FIRST_ROUND = 8  # about this many images in the first round; each round after doubles them
# The decision: exact McNemar (two-sided binomial on the discordant images) at family-wise
# level ALPHA, Bonferroni over every challenger and every round tested; no change on fewer
# than MIN_IMAGES scored images.
ALPHA = 0.01
MIN_IMAGES = 20
# A challenger this clearly worse (McNemar) than the best-scoring candidate is no longer scored:
# it saves forwards and can only lower how often the check changes anything.
DROP_LEVEL = 0.01
# The check's forwards (images x candidates still scored) stay within what 12 conventions on
# all SAMPLE_IMAGES cost; a round that would pass it is not run (a model no convention helps).
MAX_FORWARDS = 12 * SAMPLE_IMAGES

ORDERS = ("bgr", "rgb")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATASET = "dataset"  # the labelled images' own per-channel mean/std
# name -> (mean, std) after scaling to [0,1]; ImageNet's statistics only for colour models
SCALINGS: dict[str, tuple[tuple[float, ...] | None, tuple[float, ...] | None]] = {
    "[0,1]": (None, None),
    "[-1,1]": ((0.5,), (0.5,)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
TEST = "exact McNemar (two-sided binomial test on the images one convention gets right and the other wrong)"

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
    function: str | None = None  # --preprocess file.py:function: it reads, nothing else applies

    @classmethod
    def of(cls, pre: Preprocess) -> Convention:
        order = pre.channel_order if pre.channels == 3 else None
        if pre.function is not None:
            spec = f"{pre.function.file}:{pre.function.name}"  # reads and scales: as it returns
            return cls(None, spec, "as returned", None, None, spec)
        name = scaling_name(pre)
        mean, std = SCALINGS[name] if name != "custom" else (pre.mean, pre.std)
        return cls(order, pre.reader, name, mean, std)

    def apply(self, pre: Preprocess) -> Preprocess:
        """``pre`` read this way (size and channels unchanged)."""
        order = self.channel_order or pre.channel_order
        return replace(pre, channel_order=order, reader=self.reader, mean=self.mean, std=self.std)

    def describe(self) -> str:
        """ "rgb, pil, [0,1]" (the scaling written out when it is custom)."""
        if self.function:
            return f"--preprocess {self.function}"
        scaling = self.scaling
        if scaling == DATASET:
            scaling = (
                f"the data's own mean {_numbers(self.mean or ())} std {_numbers(self.std or ())}"
            )
        elif scaling == "custom":
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
        d = {
            "channel_order": self.channel_order,
            "reader": self.reader,
            "scaling": self.scaling,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }
        return d | ({"preprocess": self.function} if self.function else {})


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


def candidates(
    pre: Preprocess, data_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
) -> list[Convention]:
    """Every channel order x reader x scaling for ``pre``'s channels, the HW3 default first
    (``data_stats``: the labelled images' own RGB or gray mean/std, a scaling of its own), plus
    ``pre``'s own convention where it is none of them."""
    orders: Sequence[str | None] = ORDERS if pre.channels == 3 else (None,)
    scalings = {k: v for k, v in SCALINGS.items() if pre.channels == 3 or k != "imagenet"}
    out = []
    for order in orders:
        own = dict(scalings)
        if data_stats is not None:  # in the candidate's channel order
            mean, std = data_stats
            own[DATASET] = (mean[::-1], std[::-1]) if order == "bgr" else (mean, std)
        out += [Convention(order, r, name, *ms) for r in READERS for name, ms in own.items()]
    mine = Convention.of(pre)
    if all(mine.distance(c) for c in out):
        out.append(mine)
    return out


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


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of ``k`` heads in ``n`` fair coin tosses: twice the smaller tail,
    at most 1 (McNemar's exact test with k, n - k the two kinds of discordant pair)."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar(wins: int, losses: int) -> float:
    """Exact McNemar p: ``wins`` images only one convention gets right, ``losses`` only the
    other; under the null each discordant image is a fair coin."""
    return binomial_two_sided(wins, wins + losses)


def decode(
    paths: Sequence[Path], pre: Preprocess, readers: Sequence[str]
) -> tuple[dict[str, Tensor], list[int], list[str]]:
    """Each image decoded once per library -> for each reader display-order pixels [N,C,H,W]
    in [0,1], the positions of the images every reader could read, and why the others not."""
    arrays: dict[str, list[np.ndarray]] = {r: [] for r in readers}
    kept: list[int] = []
    bad: list[str] = []
    for i, path in enumerate(paths):
        try:
            variants = pixel_variants(path, pre, readers)
        except BadImage as err:
            bad.append(err.reason)
            continue
        for r in readers:
            arrays[r].append(variants[r])
        kept.append(i)
    pixels = {
        r: torch.from_numpy(np.stack(a))
        .permute(0, 3, 1, 2)
        .clone(memory_format=torch.contiguous_format)
        if a
        else torch.empty(0)
        for r, a in arrays.items()
    }
    return pixels, kept, bad


def data_stats(pixels: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of display-order pixels [N,C,H,W], to 3 decimals (the flags
    that select them stay short); a constant channel gets std 1."""
    mean = pixels.double().mean(dim=(0, 2, 3))
    std = pixels.double().std(dim=(0, 2, 3))
    std = torch.where(std > 1e-3, std, torch.ones_like(std))
    return tuple(round(float(v), 3) for v in mean), tuple(round(float(v), 3) for v in std)


def right_answers(
    model: nn.Module,
    pixels: dict[str, Tensor],
    labels: Tensor,
    convention: Convention,
    pre: Preprocess,
    batch_size: int,
) -> Tensor:
    """(N,) bool: which images the model gets right under ``convention``."""
    x = convention.apply(pre).normalize(pixels[convention.reader])  # (N, C, H, W)
    return predict(model, x, batch_size=batch_size)[1].cpu() == labels


@dataclass
class Tally:
    """Per candidate, which scored images it got right, in the order they were scored; a
    candidate dropped part-way keeps what it was scored on."""

    right: dict[Convention, list[Tensor]] = field(default_factory=dict)

    def add(self, convention: Convention, right: Tensor) -> None:
        self.right.setdefault(convention, []).append(right)

    def of(self, convention: Convention) -> Tensor:
        parts = self.right.get(convention, [])
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)

    def versus(self, a: Convention, b: Convention) -> tuple[int, int]:
        """(images only ``a`` gets right, images only ``b`` gets right) of those both scored."""
        ra, rb = self.of(a), self.of(b)
        n = min(len(ra), len(rb))
        ra, rb = ra[:n], rb[:n]
        return int((ra & ~rb).sum()), int((rb & ~ra).sum())


def check_input(
    model: nn.Module,
    split: ImageSet | None,
    pre: Preprocess,
    source: str,
    num_outputs: int,
    *,
    batch_size: int = 64,
    clock: Callable[[], float] = time.perf_counter,
) -> InputCheck:
    """Score the candidate conventions on the labelled sample, round by round, until the test
    decides; adopt (nothing recorded or given) or name (recorded or given) a convention only
    when it is significantly better than the one in use.

    It always runs to its decision, whatever --budget and the machine's load (``clock`` only
    times it): the images it scores and what it decides depend on the model and the data
    alone, so a busy machine explains the same pixels a quiet one does. Its cost is bounded by
    MAX_FORWARDS instead."""
    start = clock()
    in_use = Convention.of(pre)
    indices, labels = labelled_sample(split, num_outputs)
    if not indices:
        return unchecked(in_use, source, "no labelled images (a bare folder or --images only)")
    paths = [split.paths[i] for i in indices]  # type: ignore[union-attr]
    if pre.function is not None:
        return score_function(model, paths, labels, pre, source, batch_size, clock, start)
    rounds = nested_rounds(len(indices))
    tests = sum(1 for r in range(len(rounds)) if len(positions_done(rounds, r + 1)) >= MIN_IMAGES)
    tally = Tally()
    conventions: list[Convention] = []
    live: list[Convention] = []
    used: list[int] = []
    tried = 0  # sampled images of the rounds run, the unreadable ones included
    after: list[int] = []  # images scored after each round
    winners: list[Convention] = []
    level = 1.0
    capped = False
    forwards = 0  # images x conventions scored
    for positions in rounds:
        if live and forwards + len(positions) * len(live) > MAX_FORWARDS:
            capped = True  # stopping never adopts anything: it only leaves the evidence thin
            break
        tried += len(positions)
        readers = sorted({c.reader for c in live}) if live else list(READERS)
        pixels, readable, _ = decode([paths[p] for p in positions], pre, readers)
        kept = [positions[k] for k in readable]
        if not kept:  # a round of unreadable files: nothing to score
            continue
        if not conventions:  # the data's own statistics come from the first readable round
            conventions = candidates(pre, data_stats(pixels[READERS[0]]))
            live = list(conventions)  # the convention in use is one of them
            level = ALPHA / max(1, (len(live) - 1) * max(tests, 1))
        truth = torch.tensor([labels[p] for p in kept], dtype=torch.long)
        for c in live:
            tally.add(c, right_answers(model, pixels, truth, c, pre, batch_size))
        forwards += len(kept) * len(live)
        used += kept
        after.append(len(used))
        left = len(indices) - tried  # images still to score, at most
        winners = significant(tally, live, in_use, level) if len(used) >= MIN_IMAGES else []
        if winners:
            break
        live = still_live(tally, live, in_use, level, left)
        if live == [in_use]:
            break
    seconds = clock() - start
    if not used:
        return unchecked(in_use, source, "none of the sampled labelled images could be read")
    scores = scores_of(tally, conventions or [in_use], in_use)
    on = f"on {len(used)} labelled images"
    left_out = [f"{tried - len(used)} unreadable"] if tried > len(used) else []
    if capped:
        left_out.append(f"at most {MAX_FORWARDS} image forwards: {tried} of {len(indices)}")
    if left_out:
        on += f" ({'; '.join(left_out)})"
    challengers = max(len(conventions) - 1, 0)
    evidence = Evidence(level, challengers, max(tests, 1), tuple(after), forwards, "")
    chosen, note, warning, decision = decide(
        tally, scores, in_use, source, winners, level, len(used), on
    )
    evidence = replace(evidence, decision=decision)
    return InputCheck(chosen, source, note, len(used), scores, warning, seconds, evidence)


def significant(
    tally: Tally, live: Sequence[Convention], in_use: Convention, level: float
) -> list[Convention]:
    """The live challengers significantly better than ``in_use`` on the images both scored."""
    out = []
    for c in live:
        if c == in_use:
            continue
        wins, losses = tally.versus(c, in_use)
        if wins > losses and mcnemar(wins, losses) <= level:
            out.append(c)
    return out


def discordance_bound(discordant: int, scored: int) -> float:
    """Upper DROP_LEVEL confidence bound of the rate at which two conventions disagree, from
    ``discordant`` of ``scored`` images (exact binomial, Clopper-Pearson, by bisection)."""
    if scored == 0 or discordant >= scored:
        return 1.0

    def at_most(p: float) -> float:  # P(X <= discordant) for X ~ Binomial(scored, p)
        return sum(
            math.comb(scored, i) * p**i * (1 - p) ** (scored - i) for i in range(discordant + 1)
        )

    low, high = discordant / scored, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if at_most(mid) > DROP_LEVEL else (low, mid)
    return high


def still_live(
    tally: Tally, live: Sequence[Convention], in_use: Convention, level: float, left: int
) -> list[Convention]:
    """The challengers worth scoring on. Futile: not significantly better even if it won every
    image still to score on which it may disagree with ``in_use`` (of the ``left`` images, the
    share ``discordance_bound`` allows: a resize variant that disagrees on 1 image in 50 cannot
    win 20 of the next 100). Out: DROP_LEVEL worse than the leader. Either only lowers how often
    the convention changes."""
    leader = max(live, key=lambda c: int(tally.of(c).sum()))
    out = [in_use]
    for c in live:
        if c == in_use:
            continue
        wins, losses = tally.versus(c, in_use)
        scored = min(len(tally.of(c)), len(tally.of(in_use)))
        can_win = min(left, math.ceil(left * discordance_bound(wins + losses, scored)))
        if wins + can_win <= losses or mcnemar(wins + can_win, losses) > level:
            continue  # futile
        ahead, behind = tally.versus(leader, c)
        if ahead > behind and mcnemar(ahead, behind) <= DROP_LEVEL:
            continue
        out.append(c)
    return out


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


def score_function(
    model: nn.Module,
    paths: Sequence[Path],
    labels: Sequence[int],
    pre: Preprocess,
    source: str,
    batch_size: int,
    clock: Callable[[], float],
    start: float,
) -> InputCheck:
    """--preprocess: the user's function reads, so nothing is adopted; its accuracy on the
    labelled sample is recorded (the images it raised on are left out)."""
    in_use = Convention.of(pre)
    loaded = load_usable(paths, pre)
    if not loaded.paths:
        return unchecked(
            in_use, source, "the --preprocess function read none of the sampled labelled images"
        )
    truth = torch.tensor([labels[k] for k in loaded.kept], dtype=torch.long)
    right = predict(model, loaded.x, batch_size=batch_size)[1].cpu() == truth
    accuracy = float(right.float().mean())
    on = f"on {len(truth)} labelled images"
    if loaded.skipped:
        on += f" ({len(loaded.skipped)} it could not read)"
    note = f"the input is read by {in_use.describe()} as given (not checked against other conventions); it scores {accuracy:.2f} {on}"
    return InputCheck(
        in_use,
        source,
        note,
        len(truth),
        (Score(in_use, accuracy, len(truth)),),
        None,
        clock() - start,
    )


def positions_done(rounds: Sequence[Sequence[int]], r: int) -> list[int]:
    return [p for done in rounds[:r] for p in done]


def unchecked(in_use: Convention, source: str, why: str) -> InputCheck:
    return InputCheck(in_use, source, f"the input convention could not be checked: {why}")


def pick(
    tally: Tally, winners: Sequence[Convention], in_use: Convention, level: float
) -> Convention:
    """Of the challengers significantly better than ``in_use``: those not significantly worse
    than the best-scoring one, the closest to ``in_use`` first (on the sample set cv2's and
    PIL's resizes score alike, and the default reader is kept), then the most right."""
    best = max(winners, key=lambda c: int(tally.of(c).sum()))
    near = []
    for c in winners:
        ahead, behind = tally.versus(best, c)
        if not (ahead > behind and mcnemar(ahead, behind) <= level):
            near.append(c)
    return min(near, key=lambda c: (in_use.distance(c), -int(tally.of(c).sum())))


def decide(
    tally: Tally,
    scores: Sequence[Score],
    in_use: Convention,
    source: str,
    winners: Sequence[Convention],
    level: float,
    images: int,
    on: str,
) -> tuple[Convention, str, str | None, str]:
    """(the convention to use, the note, a warning or None, the decision in a few words).
    A challenger significantly better than the one in use is adopted (nothing recorded or
    given) or named in a warning (recorded, given or replayed); otherwise the one in use is
    kept, and the note says whether the evidence was too thin or simply against a change."""
    by = {s.convention: s for s in scores}
    mine = by[in_use]
    if winners:
        best = pick(tally, winners, in_use, level)
        s = by[best]
        evidence = (
            f"exact McNemar p = {s.p:.2g} on {s.wins} vs {s.losses} images only one of them "
            f"gets right, below {ALPHA:g} Bonferroni-corrected"
        )
        if source == ADOPTED:
            note = (
                f"no input convention recorded or given: adopted {best.describe()}, which scores "
                f"{s.accuracy:.2f} {on} against the HW3 default's ({in_use.describe()}) "
                f"{mine.accuracy:.2f} ({evidence}); pass {best.flags_from(in_use)} to say so"
            )
            return best, note, note, "adopted"
        what = {FLAGS: "as read", RECORDED: "as the checkpoint records"}.get(source, "as replayed")
        warning = (
            f"the model scores {mine.accuracy:.2f} {on} {what} ({in_use.describe()}) but "
            f"{s.accuracy:.2f} with {best.describe()} ({evidence}): pass "
            f"{best.flags_from(in_use)} if that is how it was trained"
        )
        return in_use, warning, warning, "warned"
    others = [s for s in scores if s.convention != in_use and s.images]
    top = max(others, key=lambda s: (s.accuracy, -s.convention.distance(in_use)), default=None)
    if images < MIN_IMAGES:
        why = f"only {images} labelled images, fewer than the {MIN_IMAGES} a change needs"
        decision = "kept: too few images"
    elif top is not None and top.accuracy > mine.accuracy:
        why = (
            f"the best other, {top.convention.describe()} at {top.accuracy:.2f}, is not "
            f"significantly better (exact McNemar p = {top.p:.2g}, {ALPHA:g} Bonferroni-corrected)"
        )
        decision = "kept: evidence too thin"
    else:
        why = "no other convention scores higher"
        decision = "kept: none better"
    thin = "; the evidence is too thin to change it" if decision != "kept: none better" else ""
    if source == ADOPTED:
        note = (
            f"no input convention recorded or given: kept the HW3 default ({in_use.describe()}), "
            f"which scores {mine.accuracy:.2f} {on}: {why}{thin}"
        )
        return in_use, note, None, decision
    what = {FLAGS: "as read", RECORDED: "as the checkpoint records"}.get(source, "as replayed")
    note = (
        f"the input convention {what} ({in_use.describe()}) scores {mine.accuracy:.2f} {on}; "
        f"no other scores significantly better ({why})"
    )
    return in_use, note, None, decision
