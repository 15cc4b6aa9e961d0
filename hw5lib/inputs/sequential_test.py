"""The input check's sequential test: nested rounds of images, the exact McNemar test of two
conventions on the images one gets right and the other wrong, and the rules that stop scoring a
challenger (futile: it cannot become significant; dropped: clearly worse than the leader)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hw5lib.inputs.conventions import Convention

SAMPLE_IMAGES = 200  # labelled images the check scores at most
# The decision: exact McNemar (two-sided binomial on the discordant images) at family-wise
# level ALPHA, Bonferroni over every challenger and every round tested; no change on fewer
# than MIN_IMAGES scored images.
ALPHA = 0.01
MIN_IMAGES = 20
# The check's forwards (images x candidates still scored) stay within what 12 conventions on
# all SAMPLE_IMAGES cost; a round that would pass it is not run (a model no convention helps).
MAX_FORWARDS = 12 * SAMPLE_IMAGES
FIRST_ROUND = 8  # about this many images in the first round; each round after doubles them


# A challenger this clearly worse (McNemar) than the best-scoring candidate is no longer scored:
# it saves forwards and can only lower how often the check changes anything.
DROP_LEVEL = 0.01


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


def positions_done(rounds: Sequence[Sequence[int]], r: int) -> list[int]:
    return [p for done in rounds[:r] for p in done]
