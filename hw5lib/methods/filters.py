"""What a conv filter responds to: gradient ascent from noise, and its activation on real images.

Filter visualization follows Erhan et al. (2009) and the Keras blog post the course cites: start
from noise and climb the filter's mean activation. All requested filters of one layer are
optimized together as one batch (image k climbs filter k), and the model runs only up to the layer,
its last conv only for the requested filters. A layer that sees a small window climbs a periodic
tile, repeated to the full size afterwards (``ascent_canvas``).

Plain ascent on pixels ends in saturated, pixel-level noise: the activation of a ReLU network is
piecewise linear in the input, so it grows fastest toward the corners of the [0,1] box. The
regularizers of Olah, Mordvintsev & Schubert (2017, "Feature Visualization", Distill) make the
images readable: a decorrelated, frequency-scaled (Fourier) parameterization squashed by a sigmoid,
and robustness to small random jitter, rotation and scaling; plus a decay toward gray (Yosinski et
al., 2015, "Understanding Neural Networks Through Deep Visualization") that keeps colors from
saturating and lets the ascent settle within a few dozen steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hw5lib.model.hooks import eval_mode, forward_into, forward_until, frozen_params, torch_threads
from hw5lib.model.probe import is_activation

# Square root of ImageNet's RGB color covariance (Lucid's ``color_correlation_svd_sqrt``), its
# columns scaled to at most unit norm: independent logits become naturally correlated colors.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
# Logit change per unit spectrum coefficient at one cycle per image. With decay_power 2 this is
# Lucid's ``fft_image`` scaling at 128 x 128 (f in cycles per pixel floored at 1/128, orthonormal
# FFT, divided by 4); counting f in cycles per image makes it independent of the image size.
_SPECTRUM_GAIN = 32.0
_INIT_STD = 0.01  # start near gray, as Lucid's ``fft_image``


# A filter whose activation still rose by more than CLIMBING over its last CLIMB_WINDOW recorded
# intervals (20 steps) had not settled: it is redone once from a new start with a schedule twice
# as long, and the higher of the two kept (bench/RESULTS.md). On 40 images' 16 filters of the
# trained demo model, 80 steps left five filters at 0.85-0.97 of a 400-step run, each rising by
# 2.7-18% over its last 20 steps; every other filter rose by at most 2.1%.
CLIMBING = 0.025
CLIMB_WINDOW = 2
RECORD_EVERY = 10  # steps between recorded activations (each costs a forward)


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
    period = tuple(
        _round_up(max(rf, math.ceil(side / TILES)), s)
        for rf, s, side in zip(window, stride, full, strict=True)
    )
    view = tuple(_round_up(p + rf, s) for p, rf, s in zip(period, window, stride, strict=True))
    if any(v >= side for v, side in zip(view, full, strict=True)):
        return Canvas.whole(full)
    return Canvas(period, view, full)  # type: ignore[arg-type]


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


@dataclass(frozen=True)
class Redo:
    """Which filters, by position in the ascent's ``filters``, were redone because still
    climbing, and whose redo was kept because it climbed higher: decided by ``filter_ascent``,
    or given to it by a replay."""

    rows: tuple[int, ...] = ()
    kept: tuple[int, ...] = ()


@dataclass(frozen=True)
class AscentResult:
    pixels: Tensor  # [F,C,H,W] in [0,1], display order: the images that excite each filter
    activation: Tensor  # [T, F] mean activation on the un-jittered image at ``recorded`` steps,
    # NaN at steps that a filter's own schedule did not record (a redone filter's or the rest's)
    recorded: Tensor  # [T] the step of each row of ``activation``
    steps: Tensor  # [F] the length of each filter's schedule (doubled where it was climbing)
    stopped: bool = False  # ``stop()`` ended the ascent before its schedule did
    redo: Redo = Redo()  # filters redone because still climbing, and those whose redo was kept
    work: int = 0  # filter-steps run in all, a redo that was not kept included
    end: Tensor | None = None  # [F] mean activation of ``pixels`` where it differs from the
    # last recorded one: an ascent on a tile records the tiled view, ``pixels`` are full size

    @property
    def redone(self) -> int:
        """How many filters were redone, kept or not (``steps`` shows the kept)."""
        return len(self.redo.rows)

    @property
    def final(self) -> Tensor:
        """[F] each filter's activation at the end of its ascent, on ``pixels``."""
        if self.end is not None:
            return self.end
        last = (~self.activation.isnan()).cumsum(0).argmax(0)  # last recorded row per filter
        return self.activation[last, torch.arange(self.activation.shape[1])]

    def curves(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(steps, activation) per filter, for plotting."""
        out = []
        for f in range(self.activation.shape[1]):
            keep = ~self.activation[:, f].isnan()
            out.append((self.recorded[keep].numpy(), self.activation[keep, f].cpu().numpy()))
        return out


def spectrum_scale(size: tuple[int, int], decay_power: float) -> Tensor:
    """1 / f**decay_power for the rfft2 frequencies of an image of ``size`` (H, W), f in cycles
    per image and at least 1 -> [H, W//2+1]. Power 1 is the amplitude spectrum of natural images
    that Olah et al. (2017) use; 2 also damps the pixel-level textures a small network climbs."""
    h, w = size
    fy = torch.fft.fftfreq(h)[:, None] * h  # (H, 1)
    fx = torch.fft.rfftfreq(w)[None, :] * w  # (1, W//2+1)
    return (fy**2 + fx**2).sqrt().clamp_min(1.0) ** -decay_power


def spectrum_to_pixels(spectrum: Tensor, scale: Tensor, size: tuple[int, int]) -> Tensor:
    """Spectrum [N,C,H,W//2+1,2] (real, imag) -> pixels [N,C,H,W] in (0,1): inverse FFT of the
    frequency-scaled spectrum, color decorrelation (3 channels), then a sigmoid (Olah et al.)."""
    logits = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=size, norm="forward")
    logits = _SPECTRUM_GAIN * logits  # (N, C, H, W)
    if logits.shape[1] == 3:
        # A 1x1 convolution: ~3x faster than the same einsum (a batched matmul) forward+backward.
        logits = F.conv2d(logits, _COLOR_SQRT[:, :, None, None])
    return torch.sigmoid(logits)


def random_affine(
    x: Tensor,
    generator: torch.Generator | None,
    *,
    rotate: float,
    rescale: float,
    shift: float,
) -> Tensor:
    """Each image of x [N,C,H,W] rotated by up to ``rotate`` degrees, scaled by up to 1 +-
    ``rescale`` and shifted by up to ``shift`` pixels, drawn uniformly; borders reflect. Features
    that survive this are not pixel-grid artifacts ("transformation robustness", Olah et al.)."""
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # (N, 4) in [-1, 1)
    angle = u[:, 0] * math.radians(rotate)
    zoom = 1 + u[:, 1] * rescale
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    tx, ty = u[:, 2] * 2 * shift / w, u[:, 3] * 2 * shift / h  # in [-1, 1] grid units
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x), [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient, for a sample where none gets through, still passes wherever it raises
    the output (Lucid's ``redirected_relu_grad``): a filter that is dead on the start noise can
    come alive instead of keeping a zero gradient forever."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        out = x.relu()
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors  # type: ignore[attr-defined]
        # masked_fill, not a product with the bool mask: that converts the mask to float on
        # every step (a third of a small model's step went there).
        blocked = out <= 0
        relu_grad = grad.masked_fill(blocked, 0)
        alive = relu_grad.flatten(1).any(dim=1)  # (N,) some gradient gets through
        if alive.all():
            return relu_grad
        redirected = grad.masked_fill(blocked & (grad > 0), 0)  # never push x <= 0 lower
        return torch.where(alive.view(-1, *[1] * (grad.dim() - 1)), relu_grad, redirected)


@contextmanager
def redirected_relu(layer: nn.Module) -> Iterator[nn.Module]:
    """Give ``layer``, if it is an ``nn.ReLU`` (not in place), the redirected gradient; its
    values are unchanged. Only the visualized layer: doing it for every ReLU, as Lucid does, made
    each step ~60% slower on the demo model and changed no result (an earlier ReLU rarely blocks
    a whole image). A filter dead behind a pooling ``layer`` is not revived."""
    handles = []
    if isinstance(layer, nn.ReLU) and not layer.inplace:
        hook = layer.register_forward_hook(
            lambda _m, inputs, _out: _RedirectedReLU.apply(inputs[0])
        )
        handles.append(hook)
    try:
        yield layer
    finally:
        for h in handles:
            h.remove()


@dataclass
class _AdamW:
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay, for one tensor.
    Written out because ``torch.optim`` imports ``torch._dynamo`` (~2 s) on first use, and
    nothing else in a report run needs it."""

    lr: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    step: int = 0
    m: Tensor | None = None  # running mean of the gradient
    v: Tensor | None = None  # running mean of its square

    def update(self, p: Tensor, grad: Tensor) -> None:
        """One in-place step on ``p`` (no autograd) with learning rate ``self.lr``."""
        b1, b2 = self.betas
        self.step += 1
        self.m = grad * (1 - b1) if self.m is None else self.m.mul_(b1).add_(grad, alpha=1 - b1)
        sq = grad * grad
        self.v = sq * (1 - b2) if self.v is None else self.v.mul_(b2).add_(sq, alpha=1 - b2)
        denom = (self.v / (1 - b2**self.step)).sqrt_().add_(self.eps)
        p.mul_(1 - self.lr * self.weight_decay)
        p.addcdiv_(self.m, denom, value=-self.lr / (1 - b1**self.step))


def cosine_lr(lr: float, step: int, steps: int, final: float = 0.1) -> float:
    """Cosine decay from ``lr`` to ``final * lr`` over ``steps`` (Loshchilov & Hutter, 2017)."""
    return lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1))))


