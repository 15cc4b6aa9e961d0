"""The score filter ascent climbs, run only as far into the model as it must: the model up to the
layer, only the chosen filters of a last conv (and what follows it elementwise), and ReLUs that
pass gradient where a unit is off (so a dead filter can start to climb)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hw5lib.model.hooks import forward_into, forward_until
from hw5lib.model.probe import is_activation


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
        (out,) = ctx.saved_tensors  # type: ignore[attr-defined]  # torch's FunctionCtx stub omits it
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


@dataclass(frozen=True)
class SlicedHead:
    """The conv that computes ``layer``'s channels and the parameter-free elementwise modules
    after it, ``layer`` last (empty when ``layer`` is the conv)."""

    conv: nn.Conv2d
    tail: tuple[nn.Module, ...]


def _elementwise(module: nn.Module) -> bool:
    """A module that maps each value on its own and has nothing per channel."""
    plain = isinstance(module, nn.Identity | nn.Dropout | nn.Dropout2d) or is_activation(module)
    return plain and not any(True for _ in module.parameters())


def sliced_head(model: nn.Module, layer: nn.Module, x: Tensor) -> SlicedHead | None:
    """The modules from the conv that computes ``layer``'s channels to ``layer``, read back from
    the order the modules run in on ``x``; None where ``layer`` is not a plain Conv2d followed
    by elementwise modules only. Call order does not show data flow (a residual sum is
    functional): ``filter_scorer`` checks the result against the model's own output."""
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
            return SlicedHead(module, tuple(reversed(tail))) if plain else None
        if not _elementwise(module):
            return None
        tail.append(module)
    return None


def filter_scorer(
    model: nn.Module,
    layer: nn.Module,
    idx: Tensor,
    to_input: Callable[[Tensor], Tensor],
    probe: Tensor,
) -> Callable[[Tensor], Tensor]:
    """pixels [F,C,H,W] -> [F]: image k's mean activation of filter ``idx[k]`` of ``layer``.
    Where the layer is a conv and elementwise modules (``sliced_head``), only the F filters of that
    conv run, on the conv's input, instead of all of its output channels: the last conv is much
    of the work at a deep layer. Used only where it gives the model's own activation on the
    random ``probe`` images; else the model runs to the layer."""
    rows = torch.arange(len(idx))

    def full(pixels: Tensor) -> Tensor:
        act = forward_until(model, layer, to_input(pixels))  # (F, K, h, w)
        return act[rows, idx]  # (F, h, w)

    def sliced(head: SlicedHead, pixels: Tensor) -> Tensor:
        conv = head.conv
        feed = forward_into(model, conv, to_input(pixels))  # (F, C_in, H', W')
        bias = None if conv.bias is None else conv.bias[idx]
        out = F.conv2d(feed, conv.weight[idx], bias, conv.stride, conv.padding, conv.dilation)
        out = out[rows, rows].unsqueeze(1)  # (F, 1, h, w): image k through filter idx[k]
        for module in head.tail:
            out = module(out)
        return out.squeeze(1)

    with torch.no_grad():
        head = sliced_head(model, layer, to_input(probe))
        if head is not None:
            want, got = full(probe), sliced(head, probe)
            scale = want.abs().amax().clamp_min(1e-6)
            if want.shape == got.shape and bool(((want - got).abs() <= 1e-4 * scale).all()):
                return lambda pixels: sliced(head, pixels).mean(dim=(1, 2))
    return lambda pixels: full(pixels).mean(dim=(1, 2))
