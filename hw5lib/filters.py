"""What a conv filter responds to: gradient ascent from noise, and its activation on real images.

Filter visualization follows Erhan et al. (2009) and the Keras blog post the course cites: start
from noise and climb the filter's mean activation. All requested filters of one layer are
optimized together as one batch (image k climbs filter k), and the model runs only up to the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .hooks import eval_mode, forward_until, frozen_params


@dataclass(frozen=True)
class AscentResult:
    pixels: Tensor  # [F,C,H,W] in [0,1], display order: the images that excite each filter
    activation: Tensor  # [steps+1, F] mean activation of each filter along the way


def filter_ascent(
    model: nn.Module,
    layer: nn.Module,
    filters: Sequence[int],
    *,
    shape: tuple[int, int, int],
    to_input: Callable[[Tensor], Tensor],
    steps: int = 100,
    lr: float = 0.05,
    generator: torch.Generator | None = None,
) -> AscentResult:
    """Gradient ascent on pixel space [0,1] (mapped to model input by ``to_input``) maximizing the
    mean activation of ``filters`` of ``layer``; one image per filter, all in one batch.

    Adam on pixels clamped to [0,1] after every step keeps images valid; starting noise is
    uniform around mid-gray with small amplitude (the course starts "from white noise").
    """
    idx = torch.as_tensor(list(filters), dtype=torch.long)
    pixels = (0.5 + 0.1 * (torch.rand((len(idx), *shape), generator=generator) - 0.5)).clamp(0, 1)
    pixels.requires_grad_(True)
    opt = torch.optim.Adam([pixels], lr=lr)
    history = []
    with eval_mode(model), frozen_params(model), torch.enable_grad():
        for step in range(steps + 1):
            act = forward_until(model, layer, to_input(pixels))  # (F, K, h, w)
            score = act[torch.arange(len(idx)), idx].mean(dim=(1, 2))  # (F,)
            history.append(score.detach())
            if step == steps:
                break
            opt.zero_grad(set_to_none=True)
            (-score.sum()).backward()
            opt.step()
            with torch.no_grad():
                pixels.clamp_(0, 1)
    return AscentResult(pixels.detach(), torch.stack(history))


def layer_activations(
    model: nn.Module, layer: nn.Module, x: Tensor, *, batch_size: int = 64
) -> Tensor:
    """The layer's output for x, [N,K,h,w], computed only up to that layer."""
    outs = []
    with eval_mode(model), torch.inference_mode():
        for i in range(0, len(x), batch_size):
            outs.append(forward_until(model, layer, x[i : i + batch_size]))
    return torch.cat(outs)


def most_active_filters(activations: Tensor, count: int) -> list[int]:
    """The ``count`` channels with the highest mean activation over images, in channel order:
    a filter that never fires on the data makes an empty figure."""
    mean = activations.mean(dim=(0, 2, 3))
    top = torch.topk(mean, min(count, len(mean))).indices
    return sorted(top.tolist())
