"""How LIME samples and when it stops: foldover Hadamard on/off masks, the sandwich covariance of
lime's fitted weights, the sample count that matches stock lime's precision, and how settled its
top five are."""

from __future__ import annotations

import numpy as np

# Sampling rule (see ``lime_adapter.AntitheticLimeExplainer``): rounds of this many samples, at least
# ``MIN_SAMPLES``, and at most the caller's ``samples`` (1000 by default, lime's own count).
ROUND_SAMPLES = 100
# The floor is measured, not derived (bench/lime_design.py, bench/RESULTS.md, 16 demo images,
# three stock 1000-sample references each): with the foldover design (``foldover_masks``) the
# stopping rule from 400 drew 469 samples on average for top-5 overlap / rank correlation
# 0.979 / 0.706, against a stock run's own 0.975 / 0.647 and random antithetic pairs' 0.975 / 0.683
# (from their 600 floor, 650 samples); from 300 it drew 344 but fell just short of stock on the
# top five (0.971).
MIN_SAMPLES = 400
# lime's sample count the stopping rule matches: stop once the estimate is as precise as a stock
# lime run with this many independent samples would be.
MATCHED_SAMPLES = 1000
# ... and once the top five superpixels, what a reader looks at, are settled: the fifth weight at
# least TOP_SEPARATION standard errors above each of the next three. Calibrated with random pairs
# on 40 sample images against three 1000-sample stock runs each (bench/RESULTS.md): 600 samples
# for every image matched stock lime's top-5 overlap only exactly (0.947 both); with this rule,
# 705 samples on average, 0.950. With the foldover design it is what lifts a hard image past the
# floor (the full-size Classifier's two measured images: 500 and 800 samples).
TOP_K, TOP_RIVALS, TOP_SEPARATION = 5, 3, 1.0
# The separation recorded where it would be infinite (no sampling noise left, or no superpixel
# ranked below the top k): finite, so that it can go into manifest.json, and far above any
# measured one (the demo's largest is about 30).
SEPARATION_SETTLED = 1e6


def paley_prime(n_features: int) -> int:
    """The smallest prime p >= ``n_features`` with p = 3 (mod 4): Paley's construction then gives
    a Hadamard matrix of order p + 1 with p non-constant columns, one for each superpixel."""
    p = max(n_features, 3)
    while p % 4 != 3 or any(p % d == 0 for d in range(2, int(p**0.5) + 1)):
        p += 1
    return p


def paley_hadamard(p: int) -> np.ndarray:
    """Paley's Hadamard matrix of order p + 1 (p a prime = 3 mod 4): +-1 entries, columns
    mutually orthogonal, column 0 all +1 (so every other column is balanced).

    Unlike Sylvester's (powers of two), whose columns are closed under products, so that a
    three-superpixel interaction would land wholly on one other superpixel's weight, a Paley
    design spreads each product thinly over all columns (|correlation| <= 0.19 at order 128).
    """
    residues = {(i * i) % p for i in range(1, p)}
    chi = np.array([0] + [1 if a in residues else -1 for a in range(1, p)])
    jacobsthal = chi[(np.arange(p)[None, :] - np.arange(p)[:, None]) % p]  # skew for p = 3 mod 4
    h = np.eye(p + 1, dtype=np.int64)
    h[0, 1:], h[1:, 0] = 1, -1
    h[1:, 1:] += jacobsthal
    return h * h[:, :1]  # rows signed so that column 0 is all +1


