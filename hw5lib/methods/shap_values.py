"""SHAP over superpixels: the Shapley values (Lundberg & Lee, 2017, "A Unified Approach to
Interpreting Model Predictions") of an image's segments, each present (the image's pixels) or
hidden (the baseline's), for the target's score. Estimated by Captum's ``ShapleyValueSampling``
(permutation sampling, Castro et al., 2009; Strumbelj & Kononenko, 2014) on the on/off coalition
vector, with antithetic permutations (each followed by its reverse, Mitchell et al., JMLR 2022)
drawn from a seeded stream in rounds until the top segments are settled.

Every permutation's marginal contributions telescope to f(x) - f(baseline), so the values meet
SHAP's efficiency property exactly (to float rounding), however few permutations were drawn.
bench/RESULTS.md ("SHAP: which estimator") says why this estimator and not KernelShap or shap's
Partition explainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from captum.attr import ShapleyValueSampling
from torch import Tensor, nn

from hw5lib.methods.attributions import split_half_agreement
from hw5lib.methods.lime_stopping import TOP_SEPARATION, top_separation
from hw5lib.methods.metrics import probabilities
from hw5lib.model.hooks import eval_mode

# Sampling rule: rounds of ROUND_PAIRS antithetic pairs, at least MIN_PAIRS, then stop once the
# top five segments stand TOP_SEPARATION standard errors above the next three (as LIME's rule),
# or the evaluation budget is spent. The standard errors come from the spread of the pair means,
# each pair one independent draw. On the full-size model it stopped at 16-18 permutations (48-60
# superpixels); on the demo the top five matched a long reference from the floor (bench/RESULTS.md).
ROUND_PAIRS = 2
MIN_PAIRS = 4
# Forwards per model call: a permutation of S segments is S images, evaluated in batches of this.
BATCH_SIZE = 128


@dataclass(frozen=True)
class ShapResult:
    """Shapley values of N images' segments, and what the stopping rule saw."""

    values: Tensor  # [N,S] per segment (S the largest segment count; 0 past an image's own)
    maps: Tensor  # [N,H,W] each pixel its segment's value
    full: Tensor  # [N] the score of the image, f(x)
    empty: Tensor  # [N] the score with every segment hidden, f(baseline)
    permutations: tuple[int, ...]  # per image: permutations drawn (pairs x 2)
    evaluations: tuple[int, ...]  # per image: model evaluations (images scored)
    # per image, per round: (permutations so far, top-k separation in standard errors,
    # relative_noise)
    trace: tuple[tuple[tuple[int, float, float], ...], ...]
    # per image: predicted correlation with the exact values, from two halves of the pairs
    agreement: tuple[float, ...]


def segment_means(x: Tensor, segments: Tensor) -> Tensor:
    """x [N,C,H,W] with each segment of ``segments`` [N,H,W] (ids 0..S-1) filled with its mean
    colour: LIME's way of hiding a superpixel, so that SHAP and LIME hide alike."""
    n, c, h, w = x.shape
    s = int(segments.max()) + 1
    ids = segments.reshape(n, 1, h * w) + s * torch.arange(n, device=x.device).view(n, 1, 1)
    ids = ids.expand(n, c, h * w).long()  # (N, C, HW) a segment id unique across images
    flat = x.reshape(n, c, h * w).transpose(0, 1).reshape(c, n * h * w)  # (C, N*HW)
    key = ids[:, 0].reshape(-1)  # (N*HW,)
    sums = torch.zeros(c, n * s, dtype=x.dtype, device=x.device).index_add_(1, key, flat)
    counts = torch.bincount(key, minlength=n * s).clamp(min=1).to(x.dtype)
    means = sums / counts  # (C, N*S)
    return means[:, key].reshape(c, n, h, w).transpose(0, 1).contiguous()


def coalition_images(x: Tensor, baseline: Tensor, segments: Tensor, on: Tensor) -> Tensor:
    """The images of coalitions ``on`` [B,S] (1 = segment shown) of one image x [C,H,W] over
    ``baseline`` [C,H,W], segments [H,W] -> [B,C,H,W]."""
    show = on.bool()[:, segments]  # (B, H, W)
    return torch.where(show[:, None], x[None], baseline[None])


def target_score(model: nn.Module, target: int, head: str | None) -> Callable[[Tensor], Tensor]:
    """images [B,C,H,W] -> [B] score of ``target``: its logit (``head`` None), else its
    probability under ``head`` (as deletion/insertion score it)."""

    def score(images: Tensor) -> Tensor:
        out = model(images)
        if head is not None:
            out = probabilities(out, head)
        return out[:, target]

    return score