def filter_ascent(
    model: nn.Module,
    layer: nn.Module,
    filters: Sequence[int],
    *,
    shape: tuple[int, int, int],
    to_input: Callable[[Tensor], Tensor],
    steps: int = 100,
    lr: float = 0.2,
    generator: torch.Generator | None = None,
    decay_power: float = 2.0,
    weight_decay: float = 3.0,
    rotate: float = 10.0,
    rescale: float = 0.1,
    shift: float = 4.0,
    canvas: Canvas | None = None,
    redo_climbing: bool = True,
    stop: Callable[[], bool] | None = None,
    replay: Redo | None = None,
) -> AscentResult:
    """Images [F,C,H,W] in [0,1] (mapped to model input by ``to_input``) maximizing the mean
    activation of ``filters`` of ``layer``; one image per filter, all in one batch.

    The image is a sigmoid of a color-decorrelated Fourier spectrum scaled by
    1/f**``decay_power`` (Olah et al., 2017); AdamW (``weight_decay`` pulls it toward gray) with a
    cosine learning rate climbs the activation of a randomly rotated, scaled and shifted copy.
    A ReLU ``layer``'s gradient is redirected, so a filter dead on the start image can climb.
    The activation of the un-transformed image is recorded every RECORD_EVERY steps. With
    ``redo_climbing``, filters still rising by more than CLIMBING over the last CLIMB_WINDOW
    recorded intervals are redone, together, from a new random start with a schedule of
    2 x ``steps``; a redo replaces the first result only where it climbed higher (all 16 bench
    filters then reach >= 0.9 of a 400-step run). ``stop()`` true ends the ascent early (a
    deadline); a redo it interrupts is dropped, keeping the finished first schedule. A
    ``replay`` redoes and keeps exactly the filters it names instead of deciding. A tiled
    ``canvas`` (``ascent_canvas``) climbs a periodic tile seen repeated over its ``view`` and
    returns it repeated to the full size, with ``final`` measured there.
    """
    idx = torch.as_tensor(list(filters), dtype=torch.long)
    canvas = canvas or Canvas.whole((shape[1], shape[2]))
    how = _Climb(shape, canvas, to_input, lr, decay_power, weight_decay, rotate, rescale, shift)
    first = _ascend(model, layer, idx, steps, how, generator, stop)
    if replay is None and (not redo_climbing or first.stopped or steps < RECORD_EVERY):
        return first
    if replay is None:
        rows = still_climbing(first.activation).nonzero().flatten()
    else:
        rows = torch.as_tensor(replay.rows, dtype=torch.long)
    if not len(rows):
        return first
    redo = _ascend(model, layer, idx[rows], 2 * steps, how, generator, stop)
    if redo.stopped:
        return first
    if replay is None:
        higher = redo.final > first.final[rows]
    else:
        higher = torch.isin(rows, torch.as_tensor(replay.kept, dtype=torch.long))
    kept = AscentResult(
        redo.pixels[higher],
        redo.activation[:, higher],
        redo.recorded,
        redo.steps[higher],
        end=None if redo.end is None else redo.end[higher],
    )
    merged = _merge(first, kept, rows[higher]) if higher.any() else first
    done = Redo(tuple(rows.tolist()), tuple(rows[higher].tolist()))
    return replace(merged, redo=done, work=first.work + redo.work)


