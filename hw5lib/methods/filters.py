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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from hw5lib.methods.ascent_canvas import Canvas, tile
from hw5lib.methods.ascent_score import filter_scorer, redirected_relu
from hw5lib.methods.fourier_image import (
    INIT_STD,
    random_affine,
    spectrum_scale,
    spectrum_to_pixels,
)
from hw5lib.model.hooks import eval_mode, forward_until, frozen_params, torch_threads

# A filter whose activation still rose by more than CLIMBING over its last CLIMB_WINDOW recorded
# intervals (20 steps) had not settled: it is redone once from a new start with a schedule twice
# as long, and the higher of the two kept (bench/RESULTS.md). On 40 images' 16 filters of the
# trained demo model, 80 steps left five filters at 0.85-0.97 of a 400-step run, each rising by
# 2.7-18% over its last 20 steps; every other filter rose by at most 2.1%.
CLIMBING = 0.025
CLIMB_WINDOW = 2
RECORD_EVERY = 10  # steps between recorded activations (each costs a forward)


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
    spectrum = INIT_STD * torch.randn((n, c, *scale.shape, 2), generator=generator)
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
        score = filter_scorer(model, layer, idx, how.to_input, probe)
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
