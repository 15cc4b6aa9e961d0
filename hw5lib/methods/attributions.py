"""Gradient attributions, batched: saliency, Gradient x Input, SmoothGrad, Integrated Gradients.

Every method scores the pre-softmax logit of ``target``; x is [N,C,H,W] in the model's input space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import torch
from torch import Tensor, nn

from hw5lib.model.hooks import eval_mode, frozen_params

Method = Callable[..., Tensor]


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def input_gradient(model: nn.Module, x: Tensor, target: Tensor, *, batch_size: int = 64) -> Tensor:
    """d logit[target] / d x, [N,C,H,W]. No parameter gradients are accumulated."""
    return gradients_and_logits(model, x, target, batch_size=batch_size)[0]


def saliency(model: nn.Module, x: Tensor, target: Tensor, *, batch_size: int = 64) -> Tensor:
    """|d logit / d x|, max over channels: [N,H,W] (Simonyan et al., 2014, arXiv:1312.6034)."""
    return input_gradient(model, x, target, batch_size=batch_size).abs().amax(dim=1)


def grad_x_input(model: nn.Module, x: Tensor, target: Tensor, *, batch_size: int = 64) -> Tensor:
    """Gradient times input, [N,C,H,W] (Shrikumar et al., 2016, arXiv:1605.01713)."""
    return input_gradient(model, x, target, batch_size=batch_size) * x


def channel_sum(attr: Tensor) -> Tensor:
    """[N,C,H,W] signed attribution -> [N,H,W] per-pixel total (its sign is kept)."""
    return attr.sum(dim=1)


def noisy_copies(x: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """x [N,C,H,W] plus standard-normal ``noise`` [S,N,C,H,W] scaled to ``sigma`` times each
    image's value range (Smilkov et al. recommend 10-20%) -> [S*N,C,H,W], sample-major."""
    spread = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(1, -1, 1, 1, 1)
    return (x.unsqueeze(0) + noise * sigma * spread).reshape(-1, *x.shape[1:])


