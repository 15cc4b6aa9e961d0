"""Where filter ascent climbs: a unit's receptive field found by gradient, and for a layer whose
units see a small window, a periodic tile (shown repeated, without seams, to the full size)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hw5lib.model.hooks import eval_mode, forward_until, frozen_params

# A layer whose units see a window much smaller than the image climbs a periodic tile instead
# of the whole image: the Fourier image is periodic, so the tile repeats without seams to the
# full size afterwards, and the ascent's forward sees only the tile repeated over one receptive
# field past it. A tile's side is at least 1/TILES of the image's, so the pattern stays large
# enough to read.
TILES = 4


RF_PROBES = 4  # random images whose input gradients outline a unit's receptive field


@dataclass(frozen=True)
class Canvas:
    """Where an ascent runs: the side of the periodic tile it climbs (``period``), the side of
    the tiled image the model sees while climbing (``view``), the figure's side (``full``); all
    (H, W). ``period == view == full`` is the whole image, as without tiling."""

    period: tuple[int, int]
    view: tuple[int, int]
    full: tuple[int, int]

    @property
    def tiled(self) -> bool:
        return self.view != self.full

    @property
    def area(self) -> float:
        """The view's share of the full image's pixels: the ascent's cost per step, relative."""
        return self.view[0] * self.view[1] / (self.full[0] * self.full[1])

    @classmethod
    def whole(cls, size: tuple[int, int]) -> Canvas:
        return cls(size, size, size)


def receptive_field(
    model: nn.Module,
    layer: nn.Module,
    shape: tuple[int, int, int],
    to_input: Callable[[Tensor], Tensor],
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(H, W) of the input window that ``layer``'s central unit sees and (H, W) of the layer's
    stride in input pixels; None where the window reaches the image's border (it may be
    larger). Measured, not derived from the modules, so functional ops and branches count: the
    window is the extent of the input gradient of that unit's channels, summed over a few
    random images (max pooling and dead ReLUs pass gradient to part of it in each)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(RF_PROBES, *shape, generator=g).requires_grad_(True)
    with eval_mode(model), frozen_params(model), torch.enable_grad():
        act = forward_until(model, layer, to_input(x))  # (N, K, h, w)
        h, w = act.shape[-2:]
        (grad,) = torch.autograd.grad(act[:, :, h // 2, w // 2].abs().sum(), x)
    seen = grad.abs().sum(dim=(0, 1)) > 0  # (H, W)
    rows, cols = seen.any(dim=1).nonzero().flatten(), seen.any(dim=0).nonzero().flatten()
    size = (shape[1], shape[2])
    if not len(rows) or not len(cols):
        return None
    extent = ((rows[0], rows[-1]), (cols[0], cols[-1]))
    if any(lo == 0 or hi == side - 1 for (lo, hi), side in zip(extent, size, strict=True)):
        return None
    window = (int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
    stride = (max(round(size[0] / h), 1), max(round(size[1] / w), 1))
    return window, stride


def ascent_canvas(
    model: nn.Module,
    layer: nn.Module,
    shape: tuple[int, int, int],
    to_input: Callable[[Tensor], Tensor],
) -> Canvas:
    """The canvas ``layer``'s ascent climbs on: a tile of a multiple of the layer's stride, at
    least its receptive field and 1/TILES of the image, seen repeated over one receptive field
    more; the whole image where that view would not be smaller than it."""
    full = (shape[1], shape[2])
    found = receptive_field(model, layer, shape, to_input)
    if found is None:
        return Canvas.whole(full)
    window, stride = found
    (wh, ww), (sh, sw) = window, stride
    period = (
        _round_up(max(wh, math.ceil(full[0] / TILES)), sh),
        _round_up(max(ww, math.ceil(full[1] / TILES)), sw),
    )
    view = (_round_up(period[0] + wh, sh), _round_up(period[1] + ww, sw))
    if view[0] >= full[0] or view[1] >= full[1]:
        return Canvas.whole(full)
    return Canvas(period, view, full)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def tile(pixels: Tensor, size: tuple[int, int], phase: tuple[int, int] = (0, 0)) -> Tensor:
    """Periodic images [N,C,h,w] repeated to [N,C,*size], starting ``phase`` (rows, columns)
    into the tile."""
    h, w = pixels.shape[-2:]
    if phase != (0, 0):
        pixels = pixels.roll((-phase[0], -phase[1]), dims=(-2, -1))
    if (h, w) == size:
        return pixels
    reps = (-(-size[0] // h), -(-size[1] // w))
    return pixels.repeat(1, 1, *reps)[..., : size[0], : size[1]]