def antithetic_permutations(
    generator: torch.Generator, features: int
) -> Callable[[int, int], Iterator[list[int]]]:
    """Captum's ``permutation_generator`` drawing from ``generator``: ``count`` permutations
    in pairs, a random one and its reverse (their marginal contributions are negatively
    correlated, so a pair varies less than two independent permutations)."""

    def permutations(num_features: int, count: int) -> Iterator[list[int]]:
        assert num_features == features
        for _ in range(count // 2):
            perm = torch.randperm(features, generator=generator).tolist()
            yield perm
            yield perm[::-1]

    return permutations


def evaluations(segment_count: int, permutations: int) -> int:
    """Model evaluations for ``permutations`` (in pairs) of ``segment_count`` segments: each pair
    scores 2S coalitions and captum's f(baseline) once; then f(x) and f(baseline) for the
    caller's efficiency check. What the budget planner prices."""
    return (2 * segment_count + 1) * (permutations // 2) + 2


def relative_noise(pair_means: Tensor) -> float:
    """Root-mean-square standard error of the values over their spread across segments, from
    P pair means [P,S]: 0.1 means the noise is a tenth of what tells segments apart."""
    p = pair_means.shape[0]
    se = pair_means.var(0).mean().div(p).sqrt()
    spread = pair_means.mean(0).std()
    return float(se / spread) if spread > 0 else 0.0


class OneImage(NamedTuple):
    """One image's values [S], permutations drawn, model evaluations, the rule's trace, and the
    split-half predicted correlation with the exact values."""

    values: Tensor
    permutations: int
    evaluations: int
    trace: tuple[tuple[int, float, float], ...]
    agreement: float


def explain_one(
    score: Callable[[Tensor], Tensor],
    segments: Tensor,
    *,
    seed: int,
    batch_size: int,
    max_evaluations: int,
    permutations: int | None,
    adaptive: bool,
) -> OneImage:
    """One image: ``score`` maps coalitions [B,S] to scores [B]. Draws at least
    ``MIN_PAIRS`` pairs whatever ``max_evaluations`` (the rule needs their spread)."""
    s = int(segments.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    svs = ShapleyValueSampling(score)
    svs.permutation_generator = antithetic_permutations(generator, s)
    ones = torch.ones(1, s, device=segments.device)
    per_pair = evaluations(s, 2) - evaluations(s, 0)
    cap = max(MIN_PAIRS, max_evaluations // per_pair) if permutations is None else permutations // 2
    cap = max(cap, 1)
    pair_means: list[Tensor] = []
    trace: list[tuple[int, float, float]] = []
    while len(pair_means) < cap:
        for _ in range(min(ROUND_PAIRS, cap - len(pair_means))):
            pair = svs.attribute(
                ones, baselines=0.0, n_samples=2, perturbations_per_eval=batch_size
            )
            pair_means.append(pair[0].double())  # (S,)
        if len(pair_means) < MIN_PAIRS:
            continue
        stacked = torch.stack(pair_means)  # (P, S)
        cov = torch.cov(stacked.T).reshape(s, s) / len(pair_means)
        separation = top_separation(stacked.mean(0).cpu().numpy(), cov.cpu().numpy())
        trace.append((2 * len(pair_means), separation, relative_noise(stacked)))
        if adaptive and permutations is None and separation >= TOP_SEPARATION:
            break
    stacked = torch.stack(pair_means)
    drawn = 2 * len(pair_means)
    # the two halves of the pairs as two independent runs: how far another seed would agree
    halves = stacked[0::2].mean(0)[None], stacked[1::2].mean(0)[None]
    agreement = float(split_half_agreement(*halves)) if len(stacked) > 1 else float("nan")
    return OneImage(stacked.mean(0), drawn, evaluations(s, drawn), tuple(trace), agreement)


def shapley_values(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    segments: Tensor,
    baseline: Tensor,
    *,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    max_evaluations: int = 2000,
    permutations: list[int] | None = None,
    adaptive: bool = True,
    head: str | None = None,
) -> ShapResult:
    """SHAP values of each image's segments for its target's score (the logit; with ``head``
    the probability). x, baseline [N,C,H,W] (the baseline is what a hidden segment shows:
    ``segment_means`` for LIME's hide), target [N], segments [N,H,W] ids 0..S_i-1.

    Per image: antithetic permutation pairs from a stream seeded with ``seed``, in rounds of
    ``ROUND_PAIRS`` from ``MIN_PAIRS``, until the top segments are settled (``adaptive``) or
    ``max_evaluations`` model evaluations are spent; ``permutations`` (a replayed run's counts per image) draws exactly those. Forwards
    go ``batch_size`` coalition images at a time. Values sum to f(x) - f(baseline).
    """
    n, _, h, w = x.shape
    segments = segments.to(x.device).long()
    widest = int(segments.amax()) + 1
    values = torch.zeros(n, widest, dtype=torch.float64)
    used: list[int] = []
    evaluations: list[int] = []
    traces, agreement = [], []
    full, empty = [], []
    with eval_mode(model), torch.no_grad():
        for i in range(n):
            score_images = target_score(model, int(target[i]), head)

            def score(on: Tensor, i: int = i, f: Callable = score_images) -> Tensor:
                return f(coalition_images(x[i], baseline[i], segments[i], on))

            one = explain_one(
                score,
                segments[i],
                seed=seed,
                batch_size=batch_size,
                max_evaluations=max_evaluations,
                permutations=None if permutations is None else permutations[i],
                adaptive=adaptive,
            )
            values[i, : len(one.values)] = one.values.cpu()
            used.append(one.permutations)
            evaluations.append(one.evaluations)
            traces.append(one.trace)
            agreement.append(one.agreement)
            ends = score_images(torch.stack([x[i], baseline[i]]))
            full.append(float(ends[0]))
            empty.append(float(ends[1]))
    maps = torch.gather(values.to(x.device), 1, segments.reshape(n, h * w)).reshape(n, h, w)
    return ShapResult(
        values.float(),
        maps.float(),
        torch.tensor(full),
        torch.tensor(empty),
        tuple(used),
        tuple(evaluations),
        tuple(traces),
        tuple(agreement),
    )