def still_climbing(activation: Tensor) -> Tensor:
    """[F] bool: the activation rose by more than CLIMBING over the last CLIMB_WINDOW recorded
    intervals (or since the start, if fewer were recorded)."""
    last, before = activation[-1], activation[max(0, len(activation) - 1 - CLIMB_WINDOW)]
    return (last - before) > CLIMBING * last.abs().clamp_min(1e-6)


def _merge(first: AscentResult, redo: AscentResult, rows: Tensor) -> AscentResult:
    """``first`` with the filters ``rows`` replaced by their longer ``redo``."""
    pixels = first.pixels.clone()
    pixels[rows] = redo.pixels
    recorded = torch.unique(torch.cat([first.recorded, redo.recorded]))  # sorted
    activation = torch.full((len(recorded), len(first.steps)), float("nan"))
    activation[torch.searchsorted(recorded, first.recorded)] = first.activation
    activation[:, rows] = float("nan")
    at = torch.searchsorted(recorded, redo.recorded)
    activation[at[:, None], rows[None, :]] = redo.activation
    steps = first.steps.clone()
    steps[rows] = redo.steps
    end = None
    if first.end is not None and redo.end is not None:
        end = first.end.clone()
        end[rows] = redo.end
    used = ~activation.isnan().all(dim=1)  # a step only the replaced schedule recorded
    return AscentResult(pixels, activation[used], recorded[used], steps, end=end)


