"""Do the maps explain the model? Deletion/insertion AUC (Petsiuk et al., "RISE", BMVC 2018), the
model-randomization sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018)
and ``edge_map``, a negative control that never looks at the model. Batched, no plotting.

An attribution method is ``explain(model, x, target) -> maps``: x [N,C,H,W], target [N] long,
maps [N,H,W], higher = more important.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hw5lib.methods.metrics import model_device, probabilities
from hw5lib.model.hooks import eval_mode

logger = logging.getLogger(__name__)

# explain(model, x [N,C,H,W], target [N]) -> maps [N,H,W]: what the trust table scores and reruns
Explain = Callable[[nn.Module, Tensor, Tensor], Tensor]
Baseline = Literal["blur", "zero"]


# ---------------------------------------------------------------------------------------------
# Deletion / insertion (RISE)
# ---------------------------------------------------------------------------------------------


def gaussian_blur(x: Tensor, *, sigma: float | None = None) -> Tensor:
    """Separable Gaussian blur of x [N,C,H,W], replicate padding; ``sigma`` defaults to max(H,W)/16.

    The "blurred image" baseline of Petsiuk et al. (RISE, BMVC 2018): it removes the object's
    detail without adding the sharp edges a constant fill would.
    """
    _, c, h, w = x.shape
    sigma = max(h, w) / 16 if sigma is None else sigma
    if sigma <= 0:
        return x.clone()
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(dtype=x.dtype, device=x.device)
    k = kernel.numel()
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)  # along W
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)  # along H


def _baseline_image(x: Tensor, baseline: Baseline) -> Tensor:
    if baseline == "blur":
        return gaussian_blur(x)
    if baseline == "zero":
        return torch.zeros_like(x)
    raise ValueError(f"baseline must be 'blur' or 'zero', not {baseline!r}")


def pixel_ranks(maps: Tensor) -> Tensor:
    """Rank of each pixel [N,H*W] by map value, 0 = most important; ties go to the lower index."""
    flat = maps.flatten(1)  # (N, HW)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _check_curves(maps: Tensor, steps: int) -> None:
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if not torch.isfinite(maps).all():
        raise ValueError("maps must be finite to be ranked")


def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    maps: Tensor,
    *,
    steps: int = 16,
    baseline: Baseline = "blur",
    insertion_baseline: Baseline | None = None,
    batch_size: int = 64,
    head: str = "softmax",
) -> dict[str, Tensor]:
    """Deletion and insertion AUC of attribution maps (Petsiuk et al., "RISE", BMVC 2018).

    Pixels are ranked by ``maps`` (descending, ties by index). At step i = 0..steps the top
    floor(i*H*W/steps) pixels are replaced by the baseline (deletion: a good map makes the
    target's softmax probability fall fast, low AUC) or copied from x onto the baseline
    (insertion: a good map makes it rise fast, high AUC). All 2*N*(steps+1) images form one
    batch, run in chunks of ``batch_size``. AUC = trapezoid rule over the removed fraction [0,1].

    Returns ``deletion``, ``insertion`` [N] and ``deletion_curve``, ``insertion_curve``
    [N, steps+1], on x's device. ``insertion_baseline`` (default: ``baseline``) lets insertion
    start from another image, as the paper does: deletion paints zeros, insertion starts blurred.
    """
    n, _, h, w = x.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps must be [N,H,W] = {(n, h, w)}, got {tuple(maps.shape)}")
    _check_curves(maps, steps)
    maps, target = maps.detach().to(x.device), target.to(x.device)
    x = x.detach()
    base_del = _baseline_image(x, baseline)  # (N, C, H, W)
    base_ins = _baseline_image(x, insertion_baseline or baseline)
    rank = pixel_ranks(maps)  # (N, HW)
    num_steps = steps + 1
    taken = torch.div(
        torch.arange(num_steps, device=x.device) * (h * w), steps, rounding_mode="floor"
    )  # (S+1,) pixels removed/revealed at each step: 0 ... HW
    device = model_device(model, x.device)
    per_curve = n * num_steps
    scores = []
    with torch.inference_mode(), eval_mode(model):
        for start in range(0, 2 * per_curve, batch_size):
            j = torch.arange(start, min(start + batch_size, 2 * per_curve), device=x.device)
            insert, img, step = j // per_curve, (j % per_curve) // num_steps, j % num_steps
            top = rank[img] < taken[step, None]  # (B, HW) the step's most important pixels
            # Deletion shows the baseline on the top pixels, insertion everywhere else.
            show_base = (top ^ insert.bool()[:, None]).view(-1, 1, h, w)  # (B, 1, H, W)
            base = torch.where(insert.bool().view(-1, 1, 1, 1), base_ins[img], base_del[img])
            batch = torch.where(show_base, base, x[img])  # (B, C, H, W)
            probs = probabilities(model(batch.to(device)), head)  # (B, K)
            scores.append(probs.gather(1, target[img].to(device)[:, None]).squeeze(1))
    curves = torch.cat(scores).to(x.device).view(2, n, num_steps)
    auc = torch.trapezoid(curves, dx=1.0 / steps, dim=2)  # (2, N)
    return {
        "deletion": auc[0],
        "insertion": auc[1],
        "deletion_curve": curves[0],
        "insertion_curve": curves[1],
    }


def deletion_insertion_rows(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    maps: Tensor,
    *,
    steps: int = 16,
    baseline: Baseline = "blur",
    insertion_baseline: Baseline | None = None,
    batch_size: int = 64,
    head: str = "softmax",
) -> dict[str, Tensor]:
    """``deletion_insertion`` of R methods' maps [R,N,H,W] of the same images in one pass.

    The curves' ends show the same image whatever the map: deletion starts at x and ends at the
    baseline, insertion starts at its baseline and ends at x. Those 3 images per image are scored
    once, not once per method and curve; only the 2*(steps-1) in between depend on the map.
    Returns ``deletion``, ``insertion`` [R,N] and ``deletion_curve``, ``insertion_curve``
    [R,N,steps+1], equal to ``deletion_insertion`` row by row (up to float rounding).
    """
    r, n, h, w = maps.shape
    if x.shape[0] != n or x.shape[-2:] != (h, w):
        raise ValueError(f"maps must be [R,N,H,W] with N,H,W = {(len(x), *x.shape[-2:])}")
    _check_curves(maps, steps)
    maps, target, x = maps.detach().to(x.device), target.to(x.device), x.detach()
    bases = torch.stack(
        [_baseline_image(x, baseline), _baseline_image(x, insertion_baseline or baseline)]
    )
    rank = pixel_ranks(maps.flatten(0, 1)).view(r, n, h * w)  # (R, N, HW)
    inner = steps - 1  # steps 1..steps-1 depend on the map
    taken = torch.div(
        torch.arange(1, steps, device=x.device) * (h * w), steps, rounding_mode="floor"
    )  # (S-1,) pixels removed/revealed at each inner step
    device = model_device(model, x.device)
    ends = torch.cat([x, bases[0], bases[1]])  # (3N, C, H, W): both curves' first and last images
    per_curve = n * inner
    total = 3 * n + 2 * r * per_curve
    scores = []
    with torch.inference_mode(), eval_mode(model):
        for start in range(0, total, batch_size):
            j = torch.arange(start, min(start + batch_size, total), device=x.device)
            k = (j - 3 * n).clamp(min=0)  # index among the inner images: (curve, row, img, step)
            insert, row = k // (r * per_curve), (k // per_curve) % r
            img, step = (k % per_curve) // inner, k % inner
            top = rank[row, img] < taken[step, None]  # (B, HW) the step's most important pixels
            # Deletion shows the baseline on the top pixels, insertion everywhere else.
            show_base = (top ^ insert.bool()[:, None]).view(-1, 1, h, w)
            batch = torch.where(show_base, bases[insert, img], x[img])  # (B, C, H, W)
            end = j < 3 * n
            batch[end] = ends[j[end]]
            img = torch.where(end, j % n, img)
            probs = probabilities(model(batch.to(device)), head)  # (B, K)
            scores.append(probs.gather(1, target[img].to(device)[:, None]).squeeze(1))
    flat = torch.cat(scores).to(x.device)
    intact, gone, blurred = flat[: 3 * n].view(3, 1, n, 1).expand(3, r, n, 1)
    middle = flat[3 * n :].view(2, r, n, inner)
    curves = torch.stack(
        [
            torch.cat([intact, middle[0], gone], dim=2),
            torch.cat([blurred, middle[1], intact], dim=2),
        ]
    )  # (2, R, N, S+1)
    auc = torch.trapezoid(curves, dx=1.0 / steps, dim=3)  # (2, R, N)
    return {
        "deletion": auc[0],
        "insertion": auc[1],
        "deletion_curve": curves[0],
        "insertion_curve": curves[1],
    }


def random_maps(shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """Uniform random maps of ``shape`` (e.g. [N,H,W]): the chance level for deletion/insertion."""
    return torch.rand(tuple(shape), generator=generator, device=generator.device)


# ---------------------------------------------------------------------------------------------
# Model-randomization sanity check (Adebayo et al. 2018)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Negative control
# ---------------------------------------------------------------------------------------------


def edge_map(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of the image, averaged over channels: x [N,C,H,W] -> [N,H,W].

    NEGATIVE CONTROL, not an explanation: it never looks at the model. Adebayo et al. (NeurIPS
    2018) show some saliency methods look much like it; a method whose maps survive
    ``randomization_check`` as well as this one does is not explaining the model.
    """
    n, c, h, w = x.shape
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    kernels = torch.stack([gx, gx.T])[:, None].to(x.dtype)  # (2, 1, 3, 3)
    planes = F.pad(x.detach().reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    grads = F.conv2d(planes, kernels)  # (N*C, 2, H, W)
    return grads.norm(dim=1).view(n, c, h, w).mean(dim=1)


def edge_explain(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """``edge_map`` in the attribution-method signature; ``model`` and ``target`` are ignored."""
    del model, target
    return edge_map(x)
