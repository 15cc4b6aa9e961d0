"""Per-class strategies from attribution maps: SpRAy, spectral relevance analysis (Lapuschkin et
al., "Unmasking Clever Hans predictors and assessing what machines really learn", Nat. Commun.
2019). numpy + scikit-learn/scipy only: arrays in, frozen dataclasses out.

Recipe: normalise and pool each map, a symmetric k-nearest-neighbour graph between them, the
smallest eigenvalues of its normalised Laplacian (the eigengap gives the number of strategies),
KMeans on the spectral embedding. A cluster whose attribution sits away from the object and whose
accuracy differs from the rest of its class is flagged as a suspected shortcut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg
from scipy.sparse import csgraph
from scipy.sparse.linalg import eigsh
from scipy.stats import fisher_exact
from sklearn.cluster import KMeans
from sklearn.neighbors import kneighbors_graph

from hw5lib.audit.regions import DECIMALS, Location, away_from_object, locate, normalise

# Below this many images a class gets one cluster and no analysis: a kNN graph of a handful of
# maps has no meaningful spectrum, and an accuracy contrast between 3 and 4 images means nothing.
MIN_CLASS_SIZE = 8
# The paper looks at a few strategies per class; more clusters split one strategy into noise.
MAX_CLUSTERS = 5
# Maps are sum-pooled to this side before the graph: a blob shifted by a few pixels must still
# overlap itself (the paper downsizes heavily for the same reason), while 8 x 8 keeps the corner
# squares (S/4) two cells wide.
POOLED_SIDE = 8
# Neighbours per map: ln N (von Luxburg, "A tutorial on spectral clustering", 2007: k ~ log n
# keeps the graph connected), at least MIN_NEIGHBOURS so a small class does too. Fewer neighbours
# than sqrt(N) separated a planted corner mark on 300-2000 synthetic maps at least as often as
# sqrt(N) and never split a clean class; a strategy smaller than k cannot be a component of its own.
MIN_NEIGHBOURS = 5
# k > 1 strategies need the first k eigenvalues near zero (k nearly disconnected groups) and the
# next one far above: lambda_k >= SPECTRAL_JUMP * lambda_(k-1). The plain largest gap splits one
# continuous strategy (a blob at varying offsets: a 2-D manifold, whose spectrum grows steadily,
# lambda_j ~ j) at an arbitrary k; a factor of 4 excludes any manifold of dimension >= 1.
SPECTRAL_JUMP = 4.0
ZERO_EIGENVALUE = 1e-10  # below this an eigenvalue is 0: one more disconnected group
# Dense LAPACK up to this many images (exact, ~4 s for 3000 on one core, memory N^2 floats);
# above it sparse shift-invert ARPACK, as sklearn's spectral_embedding does.
DENSE_LIMIT = 4000
# KMeans restarts: fixed so the result does not depend on sklearn's default changing.
KMEANS_INIT = 10
TYPICAL = 4  # typical images shown per cluster
# Flag: the cluster's accuracy must differ from the rest of the class by at least this much ...
ACCURACY_MARGIN = 0.15
# ... and that difference must be unlikely by chance (two-sided Fisher exact test): small
# clusters swing their accuracy by a lot on one image.
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Eigengap:
    """The smallest eigenvalues of the normalised Laplacian and the number of clusters chosen:
    k = argmax over 1..max_clusters of eigenvalues[k] - eigenvalues[k - 1]."""

    eigenvalues: tuple[float, ...]
    k: int
    found_by: str = "eigengap"  # or "shortcut search": a k whose clustering holds a flag

    def to_json(self) -> dict:
        values = [round(v, DECIMALS) for v in self.eigenvalues]
        return {"eigenvalues": values, "k": self.k, "found_by": self.found_by}


@dataclass(frozen=True)
class Cluster:
    """One strategy of a class. ``members`` and ``typical`` index the class's arrays."""

    index: int
    members: tuple[int, ...]
    accuracy: float
    mean_map: np.ndarray  # [S,S] mean of the members' sum-normalised maps
    typical: tuple[int, ...]  # nearest the cluster centre in the embedding, nearest first
    location: Location
    flagged: bool
    reason: str | None  # why flagged, with the numbers; None when not flagged

    @property
    def size(self) -> int:
        return len(self.members)

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "size": self.size,
            "members": list(self.members),
            "accuracy": round(self.accuracy, DECIMALS),
            "mean_map": np.round(self.mean_map, DECIMALS).tolist(),
            "typical": list(self.typical),
            "location": self.location.to_json(),
            "flagged": self.flagged,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ClassStrategies:
    """SpRAy result for one class. ``embedding`` [N,2]: the first two non-trivial spectral
    coordinates (zeros when the class is too small to analyse)."""

    size: int
    accuracy: float | None  # None for an empty class
    mean_map: np.ndarray  # [S,S]
    location: Location
    clusters: tuple[Cluster, ...]
    eigengap: Eigengap | None  # None when the class is too small to analyse
    embedding: np.ndarray

    @property
    def flagged(self) -> tuple[Cluster, ...]:
        return tuple(c for c in self.clusters if c.flagged)

    def to_json(self) -> dict:
        return {
            "size": self.size,
            "accuracy": None if self.accuracy is None else round(self.accuracy, DECIMALS),
            "mean_map": np.round(self.mean_map, DECIMALS).tolist(),
            "location": self.location.to_json(),
            "eigengap": None if self.eigengap is None else self.eigengap.to_json(),
            "clusters": [c.to_json() for c in self.clusters],
            "embedding": np.round(self.embedding, DECIMALS).tolist(),
        }


