"""Hook helpers that never outlive a ``with`` block.

Gradients are taken with a tensor hook on the layer's output rather than a module backward hook:
module backward hooks break on in-place ReLUs, tensor hooks registered before an in-place op see
the gradient of the value the layer produced.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode (BatchNorm must not mix samples); restore each flag after."""
    # A frozen TorchScript module (layers.inference_copy) has no modes left to set.
    flags = [(m, m.training) for m in model.modules() if hasattr(m, "training")]
    for module, _ in flags:
        module.training = False
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def frozen_params(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off parameter gradients so input-gradient methods leave no ``.grad``; restore after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass
class LayerRecord:
    """What one forward (and backward) pass through a layer left behind."""

    activation: Tensor | None = None  # detached copy of the layer output
    gradient: Tensor | None = None  # d score / d output, same shape
    live: Tensor | None = field(default=None, repr=False)  # the output, still in the graph


@contextmanager
def record_layer(layer: nn.Module, *, gradients: bool = False) -> Iterator[LayerRecord]:
    """Record ``layer``'s output (and, with ``gradients``, its gradient) for one pass."""
    record = LayerRecord()
    tensor_hooks = []

    def on_forward(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        # Clone: a following in-place op (ReLU(inplace=True)) would otherwise rewrite it.
        record.activation = output.detach().clone()
        record.live = output
        if gradients and output.requires_grad:
            tensor_hooks.append(output.register_hook(lambda g: setattr(record, "gradient", g)))

    handle = layer.register_forward_hook(on_forward)
    try:
        yield record
    finally:
        handle.remove()
        for h in tensor_hooks:
            h.remove()


class _StopForward(Exception):
    def __init__(self, output: Tensor) -> None:
        super().__init__("stopped after the recorded layer")
        self.output = output


def _stopped_at(model: nn.Module, x: Tensor, handle: RemovableHandle, what: str) -> Tensor:
    """Run ``model`` on ``x`` until the hook behind ``handle`` raises _StopForward; its tensor."""
    try:
        model(x)
    except _StopForward as done:
        return done.output
    finally:
        handle.remove()
    raise RuntimeError(f"the {what} was not reached by the model's forward pass")


def forward_until(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """Run ``model`` on ``x`` only as far as ``layer`` and return its output, in the graph.

    Filter visualization and DeepDream need nothing after the layer, so the rest is skipped.
    """

    def stop(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        raise _StopForward(output)

    return _stopped_at(model, x, layer.register_forward_hook(stop), "layer")


def forward_into(model: nn.Module, module: nn.Module, x: Tensor) -> Tensor:
    """Run ``model`` on ``x`` only as far as ``module`` and return ``module``'s input, in the
    graph (``module`` itself does not run)."""

    def stop(_module: nn.Module, inputs: tuple) -> None:
        raise _StopForward(inputs[0])

    return _stopped_at(model, x, module.register_forward_pre_hook(stop), "module")


def hook_count(model: nn.Module) -> int:
    """Forward, pre-forward and backward hooks still registered anywhere in ``model``."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run torch on ``count`` intra-op threads (None: as it is), then restore the count."""
    threads = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
