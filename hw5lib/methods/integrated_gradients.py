"""Integrated Gradients (Sundararajan et al., 2017) on an adaptive subdivision of the path: the
trapezoid rule on inner cells and the midpoint rule on the end cells, each round halving the cells
whose exact error (the score change across a cell is known from its ends) is largest, every
gradient kept, until the completeness error is small; and the fixed-step form."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import torch
from torch import Tensor, nn

from hw5lib.methods.attributions import Converged, chunks, gradients_and_logits, input_gradient
from hw5lib.model.hooks import eval_mode

# The path's ends are never sampled: at a black baseline every max-pool window ties and the
# gradient there belongs to no linear piece the path crosses (measured: 2-3x the value just
# inside), so a rule using it keeps a several-percent error however fine it gets.
MIN_CELL = 2.0**-30  # cells are not split below this width (float64 keeps its midpoints)


def cell_nodes(edges: list[float]) -> list[float]:
    """The points a subdivision of [0, 1] (its cell ``edges``, 0 and 1 included) evaluates:
    every inner edge, and the midpoints of the two end cells."""
    inner = edges[1:-1]
    ends = {(edges[0] + edges[1]) / 2, (edges[-2] + edges[-1]) / 2}
    return sorted(ends.union(inner))


def cell_weights(edges: list[float], nodes: list[float]) -> list[float]:
    """Quadrature weights of ``nodes`` (``cell_nodes(edges)``): the trapezoid rule on inner
    cells, the midpoint rule on the two end cells (whose outer ends are not sampled)."""
    at = {a: i for i, a in enumerate(nodes)}
    w = [0.0] * len(nodes)
    last = len(edges) - 2
    for j, (a, b) in enumerate(pairwise(edges)):
        if j in (0, last):
            w[at[(a + b) / 2]] += b - a
        else:
            w[at[a]] += (b - a) / 2
            w[at[b]] += (b - a) / 2
    return w


def cell_errors(edges: list[float], f: dict[float, float], g: dict[float, float]) -> list[float]:
    """Each cell's exact quadrature error: its rule's estimate of the integral of
    g(a) = <grad f(path(a)), x - x'> minus f(b) - f(a), which is that integral exactly. ``f``
    holds the score at every edge (the ends: the image and the baseline), ``g`` the
    integrand at every node. They sum to the estimate's completeness error (unscaled)."""
    last = len(edges) - 2
    out = []
    for j, (a, b) in enumerate(pairwise(edges)):
        rule = g[(a + b) / 2] if j in (0, last) else (g[a] + g[b]) / 2
        out.append((b - a) * rule - (f[b] - f[a]))
    return out


