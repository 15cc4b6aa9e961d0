"""LIME (Ribeiro et al., 2016, "Why Should I Trust You?") through the ``lime`` package.

Two things the course code gets wrong are fixed here: scikit-image >= 0.19 numbers SLIC segments
from 1, and lime's mask loop (``for z in zeros: mask[segments == z]``) then never hides one
superpixel, so segments are numbered from 0; and ``labels=[target]`` with ``top_labels=None`` makes
lime explain the requested label rather than whichever class it ranks first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn.metrics
import torch
from lime import lime_base, lime_image
from skimage.segmentation import slic
from torch import Tensor, nn

from hw5lib import tolerances
from hw5lib.methods import metrics
from hw5lib.methods.lime_stopping import (
    MIN_SAMPLES,
    ROUND_SAMPLES,
    TOP_SEPARATION,
    foldover_masks,
    matched_sample_count,
    top_separation,
    weights_covariance,
)
from hw5lib.model.hooks import eval_mode

SLIC_ARGS = {"n_segments": 100, "compactness": 1, "sigma": 1, "start_label": 0}
COURSE_SLIC = "SLIC (n_segments=100, compactness=1, sigma=1)"
# Below this many superpixels LIME has too little to rank (its top 5 would be most of the image):
# on fine texture or noise (skimage's grass, gravel, uniform noise) the course SLIC's colour term
# dominates and its connectivity pass merges the fragments into 1-5 segments.
MIN_SEGMENTS = 10
# Fallbacks tried in turn, measured on 128x128 images: compactness 10 gives grass 90, gravel 87
# and brick 75 segments that still follow the texture, but uniform noise only 18; 100 gives a
# near-regular 100 on every image tried. Stretching the contrast first gained nothing (grass 1).
FALLBACK_COMPACTNESS = (10, 100)
GRID_SIDE = 10  # the last resort: a GRID_SIDE x GRID_SIDE grid of squares, whatever the image


@dataclass(frozen=True)
class LimeResult:
    """One image's LIME explanation. Every number in it is finite; where the image could not be
    explained, ``failure`` says why and the weights are zero placeholders (score 0)."""

    segments: np.ndarray  # [H,W] int, superpixel id per pixel, ids 0..S-1
    weights: np.ndarray  # [S] float, the linear model's weight of each superpixel for the label
    score: float  # R^2 of lime's local linear model
    label: int
    samples: int = 0  # perturbed samples drawn (those fitted; 0 where sampling failed)
    # per round: samples, needed, separation (SEPARATION_SETTLED where nothing is left to settle)
    trace: tuple[tuple[int, float, float], ...] = ()
    stability: float | None = None  # predicted top-5 overlap with a rerun (resampled_agreement)
    segmentation: str = COURSE_SLIC  # how the superpixels were made, for the caption
    failure: str | None = None  # why the image could not be explained; None when it was


def segment(image: np.ndarray) -> np.ndarray:
    """SLIC superpixels of an [H,W,3] float image in [0,1], numbered from 0 (see module doc)."""
    return slic(image.astype(np.float64), **SLIC_ARGS)


def grid_segments(shape: tuple[int, ...]) -> np.ndarray:
    """An [H,W] grid of at most ``GRID_SIDE`` x ``GRID_SIDE`` near-equal squares, ids 0..S-1."""
    h, w = shape[:2]
    rows, cols = min(GRID_SIDE, h), min(GRID_SIDE, w)  # no empty cells on a tiny image
    row = np.arange(h) * rows // h
    col = np.arange(w) * cols // w
    return row[:, None] * cols + col[None, :]


def segment_with_fallback(image: np.ndarray) -> tuple[np.ndarray, str]:
    """``segment``, or where it gives fewer than ``MIN_SEGMENTS`` superpixels the first of SLIC
    with each ``FALLBACK_COMPACTNESS`` and a regular grid that does; with a description of the
    segmentation used, for the caption."""
    segments = segment(image)
    found = int(segments.max()) + 1
    if found >= MIN_SEGMENTS:
        return segments, COURSE_SLIC
    why = f"{COURSE_SLIC} gave {found} superpixel{'s' if found > 1 else ''}; fallback:"
    for compactness in FALLBACK_COMPACTNESS:
        segments = slic(image.astype(np.float64), **{**SLIC_ARGS, "compactness": compactness})
        if int(segments.max()) + 1 >= MIN_SEGMENTS:
            return segments, f"{why} SLIC with compactness={compactness}"
    segments = grid_segments(image.shape)
    return segments, f"{why} a grid of {int(segments.max()) + 1} squares"


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An [H,W,C] image as lime takes it, 3 channels: lime fills a hidden superpixel channel by
    channel (R, G, B), so a gray image goes in repeated and comes back by ``classifier_fn``."""
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def classifier_fn(
    model: nn.Module, to_input: Callable[[Tensor], Tensor], channels: int, head: str = "softmax"
) -> Callable[[np.ndarray], np.ndarray]:
    """lime's ``classifier_fn``: an [B,H,W,3] batch of display pixels -> [B,K] probabilities."""

    def predict(batch: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        pixels = pixels.permute(0, 3, 1, 2)
        if channels == 1:
            pixels = pixels.mean(dim=1, keepdim=True)
        with eval_mode(model), torch.inference_mode():
            probs = metrics.probabilities(model(to_input(pixels)), head)  # on the model's device
            return probs.cpu().numpy().astype(np.float64)

    return predict


def lime_weights(
    base: lime_base.LimeBase, data: np.ndarray, labels: np.ndarray, label: int
) -> np.ndarray:
    """lime's own fit on these samples (its kernel of the cosine distance to the unperturbed
    image, ``data[0]``, and its ridge regression): the [F] weight of each superpixel."""
    distances = sklearn.metrics.pairwise_distances(data, data[:1], metric="cosine").ravel()
    _, pairs, _, _ = base.explain_instance_with_data(data, labels, distances, label, 100000)
    return weights_vector(pairs, data.shape[1])


def weights_vector(pairs: list[tuple[int, float]], n_features: int) -> np.ndarray:
    """lime's (superpixel, weight) list as a dense vector."""
    weights = np.zeros(n_features)
    for seg_id, w in pairs:
        weights[seg_id] = w
    return weights


def resampled_agreement(
    base: lime_base.LimeBase,
    data: np.ndarray,
    labels: np.ndarray,
    label: int,
    *,
    rounds: int = 10,
    seed: int = 0,
    k: int = 5,
) -> float:
    """Predicted top-``k`` overlap of this explanation with a rerun under another seed, with no
    model forward: lime refit on two bootstrap resamples of the run's own samples, averaged over
    ``rounds`` such pairs of refits. The resampled unit is the complementary pair (row 2i,
    2i+1), as it was drawn; pair 0, the image itself and its all-hidden complement, stays first
    because lime measures distances from ``data[0]``. Two resamples differ by about as much as
    two independent runs would (each carries the sampling noise once); resampling loses the
    foldover design's balance, so if anything the prediction is low (on a toy response: 0.763
    against real reruns' 0.800 at 300 samples, 0.849 against 0.853 at 600); bench/RESULTS.md
    compares the prediction with real reruns. With at most ``k`` superpixels k is their count (and the
    overlap 1). Needs at least two pairs of samples."""
    k = min(k, data.shape[1])
    rng = np.random.default_rng(seed)
    pairs = len(data) // 2
    offsets = np.arange(2)

    def refit() -> np.ndarray:
        pick = np.concatenate([[0], rng.integers(1, pairs, pairs - 1)])
        rows = (2 * pick[:, None] + offsets).ravel()
        return lime_weights(base, data[rows], labels[rows], label)

    return float(np.mean([tolerances.topk_overlap(refit(), refit(), k) for _ in range(rounds)]))


class OutOfTime(Exception):
    """Raised between model batches when the caller's ``stop()`` says the time is up."""


class Unexplainable(Exception):
    """Raised while sampling when no explanation can come of it; ``explain`` turns the message
    into ``LimeResult.failure``."""


NOT_FINITE = "the model's outputs are not finite"
NOTHING_HIDDEN = (
    "hiding a superpixel (filling it with its mean colour) changes no pixel: "
    "the image is uniform within every superpixel"
)
NO_RESPONSE = (
    "the model's probability for the label is the same for every perturbed image "
    "(a saturated softmax, or a model blind to the image): no superpixel matters"
)


class AntitheticLimeExplainer(lime_image.LimeImageExplainer):
    """lime's explainer with its sampling replaced: a foldover Hadamard design in complementary
    pairs, drawn in rounds, stopping when the estimate is as precise as stock lime's
    ``MATCHED_SAMPLES`` (1000) and its top five superpixels are settled.

    Stock lime draws each on/off mask independently. Here the masks are rows of randomized
    Hadamard blocks (``foldover_masks``), each followed by its complement: over a block the
    superpixels are balanced and orthogonal, so the design adds next to no noise of its own, and
    the complement cancels the superpixels' pairwise interactions from the fitted weights
    (``weights_covariance``). After each round of ``ROUND_SAMPLES`` (from ``MIN_SAMPLES`` on)
    two things are re-estimated from the responses so far: the sample count that matches
    ``MATCHED_SAMPLES`` independent ones (``matched_sample_count``), and how far the fifth weight
    stands above the next ones in standard errors (``top_separation``). Sampling stops once both
    are met, and never past the cap. The perturbed images are built a batch at a time with one
    fancy-index, not lime's Python loop over samples and superpixels; lime's own kernel and ridge
    fit make the explanation.
    """

    def __init__(
        self, *args: Any, adaptive: bool = True, exact: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.adaptive = adaptive
        # a replay: draw exactly the samples asked for, still tracing the stopping statistics
        self.exact = exact
        self.label = 0  # the class whose weights decide when to stop; explain() sets it
        self.stop: Callable[[], bool] | None = None  # a deadline, checked before each batch
        # per round: (samples so far, samples needed, top-5 separation)
        self.trace: list[tuple[int, float, float]] = []
        self.samples: tuple[np.ndarray, np.ndarray] | None = None  # (masks, model outputs)

    def data_labels(
        self,
        image: np.ndarray,
        fudged_image: np.ndarray,
        segments: np.ndarray,
        classifier_fn: Callable[[np.ndarray], np.ndarray],
        num_samples: int,
        batch_size: int = 10,
        progress_bar: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        n_features = int(segments.max()) + 1
        # float32 once: the model takes float32 anyway, and half the bytes per batch.
        image, fudged_image = image.astype(np.float32), fudged_image.astype(np.float32)
        self.trace, self.samples = [], None
        if np.array_equal(image, fudged_image):  # every sample would be the image itself
            raise Unexplainable(NOTHING_HIDDEN)
        data = np.empty((0, n_features), dtype=np.int64)
        labels: list[np.ndarray] = []
        design = foldover_masks(self.random_state, num_samples, n_features)  # row 0: the image
        while len(data) < num_samples:
            block = design[len(data) : len(data) + ROUND_SAMPLES]
            for start in range(0, len(block), batch_size):
                if self.stop is not None and self.stop():
                    raise OutOfTime
                keep = block[start : start + batch_size][:, segments].astype(bool)  # (B, H, W)
                batch = np.where(keep[..., None], image[None], fudged_image[None])
                labels.append(classifier_fn(batch))
                if not np.isfinite(labels[-1]).all():  # lime's ridge fit would raise on NaN
                    raise Unexplainable(NOT_FINITE)
            data = np.concatenate([data, block])
            if self.adaptive and len(data) >= MIN_SAMPLES:
                outputs = np.concatenate(labels)
                cov = weights_covariance(data, outputs[:, self.label], self.weights_of(data))
                needed = matched_sample_count(cov)
                fit = lime_weights(self.base, data, outputs, self.label)
                separation = top_separation(fit, None if cov is None else cov[0])
                self.trace.append((len(data), needed, separation))
                if len(data) >= needed and separation >= TOP_SEPARATION and not self.exact:
                    break
        self.samples = (data, np.concatenate(labels))
        return self.samples

    def weights_of(self, data: np.ndarray) -> np.ndarray:
        """lime's sample weights: its kernel of the cosine distance to the unperturbed image."""
        distances = sklearn.metrics.pairwise_distances(data, data[:1], metric="cosine").ravel()
        return self.base.kernel_fn(distances)


def explain(
    model: nn.Module,
    image: np.ndarray,
    label: int,
    *,
    to_input: Callable[[Tensor], Tensor],
    channels: int = 3,
    samples: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
    adaptive: bool = True,
    exact: bool = False,
    stop: Callable[[], bool] | None = None,
    stability_rounds: int = 0,
    head: str = "softmax",
) -> LimeResult:
    """Explain ``label`` for one [H,W,3] display image in [0,1] with at most ``samples``
    perturbations (fewer once converged, unless ``adaptive`` is off; exactly ``samples`` with
    ``exact``, a replayed run's count); seeded, so reruns match: the masks come from the same
    stream in the same rounds.
    With ``stability_rounds`` the result also predicts its agreement with a rerun under another
    seed (``resampled_agreement``). An image that cannot be explained (``Unexplainable``, a
    response that never changes, a fit that is not finite) gives a result whose ``failure`` says
    why. Raises ``OutOfTime`` if ``stop()`` turns true before the last model batch."""
    segments, segmentation = segment_with_fallback(image)
    explainer = AntitheticLimeExplainer(random_state=seed, adaptive=adaptive, exact=exact)
    explainer.label, explainer.stop = label, stop

    def unexplained(why: str) -> LimeResult:
        drawn = 0 if explainer.samples is None else len(explainer.samples[0])
        weights = np.zeros(int(segments.max()) + 1)
        trace = tuple(explainer.trace)
        return LimeResult(segments, weights, 0.0, label, drawn, trace, None, segmentation, why)

    try:
        exp = explainer.explain_instance(
            image.astype(np.float64),
            classifier_fn(model, to_input, channels, head),
            labels=(label,),
            top_labels=None,
            num_samples=samples,
            batch_size=batch_size,
            segmentation_fn=lambda _: segments,
            random_seed=seed,
        )
    except Unexplainable as err:
        return unexplained(str(err))
    if explainer.samples is None:  # explain_instance always draws them (data_labels)
        raise RuntimeError("lime returned without drawing a sample")
    data, outputs = explainer.samples
    if np.ptp(outputs[:, label]) == 0:  # lime's ridge would fit zeros and call it R^2 = 1
        return unexplained(NO_RESPONSE)
    weights = weights_vector(exp.local_exp[label], int(segments.max()) + 1)
    if not (np.isfinite(weights).all() and np.isfinite(exp.score)):
        return unexplained("lime's linear fit is not finite")
    used = explainer.trace[-1][0] if explainer.trace else samples
    stability = None
    if stability_rounds and len(data) >= 4:  # the bootstrap resamples pairs after the first
        stability = resampled_agreement(
            explainer.base, data, outputs, label, rounds=stability_rounds, seed=seed
        )
    return LimeResult(
        segments,
        weights,
        float(exp.score),
        label,
        used,
        tuple(explainer.trace),
        stability,
        segmentation,
    )
