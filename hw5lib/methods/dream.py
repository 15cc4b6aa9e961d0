"""DeepDream: change the image so that a layer responds more strongly to it.

Mordvintsev, Olah & Tyka, 2015, "Inceptionism: Going Deeper into Neural Networks" (Google AI
blog), and the reference ``deepdream.ipynb``: gradient ascent on the input to raise the mean square
of one layer's activation, with normalized steps, a random jitter (roll) per step, and octaves
(coarse to fine, carrying the accumulated detail up to the next size).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hw5lib.model.hooks import eval_mode, forward_until, frozen_params, torch_threads
from hw5lib.model.layers import as_module

# ONE_THREAD_WHY: oneDNN splits a convolution on odd sizes (the octaves' 65 and 91 px) by the
# thread count, so its float32 rounding depends on it, and sixty ascent steps grow that into a
# visibly different dream; on one thread the dream is the same whatever the machine's count
# (DeepDream is ~1 s of a run).


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize [N,C,H,W] -> [N,C,*size]; identity when the size already matches."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _octave_sizes(h: int, w: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    """Image sizes from smallest to full: (h, w) / scale**k for k = octaves-1 ... 0."""
    return [
        (max(1, round(h / scale**k)), max(1, round(w / scale**k)))
        for k in range(octaves - 1, -1, -1)
    ]


def _clamp(img: Tensor, base: Tensor, max_change: float, lo: Tensor, hi: Tensor) -> Tensor:
    """Keep |img - base| <= max_change elementwise and img within [lo, hi]."""
    return torch.clamp(img, base - max_change, base + max_change).clamp(lo, hi)


def _ascent_step(
    model: nn.Module,
    layer: nn.Module,
    img: Tensor,
    lr: float,
    jitter: int,
    generator: torch.Generator | None,
) -> Tensor:
    """One normalized gradient-ascent step on mean(A**2) per image, under a random roll."""
    dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
    rolled = img.detach().roll((dy, dx), dims=(2, 3)).requires_grad_(True)
    act = forward_until(model, layer, rolled)  # [N,K,h,w]
    loss = act.pow(2).flatten(1).mean(dim=1).sum()  # images stay independent
    (grad,) = torch.autograd.grad(loss, rolled)
    grad = grad.roll((-dy, -dx), dims=(2, 3))  # [N,C,H,W]
    grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
    return img.detach() + lr * grad


def deep_dream(
    model: nn.Module,
    x: Tensor,
    layer: nn.Module | str,
    *,
    steps: int = 20,
    lr: float = 0.02,
    octaves: int = 3,
    octave_scale: float = 1.4,
    jitter: int = 8,
    max_change: float = 0.3,
    generator: torch.Generator | None = None,
    stop: Callable[[], bool] | None = None,
) -> Tensor:
    """Dream x [N,C,H,W] toward a larger ``layer`` (module or dotted name) activation.

    Each octave starts from x resized plus the detail dreamed so far, takes ``steps`` ascent steps
    of size ``lr`` (gradient divided by its mean absolute value), and keeps the image within
    ``max_change`` of x (resized) and within [x.min(), x.max()]. The result obeys both caps at
    full size. The jitter rolls come from ``generator``, so a seeded one gives repeatable dreams.
    Returns a detached [N,C,H,W].
    """
    if isinstance(layer, str):
        layer = as_module(model, layer)
    lo, hi = x.min(), x.max()
    x = x.detach()
    detail = torch.zeros_like(x)
    with (
        eval_mode(model),
        frozen_params(model),
        torch.enable_grad(),
        torch_threads(1),
    ):  # see ONE_THREAD_WHY
        for size in _octave_sizes(x.shape[-2], x.shape[-1], octaves, octave_scale):
            base = _resize(x, size)  # [N,C,h,w]
            img = _clamp(base + _resize(detail, size), base, max_change, lo, hi)
            for _ in range(steps):
                if stop is not None and stop():  # out of time: keep the detail so far
                    break
                img = _ascent_step(model, layer, img, lr, jitter, generator)
                img = _clamp(img, base, max_change, lo, hi)
            detail = img - base
    return _clamp(x + _resize(detail, tuple(x.shape[-2:])), x, max_change, lo, hi).detach()