def pool(maps: np.ndarray, side: int) -> np.ndarray:
    """Sum-pool [N,S,S] -> [N,side,side] (any S >= side): each pixel goes to the cell its index
    falls in, so the pooled maps keep their sums."""
    s = maps.shape[-1]
    if s <= side:
        return maps
    bins = np.zeros((side, s))
    bins[np.arange(s) * side // s, np.arange(s)] = 1.0
    return bins @ maps @ bins.T  # [side,S] @ [N,S,S] @ [S,side]


def spectrum(
    flat: np.ndarray, count: int, neighbours: int, *, dense_limit: int = DENSE_LIMIT
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric kNN graph on the rows of ``flat`` [N,D] -> (the ``count`` smallest eigenvalues
    of its normalised Laplacian, the matching embedding [N,count] = eigenvectors / sqrt(degree)
    with a fixed sign, as sklearn's spectral_embedding)."""
    knn = kneighbors_graph(flat, neighbours, mode="connectivity", include_self=False)
    affinity = 0.5 * (knn + knn.T)  # symmetric: an edge when either map is the other's neighbour
    lap, sqrt_degree = csgraph.laplacian(affinity, normed=True, return_diag=True)
    if flat.shape[0] <= dense_limit:
        values, vectors = linalg.eigh(lap.toarray(), subset_by_index=[0, count - 1])
    else:  # shift-invert ARPACK as sklearn: eigenvalues of -L nearest 1 = smallest of L
        v0 = np.random.default_rng(0).uniform(-1, 1, flat.shape[0])  # fixed start: same result
        values, vectors = eigsh(-lap.tocsc(), k=count, sigma=1.0, which="LM", v0=v0)
        order = np.argsort(-values)
        values, vectors = -values[order], vectors[:, order]
    embedding = vectors / sqrt_degree[:, None]
    signs = np.sign(embedding[np.abs(embedding).argmax(axis=0), np.arange(count)])
    values = np.where(values < ZERO_EIGENVALUE, 0.0, values)  # rounding noise is no spectrum
    return values, embedding * np.where(signs == 0, 1.0, signs)


def choose_k(values: np.ndarray, max_clusters: int) -> int:
    """Eigengap: the k in 2..max_clusters after which the spectrum jumps most, counting only
    jumps by SPECTRAL_JUMP or more; none: 1 (one strategy)."""
    best, k = 0.0, 1
    for j in range(2, min(max_clusters, len(values) - 1) + 1):
        gap = values[j] - values[j - 1]
        if values[j] >= SPECTRAL_JUMP * values[j - 1] and gap > best:
            best, k = gap, j
    return k


def _label_groups(labels: np.ndarray) -> list[np.ndarray]:
    """KMeans labels -> member index arrays, largest first, ties by smallest member: cluster
    numbers do not depend on KMeans' arbitrary numbering."""
    groups = [np.flatnonzero(labels == v) for v in np.unique(labels)]
    return sorted(groups, key=lambda g: (-g.size, int(g[0])))


def _typical(members: np.ndarray, space: np.ndarray) -> tuple[int, ...]:
    """Up to TYPICAL members nearest their centroid in ``space`` [N,D], by distance then index."""
    points = space[members]
    # Rounded so that ties (a disconnected cluster sits on one point) fall to the index.
    dist = np.round(np.linalg.norm(points - points.mean(axis=0), axis=1), 12)
    order = np.lexsort((members, dist))
    return tuple(int(members[i]) for i in order[:TYPICAL])


def _accuracy_contrast(
    correct: np.ndarray, members: np.ndarray, alpha: float
) -> tuple[float, float, bool]:
    """(cluster accuracy, rest-of-class accuracy, whether they differ by ACCURACY_MARGIN and
    significantly)."""
    inside = np.zeros(correct.size, bool)
    inside[members] = True
    a, b = correct[inside], correct[~inside]
    acc, rest = float(a.mean()), float(b.mean())
    table = [[int(a.sum()), int(a.size - a.sum())], [int(b.sum()), int(b.size - b.sum())]]
    differs = abs(acc - rest) >= ACCURACY_MARGIN and fisher_exact(table)[1] <= alpha
    return acc, rest, differs


def _flag_reason(
    probs: np.ndarray, correct: np.ndarray, masks: np.ndarray | None, members: np.ndarray,
    alpha: float,
) -> str | None:  # fmt: skip
    """One sentence when cluster ``members`` is a suspected shortcut, else None."""
    rest = np.setdiff1d(np.arange(correct.size), members)
    away = away_from_object(
        locate(probs[members], None if masks is None else masks[members]),
        [locate(probs[rest], None if masks is None else masks[rest])],
    )
    acc, rest_acc, differs = _accuracy_contrast(correct, members, alpha)
    if away is None or not differs:
        return None
    return f"{away} and accuracy {acc:.0%} vs {rest_acc:.0%} in the rest of the class"


def _clusters_at(
    k: int, probs: np.ndarray, correct: np.ndarray, masks: np.ndarray | None,
    embedding: np.ndarray, seed: int, alpha: float,
) -> tuple[Cluster, ...]:  # fmt: skip
    """The class cut into ``k`` clusters by seeded KMeans on the first k spectral coordinates,
    each with its numbers and, for k > 1, its flag at level ``alpha``."""
    n = probs.shape[0]
    if k == 1:
        labels = np.zeros(n, int)
    else:
        kmeans = KMeans(n_clusters=k, n_init=KMEANS_INIT, random_state=seed)
        labels = kmeans.fit_predict(embedding[:, :k])
    space = embedding[:, : max(k, 3)]
    clusters = []
    for i, members in enumerate(_label_groups(labels)):
        sub_masks = None if masks is None else masks[members]
        reason = None if k == 1 else _flag_reason(probs, correct, masks, members, alpha)
        clusters.append(
            Cluster(
                index=i,
                members=tuple(int(m) for m in members),
                accuracy=float(correct[members].mean()),
                mean_map=probs[members].mean(axis=0),
                typical=_typical(members, space),
                location=locate(probs[members], sub_masks),
                flagged=reason is not None,
                reason=reason,
            )
        )
    return tuple(clusters)


def class_strategies(
    maps: np.ndarray,
    correct: np.ndarray,
    masks: np.ndarray | None,
    seed: int,
    *,
    max_clusters: int = MAX_CLUSTERS,
) -> ClassStrategies:
    """SpRAy for one class. maps [N,S,S] non-negative (S >= 8), correct [N] bool, masks [N,S,S]
    bool or None -> strategies. Same inputs, same result. A class where every image uses one
    shortcut has one cluster and nothing to contrast it with: see ``class_outliers``."""
    maps = np.asarray(maps, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2] or correct.size != maps.shape[0]:
        raise ValueError(f"maps {maps.shape} must be [N,S,S] and correct {correct.shape} [N]")
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != maps.shape:
            raise ValueError(f"masks {masks.shape} must match maps {maps.shape}")
    n, side = maps.shape[0], maps.shape[-1]
    probs = normalise(maps)
    whole = locate(probs, masks)
    mean_map = probs.mean(axis=0) if n else np.full((side, side), 1.0 / side**2)
    accuracy = float(correct.mean()) if n else None
    if n < MIN_CLASS_SIZE:
        every = tuple(range(n))
        clusters = () if accuracy is None else (
            Cluster(0, every, accuracy, mean_map, every[:TYPICAL], whole, False, None),)  # fmt: skip
        return ClassStrategies(n, accuracy, mean_map, whole, clusters, None, np.zeros((n, 2)))
    flat = pool(probs, POOLED_SIDE).reshape(n, -1)
    neighbours = min(n - 1, max(MIN_NEIGHBOURS, math.ceil(math.log(n))))
    count = min(n, max(max_clusters + 1, 3))  # at least 3: the plot's two non-trivial coordinates
    values, embedding = spectrum(flat, count, neighbours)
    k = min(choose_k(values, max_clusters), n)
    # The eigengap says how many strategies the spectrum shows; a shortcut used by part of a
    # class can sit along the first coordinates without a gap (objects at varying places
    # spread the spectrum). So every k up to max_clusters is searched for a flagged cluster,
    # the accuracy test's level divided by the clusters examined (Bonferroni).
    alpha = SIGNIFICANCE / sum(range(2, max_clusters + 1))
    found_by, clusters = "eigengap", _clusters_at(k, probs, correct, masks, embedding, seed, alpha)
    if not any(c.flagged for c in clusters):
        for other in (j for j in range(2, min(max_clusters, n) + 1) if j != k):
            searched = _clusters_at(other, probs, correct, masks, embedding, seed, alpha)
            if any(c.flagged for c in searched):
                found_by, k, clusters = "shortcut search", other, searched
                break
    gap = Eigengap(tuple(float(v) for v in values), k, found_by)
    return ClassStrategies(n, accuracy, mean_map, whole, clusters, gap, embedding[:, 1:3].copy())


@dataclass(frozen=True)
class ClassOutlier:
    """Class-level flag: a class whose whole attribution sits away from the object compared with
    the other classes (the shortcut every image of the class uses, which clustering cannot see)."""

    index: int  # position in the sequence given to class_outliers
    flagged: bool
    reason: str | None

    def to_json(self) -> dict:
        return {"index": self.index, "flagged": self.flagged, "reason": self.reason}


def class_outliers(classes: Sequence[ClassStrategies]) -> tuple[ClassOutlier, ...]:
    """Each class's location against the median of the other classes' (location alone: there is
    no accuracy contrast within a class that uses one strategy). Needs at least 3 classes."""
    out = []
    for i, strategies in enumerate(classes):
        others = [c.location for j, c in enumerate(classes) if j != i and c.size]
        reason = None
        if len(others) >= 2 and strategies.size >= MIN_CLASS_SIZE:
            away = away_from_object(strategies.location, others, "in the other classes' median")
            reason = None if away is None else f"whole class: {away}"
        out.append(ClassOutlier(i, reason is not None, reason))
    return tuple(out)