@dataclass(frozen=True)
class _Head:
    """The conv that computes ``layer``'s channels and the parameter-free elementwise modules
    after it, ``layer`` last (empty when ``layer`` is the conv)."""

    conv: nn.Conv2d
    tail: tuple[nn.Module, ...]


def _elementwise(module: nn.Module) -> bool:
    """A module that maps each value on its own and has nothing per channel."""
    plain = isinstance(module, nn.Identity | nn.Dropout | nn.Dropout2d) or is_activation(module)
    return plain and not any(True for _ in module.parameters())


def _head(model: nn.Module, layer: nn.Module, x: Tensor) -> _Head | None:
    """The modules from the conv that computes ``layer``'s channels to ``layer``, read back from
    the order the modules run in on ``x``; None where ``layer`` is not a plain Conv2d followed
    by elementwise modules only. Call order does not show data flow (a residual sum is
    functional): ``_scorer`` checks the result against the model's own output."""
    calls: list[nn.Module] = []
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(lambda m, _i, _o: calls.append(m)) for m in leaves]
    try:
        forward_until(model, layer, x)
    finally:
        for h in handles:
            h.remove()
    tail: list[nn.Module] = []
    for module in reversed(calls):
        if type(module) is nn.Conv2d:
            plain = module.groups == 1 and module.padding_mode == "zeros"
            return _Head(module, tuple(reversed(tail))) if plain else None
        if not _elementwise(module):
            return None
        tail.append(module)
    return None


def _scorer(
    model: nn.Module,
    layer: nn.Module,
    idx: Tensor,
    to_input: Callable[[Tensor], Tensor],
    probe: Tensor,
) -> Callable[[Tensor], Tensor]:
    """pixels [F,C,H,W] -> [F]: image k's mean activation of filter ``idx[k]`` of ``layer``.
    Where the layer is a conv and elementwise modules (``_head``), only the F filters of that
    conv run, on the conv's input, instead of all of its output channels: the last conv is much
    of the work at a deep layer. Used only where it gives the model's own activation on the
    random ``probe`` images; else the model runs to the layer."""
    rows = torch.arange(len(idx))

    def full(pixels: Tensor) -> Tensor:
        act = forward_until(model, layer, to_input(pixels))  # (F, K, h, w)
        return act[rows, idx]  # (F, h, w)

    def sliced(pixels: Tensor) -> Tensor:
        conv = head.conv  # type: ignore[union-attr]
        feed = forward_into(model, conv, to_input(pixels))  # (F, C_in, H', W')
        bias = None if conv.bias is None else conv.bias[idx]
        out = F.conv2d(feed, conv.weight[idx], bias, conv.stride, conv.padding, conv.dilation)
        out = out[rows, rows].unsqueeze(1)  # (F, 1, h, w): image k through filter idx[k]
        for module in head.tail:  # type: ignore[union-attr]
            out = module(out)
        return out.squeeze(1)

    same = False
    with torch.no_grad():
        head = _head(model, layer, to_input(probe))
        if head is not None:
            want, got = full(probe), sliced(probe)
            scale = want.abs().amax().clamp_min(1e-6)
            same = want.shape == got.shape and bool(((want - got).abs() <= 1e-4 * scale).all())
    use = sliced if same else full
    return lambda pixels: use(pixels).mean(dim=(1, 2))