def foldover_masks(random_state: np.random.RandomState, n: int, n_features: int) -> np.ndarray:
    """The first ``n`` on/off rows of a seeded stream of foldover Hadamard blocks, in pairs
    (row, 1 - row); row 0 is the image itself (all on), row 1 all hidden.

    A block: ``n_features`` distinct non-constant columns, chosen at random, of the Paley
    Hadamard matrix of order N = ``paley_prime(n_features)`` + 1, with random column signs; its
    N rows in random order, each followed by its complement: 2N samples. In the first block the
    signs are those of its first row, which is then all on. Over a whole block every superpixel
    is on in exactly half the rows and any two superpixels' on/off columns are orthogonal, so
    the design adds almost no noise of its own to lime's fit (with random masks the columns'
    chance correlations do, a share that falls only as 1/n; lime's kernel weights rows by their
    on count, which varies a little here); the complements keep the superpixels' pairwise
    interactions out of the weights (``weights_covariance``). A prefix of the stream is what a
    run stopped at that count drew (a replay draws exactly that count).
    """
    p = paley_prime(n_features)
    h = paley_hadamard(p)
    blocks: list[np.ndarray] = []
    while sum(map(len, blocks)) < n:
        cols = 1 + random_state.permutation(p)[:n_features]
        rows = random_state.permutation(p + 1)
        signs = h[rows[0], cols] if not blocks else random_state.randint(0, 2, n_features) * 2 - 1
        on = (h[np.ix_(rows, cols)] * signs > 0).astype(np.int64)  # (N, F)
        blocks.append(np.stack([on, 1 - on], axis=1).reshape(-1, n_features))
    return np.concatenate(blocks)[:n] if blocks else np.empty((0, n_features), dtype=np.int64)


def weights_covariance(
    data: np.ndarray, labels: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Sandwich covariance of the superpixel weights of lime's weighted least-squares fit, from
    the samples so far (``data`` rows in complementary pairs): (each pair one unit, as we sample;
    each sample its own unit, as stock lime's independent draws). None when the response is
    linear in the superpixels, so that no sampling noise is left.

    Noise in the fitted weights comes from the part of the model's response the linear model does
    not explain. Within a pair (m, 1-m) every linear feature flips sign, so much of that residual
    (the superpixels' pairwise interactions) cancels between the two; the paired covariance
    measures what is left. It treats the pairs as independent draws; in the foldover design they
    are drawn without replacement from an orthogonal block, which only removes noise, so the
    estimate stays honest or errs high: on a toy response (40 superpixels, 60 seeds) it was within
    -5% to +14% of the weights' real variance at 200 and 400 samples, where for random pairs it
    was up to 18% low at 200.
    """
    pairs = len(data) // 2
    x = np.column_stack([np.ones(2 * pairs), data[: 2 * pairs]])  # (2P, 1+F)
    y, w = labels[: 2 * pairs], weights[: 2 * pairs]
    bread = np.linalg.pinv(x.T @ (x * w[:, None]))
    coef = bread @ (x.T @ (w * y))
    resid = y - x @ coef
    if float(resid @ resid) <= 1e-20 * max(float(((y - y.mean()) ** 2).sum()), 1e-30):
        return None
    score = x * (w * resid)[:, None]  # (2P, 1+F) each sample's pull on the fit
    paired = score.reshape(pairs, 2, -1).sum(axis=1)  # (P, 1+F)

    def covariance(units: np.ndarray) -> np.ndarray:
        return (bread @ (units.T @ units) @ bread)[1:, 1:]

    return covariance(paired), covariance(score)


def matched_sample_count(covariance: tuple[np.ndarray, np.ndarray] | None) -> float:
    """How many paired samples give the linear weights the noise of ``MATCHED_SAMPLES``
    independent ones: the ratio of the total variance of the weights with pairs as units to
    that with samples as units (``weights_covariance``), times ``MATCHED_SAMPLES``."""
    if covariance is None:
        return 0.0  # the response is linear in the superpixels: nothing left to average out
    paired, independent = covariance
    return MATCHED_SAMPLES * float(np.trace(paired)) / max(float(np.trace(independent)), 1e-30)


def top_separation(weights: np.ndarray, covariance: np.ndarray | None, k: int = TOP_K) -> float:
    """How settled the top-``k`` set is: the smallest z = (w_i - w_j) / se(w_i - w_j) of a top-k
    superpixel i over each of the ``TOP_RIVALS`` ranked next, at most ``SEPARATION_SETTLED``
    (also its value without noise, or with at most ``k`` superpixels: nothing to separate)."""
    if covariance is None:
        return SEPARATION_SETTLED
    order = np.argsort(-weights, kind="stable")
    top, rivals = order[:k], order[k : k + TOP_RIVALS]
    if len(rivals) == 0:
        return SEPARATION_SETTLED
    i, j = np.meshgrid(top, rivals, indexing="ij")
    var = covariance[i, i] + covariance[j, j] - 2 * covariance[i, j]
    z = (weights[i] - weights[j]) / np.sqrt(np.maximum(var, 1e-30))
    return min(float(z.min()), SEPARATION_SETTLED)
