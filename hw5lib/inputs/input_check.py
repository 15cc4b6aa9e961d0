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
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hw5lib.errors import BadImage
from hw5lib.inputs.conventions import Convention, candidates
from hw5lib.inputs.datasets import ImageSet
from hw5lib.inputs.images import load_usable, pixel_variants
from hw5lib.inputs.input_verdict import (
    ADOPTED,
    FLAGS,
    RECORDED,
    Evidence,
    InputCheck,
    Score,
    scores_of,
    unchecked,
)
from hw5lib.inputs.sequential_test import (
    ALPHA,
    MAX_FORWARDS,
    MIN_IMAGES,
    SAMPLE_IMAGES,
    Tally,
    mcnemar,
    nested_rounds,
    positions_done,
    significant,
    still_live,
)
from hw5lib.methods.metrics import predict
from hw5lib.model.preprocess import READERS, Preprocess

log = logging.getLogger(__name__)


def labelled_sample(split: ImageSet | None, num_outputs: int) -> tuple[list[int], list[int]]:
    """Up to SAMPLE_IMAGES indices into ``split``, evenly spaced over its sorted labelled
    images (a Food-11 or ImageFolder list is sorted by class, so this is stratified), and
    their labels."""
    if split is None:
        return [], []
    usable = [(i, lb) for i, lb in enumerate(split.labels) if lb is not None and lb < num_outputs]
    n = min(len(usable), SAMPLE_IMAGES)
    picked = [usable[k * len(usable) // n] for k in range(n)]
    return [i for i, _ in picked], [int(lb) for _, lb in picked]


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
    if split is None or not indices:
        return unchecked(in_use, source, "no labelled images (a bare folder or --images only)")
    paths = [split.paths[i] for i in indices]
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