@dataclass(frozen=True)
class _Climb:
    """The settings one ascent schedule runs with (see ``filter_ascent``)."""

    shape: tuple[int, int, int]
    canvas: Canvas
    to_input: Callable[[Tensor], Tensor]
    lr: float
    decay_power: float
    weight_decay: float
    rotate: float
    rescale: float
    shift: float


def _ascend(
    model: nn.Module,
    layer: nn.Module,
    idx: Tensor,
    steps: int,
    how: _Climb,
    generator: torch.Generator | None,
    stop: Callable[[], bool] | None,
) -> AscentResult:
    """One cosine schedule of ``steps`` for the filters ``idx`` (see ``filter_ascent``)."""
    n, c, canvas = len(idx), how.shape[0], how.canvas
    scale = spectrum_scale(canvas.period, how.decay_power)  # (h, w//2+1)
    spectrum = _INIT_STD * torch.randn((n, c, *scale.shape, 2), generator=generator)
    spectrum.requires_grad_(True)
    opt = _AdamW(how.lr, how.weight_decay)

    def render(size: tuple[int, int], phase: tuple[int, int] = (0, 0)) -> Tensor:
        return tile(spectrum_to_pixels(spectrum, scale, canvas.period), size, phase)

    def random_phase() -> tuple[int, int]:
        """Where the view starts in the tile, new each step: the view's borders (where the
        model pads) must not stay on one place of the tile, or it grows seams there."""
        if not canvas.tiled:
            return (0, 0)
        u = torch.rand(2, generator=generator)
        return (int(u[0] * canvas.period[0]), int(u[1] * canvas.period[1]))

    history, recorded, stopped = [], [], False
    # One thread, whatever --threads: 80+ ascent steps grow the last-bit differences of another
    # thread count's conv reductions into another image (a --threads 1 replay of a 2-thread
    # full-size report drew cnn.18's filters at Spearman 0.79), and a tile's small ops spend
    # longer handing work over than computing on more threads (5-30x per step on a busy
    # two-core machine).
    threads = 1
    with (
        eval_mode(model),
        frozen_params(model),
        redirected_relu(layer),
        torch.enable_grad(),
        torch_threads(threads),
    ):
        # Seeded apart from ``generator``: the climb draws the same numbers either way.
        probe = torch.rand((n, c, *canvas.view), generator=torch.Generator().manual_seed(0))
        score = _scorer(model, layer, idx, how.to_input, probe)
        for step in range(steps + 1):
            stopped = step < steps and stop is not None and stop()
            if step % RECORD_EVERY == 0 or step == steps or stopped:
                with torch.no_grad():
                    history.append(score(render(canvas.view)))
                recorded.append(step)
            if step == steps or stopped:
                break
            moved = random_affine(
                render(canvas.view, random_phase()),
                generator,
                rotate=how.rotate,
                rescale=how.rescale,
                shift=how.shift,
            )
            (grad,) = torch.autograd.grad(-score(moved).sum(), spectrum)
            opt.lr = cosine_lr(how.lr, step, steps)
            with torch.no_grad():
                opt.update(spectrum, grad)
        with torch.no_grad():
            spectrum.requires_grad_(False)
            pixels = render(canvas.full)
            end = score(pixels) if canvas.tiled else None
    done = torch.full((n,), recorded[-1], dtype=torch.long)
    history_t, recorded_t = torch.stack(history), torch.as_tensor(recorded)
    work = n * recorded[-1]
    return AscentResult(pixels, history_t, recorded_t, done, stopped, work=work, end=end)


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