def cells_to_split(edges: list[float], errors: list[float], room: int) -> list[float]:
    """The midpoints that split the worse half of the cells (largest |error| first, ties to
    the left) and add at most ``room`` nodes."""
    order = sorted(range(len(errors)), key=lambda j: (-abs(errors[j]), j))
    order = [j for j in order if edges[j + 1] - edges[j] > MIN_CELL]
    have, picked = set(cell_nodes(edges)), []
    for j in order[: (len(errors) + 1) // 2]:
        trial = sorted([*edges, *picked, (edges[j] + edges[j + 1]) / 2])
        if len(set(cell_nodes(trial)) | have) > len(have) + room:
            break
        picked.append((edges[j] + edges[j + 1]) / 2)
    return sorted(picked)


def first_cells(max_steps: int, cells: int) -> int:
    """The first round's cells: ``cells``, fewer when its cells + 1 nodes exceed the cap."""
    return max(1, min(cells, max_steps - 1))


def integrated_gradients_until_converged(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    baseline: Tensor,
    max_steps: int = 32,
    cells: int = 4,
    tolerance: float = 0.01,
    batch_size: int = 64,
    stop: Callable[[], bool] | None = None,
    splits_per_image: list[list[list[float]]] | None = None,
) -> Converged:
    """Integrated Gradients on a per-image adaptive subdivision of the path [0, 1].

    The completeness error of any rule is exactly its error in integrating the scalar
    g(a) = <grad f(x' + a (x - x')), x - x'>, and the score f at every node comes free with its
    gradient, so each cell's own error is known exactly (``cell_errors``). Round one splits
    [0, 1] into ``cells`` equal cells (cells + 1 gradients); each later round halves the worse
    half of an image's cells, every earlier gradient kept (a halved inner cell costs one
    gradient), until the completeness error is at most ``tolerance`` or the image has
    ``max_steps`` gradients. All new points of a round, over all images, are one chunked batch.
    ``used`` = ``final`` counts the gradients, ``quality`` is the completeness error,
    ``splits`` the edges each round added, per image. ``splits_per_image`` (a replayed run's
    ``splits``) makes exactly those splits instead of testing the error."""
    n, device = len(x), x.device
    delta = x - baseline
    f_end = torch.stack([logits_of(model, baseline, target), logits_of(model, x, target)], 1)
    gap = (f_end[:, 1] - f_end[:, 0]).double().cpu()
    m = first_cells(max_steps, cells)
    edges = [[k / m for k in range(m + 1)] for _ in range(n)]
    f = [{0.0: float(a), 1.0: float(b)} for a, b in f_end.double().cpu().tolist()]
    g: list[dict[float, float]] = [{} for _ in range(n)]
    grads: list[dict[float, Tensor]] = [{} for _ in range(n)]
    splits: list[list[list[float]]] = [[] for _ in range(n)]
    error = torch.full((n,), float("inf"), dtype=torch.float64)
    used = torch.zeros(n, dtype=torch.long)
    trace: list[list[float]] = []
    counts: list[list[int]] = []
    todo = {i: cell_nodes(edges[i]) for i in range(n)}  # the points of this round, per image
    while todo:
        rows = [(i, a) for i, points in todo.items() for a in points]
        img = torch.tensor([i for i, _ in rows], device=device)
        alpha = torch.tensor([a for _, a in rows], dtype=x.dtype, device=device).view(-1, 1, 1, 1)
        grad, logit = gradients_and_logits(
            model, baseline[img] + alpha * delta[img], target[img], batch_size=batch_size
        )
        along = (grad * delta[img]).flatten(1).sum(1, dtype=torch.float64).cpu().tolist()
        scores = logit.double().cpu().tolist()
        for k, (i, a) in enumerate(rows):
            grads[i][a], g[i][a], f[i][a] = grad[k], along[k], scores[k]
        for i in todo:
            used[i] = len(grads[i])
            err = cell_errors(edges[i], f[i], g[i])
            error[i] = abs(sum(err)) / max(abs(float(gap[i])), 1e-300)
        trace.append(error.tolist())
        counts.append(used.tolist())
        if stop is not None and stop():
            break
        nxt: dict[int, list[float]] = {}
        for i in todo:
            if splits_per_image is not None:
                rounds = splits_per_image[i]
                add = rounds[len(splits[i])] if len(splits[i]) < len(rounds) else []
                if len(cell_nodes(sorted([*edges[i], *add]))) > max_steps:
                    add = []  # a replay cut to a lower cap keeps the rounds within it
            elif error[i] > tolerance:
                room = max_steps - int(used[i])
                add = cells_to_split(edges[i], cell_errors(edges[i], f[i], g[i]), room)
            else:
                add = []
            if add:
                splits[i].append(add)
                edges[i] = sorted([*edges[i], *add])
                nxt[i] = [a for a in cell_nodes(edges[i]) if a not in grads[i]]
        todo = {i: points for i, points in nxt.items() if points}
    value = torch.zeros_like(x)
    for i in range(n):
        nodes = cell_nodes(edges[i])
        w = torch.tensor(cell_weights(edges[i], nodes), dtype=x.dtype, device=device)
        stacked = torch.stack([grads[i][a] for a in nodes])
        value[i] = delta[i] * (w.view(-1, 1, 1, 1) * stacked).sum(dim=0)
    quality = completeness_error(model, x, target, baseline, value).cpu()
    variation = torch.tensor(
        [sum(abs(f[i][b] - f[i][a]) for a, b in pairwise(edges[i])) for i in range(n)],
        dtype=torch.float64,
    )
    conditioning = variation / gap.abs().clamp_min(1e-300)
    return Converged(value, used, quality, used.clone(), trace, counts, splits, conditioning)


def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    baseline: Tensor,
    steps: int = 32,
    batch_size: int = 64,
) -> Tensor:
    """(x - x') * integral_0^1 grad f(x' + a(x - x')) da, [N,C,H,W] (Sundararajan et al., 2017).

    The integral uses Gauss-Legendre nodes, which reach a given completeness error in far fewer
    steps than the Riemann sums of the paper. All N*steps points are one chunked batch.
    """
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor((nodes + 1) / 2, dtype=x.dtype, device=x.device)  # nodes on [0, 1]
    w = torch.tensor(weights / 2, dtype=x.dtype, device=x.device)
    delta = x - baseline
    path = baseline.unsqueeze(0) + alphas.view(-1, 1, 1, 1, 1) * delta.unsqueeze(0)
    grads = input_gradient(
        model, path.reshape(-1, *x.shape[1:]), target.repeat(steps), batch_size=batch_size
    ).reshape(steps, *x.shape)
    return delta * (w.view(-1, 1, 1, 1, 1) * grads).sum(dim=0)


def logits_of(model: nn.Module, x: Tensor, target: Tensor, *, batch_size: int = 64) -> Tensor:
    """logit[target] for each image, [N]."""
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    with eval_mode(model), torch.inference_mode():
        for s in chunks(len(x), batch_size):
            out[s] = model(x[s]).gather(1, target[s, None]).squeeze(1)
    return out


def completeness_error(
    model: nn.Module, x: Tensor, target: Tensor, baseline: Tensor, attr: Tensor
) -> Tensor:
    """|sum(attr) - (f(x) - f(x'))| / |f(x) - f(x')| per image: IG's own accuracy check."""
    gap = logits_of(model, x, target) - logits_of(model, baseline, target)
    return (attr.sum(dim=(1, 2, 3)) - gap).abs() / gap.abs().clamp_min(1e-12)
