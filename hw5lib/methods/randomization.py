"""The model-randomization sanity check (Adebayo et al., 2018): a copy of the model with its top
parameterized layers re-initialized, and the rank correlation between a method's map on the
trained model and on that copy (a map that barely changes does not depend on the weights)."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import Tensor, nn

from hw5lib.methods.faithfulness import Explain

logger = logging.getLogger(__name__)

_CONV = nn.modules.conv._ConvNd


_BATCHNORM = nn.modules.batchnorm._BatchNorm


def parameterized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules owning parameters directly, in registration order (= forward order for
    ``Classifier``): the layers the cascading randomization walks down from the top."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if next(m.parameters(recurse=False), None) is not None
    ]


@torch.no_grad()
def _reinitialize(module: nn.Module, generator: torch.Generator) -> None:
    """Fresh weights from ``generator``, at PyTorch's default scale for the layer type."""
    if isinstance(module, (nn.Linear, _CONV)):
        # PyTorch's default: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / math.sqrt(module.weight[0].numel())
        for p in (module.weight, module.bias):
            if p is not None:
                draw = torch.rand(p.shape, generator=generator, device=generator.device)
                p.copy_((2 * draw - 1) * bound)
    elif isinstance(module, _BATCHNORM):
        module.reset_running_stats()
        if module.affine:
            module.weight.fill_(1.0)
            module.bias.zero_()
    else:
        raise TypeError(f"cannot re-initialize {type(module).__name__} with a generator")


def randomized_copy(
    model: nn.Module, n_top: int | None, generator: torch.Generator, *, clip: bool = False
) -> nn.Module:
    """Deep copy of ``model`` with its last ``n_top`` parameterized layers re-initialized.

    Cascading randomization (Adebayo et al., NeurIPS 2018): destroy the learned weights from the
    top (logits) down. Linear/Conv get U(-1/sqrt(fan_in), 1/sqrt(fan_in)) drawn from
    ``generator`` (PyTorch's default scale); BatchNorm gets running stats reset, weight 1,
    bias 0. ``model`` itself is never modified. With ``clip`` (as ``randomization_check``),
    ``n_top=None`` or more than the model has re-initializes every layer.
    """
    clone = copy.deepcopy(model)
    layers = parameterized_layers(clone)
    if clip:
        n_top = len(layers) if n_top is None else min(n_top, len(layers))
    if not 0 <= n_top <= len(layers):
        raise ValueError(f"n_top must lie in [0, {len(layers)}], got {n_top}")
    for _, module in layers[len(layers) - n_top :]:
        _reinitialize(module, generator)
    return clone


def _average_ranks(v: Tensor) -> Tensor:
    """Ranks along dim 1 of v [N,M], tied values sharing their average rank (as scipy does)."""
    m = v.shape[1]
    sorted_v, order = v.sort(dim=1, stable=True)  # (N, M)
    positions = torch.arange(m, device=v.device).expand_as(order)
    starts = torch.ones_like(sorted_v, dtype=torch.bool)
    starts[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    # A run of equal values spans positions first..last: its mean rank is (first + last) / 2,
    # exact in float64 (a scatter-mean over the run gives the same value, slower).
    first = torch.where(starts, positions, 0).cummax(dim=1).values
    last = torch.where(ends, positions, m).flip(1).cummin(dim=1).values.flip(1)
    ranks_sorted = (first + last).double() / 2
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation per image of map batches a, b [N,H,W] -> [N] (float32).

    Pearson correlation of the ranks, computed batched. Float maps are rarely tied, but
    saliency maps are: ReLU and max-pooling leave exact zeros. Ties therefore share their
    average rank (a plain argsort-of-argsort would rank them by pixel index, which two maps
    share, inflating the correlation). Matches ``scipy.stats.spearmanr``; nan for a constant map.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    ra = _average_ranks(a.detach().flatten(1))  # (N, HW); float32 sorts as float64 would
    rb = _average_ranks(b.detach().flatten(1).to(a.device))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    corr = (ra * rb).sum(dim=1) / (ra.norm(dim=1) * rb.norm(dim=1))
    return corr.float()


def randomization_check(
    explain: Explain,
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    n_top: int | None = None,
    generator: torch.Generator | None = None,
    threshold: float = 0.5,
    trained_maps: Tensor | None = None,
    randomized: nn.Module | None = None,
) -> dict[str, Any]:
    """Does the method notice when the model's weights are destroyed? (Adebayo et al. 2018)

    Compares ``|explain(model)|`` with ``|explain(randomized_copy(model, n_top))|`` per image by
    Spearman correlation. ``n_top=None`` (or more than the model has) re-initializes every
    parameterized layer. ``flagged`` = mean |correlation| > ``threshold``: the maps barely change
    when the weights are destroyed, so the method does not explain the model. Images whose map
    is constant (nan) are skipped. ``trained_maps`` reuses maps already computed on ``model`` (with the same settings).
    ``randomized`` reuses ``randomized_copy(model, n_top, generator)``, made once for many methods.
    """
    layers = parameterized_layers(model)
    n_top = len(layers) if n_top is None else min(n_top, len(layers))  # a small net has fewer
    if randomized is None:
        if generator is None:
            raise ValueError("randomization_check needs a generator or a randomized copy")
        randomized = randomized_copy(model, n_top, generator)
    if trained_maps is None:
        trained_maps = explain(model, x, target)
    trained_maps = trained_maps.detach().abs().to(x.device)  # (N, H, W)
    random_maps_ = explain(randomized, x, target).detach().abs()
    corr = rank_correlation(trained_maps, random_maps_)  # (N,)
    mean = float(corr.nanmean())
    mean_abs = float(corr.abs().nanmean())
    flagged = bool(mean_abs > threshold)
    logger.debug("randomization check: n_top=%d mean |rho|=%.3f", n_top, mean_abs)
    return {
        "correlation": corr,
        "mean": mean,
        "mean_abs": mean_abs,
        "flagged": flagged,
        "n_top": n_top,
        "randomized_layers": [name for name, _ in layers[len(layers) - n_top :]],
        "threshold": threshold,
    }