def smoothgrad(
    method: Method,
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    samples: int = 50,
    sigma: float = 0.15,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Average ``method`` over noisy copies of x (Smilkov et al., 2017, arXiv:1706.03825).

    Noise std is ``sigma`` times each image's value range, as the paper recommends (10-20%).
    All N*samples noisy images go through ``method`` as one batch, chunked by ``batch_size``.
    """
    # Drawn on the CPU generator, then moved: the same seed gives the same noise on any device.
    noise = torch.randn((samples, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
    maps = method(
        model, noisy_copies(x, noise, sigma), target.repeat(samples), batch_size=batch_size
    )
    return maps.reshape(samples, len(x), *maps.shape[1:]).mean(dim=0)


@dataclass
class Converged:
    """A sampled or iterated estimate and how it got there."""

    value: Tensor  # the estimate, per image
    used: Tensor  # [N] samples (SmoothGrad) or steps (IG) spent on each image
    quality: Tensor  # [N] the stopping statistic at the end (see each method)
    # [N] size of the estimate returned: its samples (SmoothGrad) or gradients (IG): = used
    final: Tensor
    trace: list[list[float]] = field(default_factory=list)  # per round: the statistic per image
    counts: list[list[int]] = field(default_factory=list)  # per round: ``used`` per image (IG)
    splits: list[list[list[float]]] = field(default_factory=list)  # IG: edges added, per round
    # IG, [N]: the score's variation along the path over its net change, sum |f(b) - f(a)| over
    # the cells / |f(x) - f(x')| (a lower bound): the relative completeness error is this many
    # times the quadrature's error relative to the integrand's own size.
    conditioning: Tensor | None = None


def split_half_agreement(a: Tensor, b: Tensor) -> Tensor:
    """Predicted correlation of the mean of two half-estimates a, b [N,...] with the exact
    (infinitely sampled) value: the halves' correlation r is the reliability of one half, the
    Spearman-Brown formula 2r/(1+r) that of the whole, and its square root the correlation with
    the noise-free value (classical test theory)."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)).clamp_min(0)
    return (2 * r / (1 + r)).sqrt()


def smoothgrad_until_converged(
    method: Method,
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    max_samples: int = 50,
    min_samples: int = 10,
    round_samples: int = 10,
    agreement: float = 0.98,
    sigma: float = 0.15,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    stop: Callable[[], bool] | None = None,
    samples_per_image: Tensor | None = None,
) -> Converged:
    """SmoothGrad that stops per image once its map has converged (at most ``max_samples``).

    Samples come in rounds of ``round_samples``, alternately into two half-sums; an image stops
    when the halves predict a correlation of at least ``agreement`` between its map and the
    exact expectation (``split_half_agreement``). Every round draws noise for all images from
    ``generator`` (converged ones discard theirs), so the result is independent of batching.
    ``quality`` is that predicted correlation: also a free seed-stability measure.
    ``samples_per_image`` [N] (a replayed run's counts) stops each image at its count instead:
    the same rounds and noise as the run that decided them.
    """
    n = len(x)
    if samples_per_image is not None:
        max_samples = int(samples_per_image.max())
    halves: list[Tensor | None] = [None, None]
    used = torch.zeros(n, dtype=torch.long)
    quality = torch.zeros(n)
    active = torch.ones(n, dtype=torch.bool)
    trace = []
    while active.any() and int(used.max()) < max_samples:
        k = min(round_samples, max_samples - int(used.max()))
        noise = torch.randn((k, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
        idx = active.nonzero().squeeze(1)
        noisy = noisy_copies(x[idx], noise[:, idx], sigma)
        maps = method(model, noisy, target[idx].repeat(k), batch_size=batch_size)
        maps = maps.reshape(k, len(idx), *maps.shape[1:]).cpu()
        for h in (0, 1):
            part = maps[h::2].sum(dim=0)
            if halves[h] is None:
                halves[h] = torch.zeros(n, *part.shape[1:], dtype=part.dtype)
            halves[h][idx] += part  # type: ignore[index]
        used[idx] += k
        quality[idx] = split_half_agreement(halves[0][idx], halves[1][idx])  # type: ignore[index]
        trace.append(quality.tolist())
        if samples_per_image is None:
            active &= ~((used >= min_samples) & (quality >= agreement))
        else:
            active &= used < samples_per_image
        if stop is not None and stop():  # out of time: one round is still a SmoothGrad map
            break
    total = halves[0] + halves[1]  # type: ignore[operator]
    value = total / used.view(-1, *[1] * (total.dim() - 1))
    return Converged(value.to(x.device), used, quality, used, trace)


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


def gradients_and_logits(
    model: nn.Module, x: Tensor, target: Tensor, *, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """d logit[target] / d x [N,C,H,W] and logit[target] [N], from the same passes."""
    grad, logit = torch.empty_like(x), torch.empty(len(x), dtype=x.dtype, device=x.device)
    with eval_mode(model), frozen_params(model), torch.enable_grad():
        for s in chunks(len(x), batch_size):
            xi = x[s].detach().clone().requires_grad_(True)
            score = model(xi).gather(1, target[s, None]).squeeze(1)
            (grad[s],) = torch.autograd.grad(score.sum(), xi)
            logit[s] = score.detach()
    return grad, logit


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


NOT_FINITE = "the map is not finite (NaN or infinite values in the model's outputs or gradients)"
ZERO_EVERYWHERE = "the map is zero everywhere (the score's gradient is zero at every pixel)"


def why_unexplained(maps: Tensor | np.ndarray) -> list[str | None]:
    """Per image of ``maps`` [N,...] (any method's output): why its map explains nothing, or
    None where it is usable. The methods return such maps as computed (NaN for a model whose
    outputs are NaN, zeros where no gradient reaches the input); a caller shows these reasons
    (``figures``' ``notes``) instead of the maps."""
    flat = torch.as_tensor(maps).detach().flatten(1)
    finite = flat.isfinite().all(dim=1).tolist()
    zero = (flat == 0).all(dim=1).tolist()
    return [
        NOT_FINITE if not ok else ZERO_EVERYWHERE if empty else None
        for ok, empty in zip(finite, zero, strict=True)
    ]
