"""Gradient attributions, batched: the input gradient, saliency, Gradient x Input, and SmoothGrad
with its split-half stopping rule (Integrated Gradients: integrated_gradients.py).

Every method scores the pre-softmax logit of ``target``; x is [N,C,H,W] in the model's input space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
    halves: tuple[Tensor, Tensor] | None = None  # the two half-sums, made at the first round
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
        parts = (maps[0::2].sum(dim=0), maps[1::2].sum(dim=0))
        if halves is None:
            shape, dtype = (n, *parts[0].shape[1:]), parts[0].dtype
            halves = (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
        for half, part in zip(halves, parts, strict=True):
            half[idx] += part
        used[idx] += k
        quality[idx] = split_half_agreement(halves[0][idx], halves[1][idx])
        trace.append(quality.tolist())
        if samples_per_image is None:
            active &= ~((used >= min_samples) & (quality >= agreement))
        else:
            active &= used < samples_per_image
        if stop is not None and stop():  # out of time: one round is still a SmoothGrad map
            break
    if halves is None:
        raise ValueError("SmoothGrad drew no samples (max_samples must be positive)")
    total = halves[0] + halves[1]
    value = total / used.view(-1, *[1] * (total.dim() - 1))
    return Converged(value.to(x.device), used, quality, used, trace)


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
