"""Class activation maps: Grad-CAM and LayerCAM, plus the layer choices they need.

Both methods weigh a convolutional layer's activation A [N,K,h,w] by the gradient of the class
logit with respect to A, sum over channels, ReLU, and upsample to the input size. They differ only
in ``weigh`` (after jacobgil/pytorch-grad-cam's ``get_cam_weights``):

- Grad-CAM (Selvaraju et al., 2017, "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization"): one weight per channel, the gradient averaged over h,w.
- LayerCAM (Jiang et al., 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for
  Localization"): one weight per element, ReLU(gradient).

The layer's output is cut from the graph and made a leaf, so the backward pass stops at the layer:
no gradient ever flows to the input or to earlier layers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hw5lib.methods import metrics
from hw5lib.model.hooks import eval_mode, forward_until, frozen_params, record_layer
from hw5lib.model.layers import as_module, same_activation_model
from hw5lib.model.probe import is_activation

logger = logging.getLogger(__name__)

Weigh = Callable[[Tensor, Tensor], Tensor]
"""``weigh(activation, gradient) -> weights``, broadcastable to the activation [N,K,h,w]."""

_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.LPPool2d,
)
_RELUS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)


def grad_cam_weights(activation: Tensor, gradient: Tensor) -> Tensor:
    """Grad-CAM channel weights (Selvaraju et al., 2017): mean gradient over h,w -> [N,K,1,1]."""
    return gradient.mean(dim=(2, 3), keepdim=True)


def layer_cam_weights(activation: Tensor, gradient: Tensor) -> Tensor:
    """LayerCAM element weights (Jiang et al., 2021): ReLU(gradient) -> [N,K,h,w]."""
    return gradient.clamp(min=0)


@dataclass
class _Leaf:
    tensor: Tensor | None = None


@contextmanager
def _layer_as_leaf(layer: nn.Module) -> Iterator[_Leaf]:
    """Replace ``layer``'s output by a clone of a fresh leaf that requires grad.

    Register before ``record_layer`` so its hooks see the clone. The clone (not the leaf) goes on,
    so a following in-place ReLU is legal; d score / d leaf = d score / d (layer output).
    """
    leaf = _Leaf()

    def cut(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        leaf.tensor = output.detach().requires_grad_(True)
        return leaf.tensor.clone()

    handle = layer.register_forward_hook(cut)
    try:
        yield leaf
    finally:
        handle.remove()


def _cam_chunk(
    model: nn.Module, x: Tensor, target: Tensor, layer: nn.Module, weigh: Weigh
) -> Tensor:
    """Un-upsampled CAM for one chunk: x [n,C,H,W], target [n] -> [n,h,w]."""
    with _layer_as_leaf(layer) as leaf, record_layer(layer, gradients=True) as record:
        score = model(x).gather(1, target[:, None]).sum()  # pre-softmax logits
        if leaf.tensor is None:
            raise RuntimeError("the layer was not reached by the model's forward pass")
        torch.autograd.grad(score, leaf.tensor, allow_unused=True)  # fills record.gradient
    activation, gradient = record.activation, record.gradient  # [n,K,h,w] each
    if activation is None or gradient is None:
        raise RuntimeError("the score does not depend on the layer's output")
    return (weigh(activation, gradient) * activation).sum(dim=1).clamp(min=0)  # [n,h,w]


def cam(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    layer: nn.Module | str,
    *,
    weigh: Weigh,
    batch_size: int = 32,
) -> Tensor:
    """ReLU(sum_k weigh(A, dA)_k * A_k), bilinearly upsampled to x's H,W; not normalized.

    x [N,C,H,W], target [N] long -> [N,H,W] float, detached. ``layer`` is a module of ``model``
    or its dotted name; its output must be [N,K,h,w]. Chunks of ``batch_size`` bound memory only.
    """
    if target.shape != (x.shape[0],):
        raise ValueError(f"target must have shape [{x.shape[0]}], got {list(target.shape)}")
    module = as_module(model, layer)
    chunks = []
    with eval_mode(model), frozen_params(model), torch.enable_grad():
        for xb, tb in zip(x.split(batch_size), target.split(batch_size), strict=True):
            chunks.append(_cam_chunk(model, xb.detach(), tb, module, weigh))
    maps = torch.cat(chunks)[:, None]  # [N,1,h,w]
    up = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up[:, 0].detach()  # [N,H,W]


def grad_cam(
    model: nn.Module, x: Tensor, target: Tensor, layer: nn.Module | str, *, batch_size: int = 32
) -> Tensor:
    """Grad-CAM (Selvaraju et al., 2017). x [N,C,H,W], target [N] -> [N,H,W], not normalized.

    Example: ``normalize_maps(grad_cam(model, x, y, "cnn.18"))`` for display.
    """
    return cam(model, x, target, layer, weigh=grad_cam_weights, batch_size=batch_size)


def layer_cam(
    model: nn.Module, x: Tensor, target: Tensor, layer: nn.Module | str, *, batch_size: int = 32
) -> Tensor:
    """LayerCAM (Jiang et al., 2021). x [N,C,H,W], target [N] -> [N,H,W], not normalized."""
    return cam(model, x, target, layer, weigh=layer_cam_weights, batch_size=batch_size)


def normalize_maps(maps: Tensor) -> Tensor:
    """Scale each map [N,...] to [0,1] by its own min/max; a constant map becomes all zeros."""
    dims = tuple(range(1, maps.ndim))
    lo = maps.amin(dim=dims, keepdim=True)
    span = maps.amax(dim=dims, keepdim=True) - lo
    return (maps - lo) / span.clamp(min=torch.finfo(maps.dtype).tiny)


def feature_maps(model: nn.Module, x: Tensor, layer: nn.Module | str) -> Tensor:
    """Every channel of ``layer``'s output for x, ReLU'd: x [N,C,H,W] -> [N,K,h,w], >= 0.

    Used for the feature-map grid (Zeiler & Fergus, 2014, "Visualizing and Understanding
    Convolutional Networks"); the model is run only as far as the layer.
    """
    module = as_module(model, layer)
    with torch.inference_mode(), eval_mode(model):
        return forward_until(model, module, x).relu()


def cam_layer_candidates(model: nn.Module, layer_name: str) -> list[str]:
    """Names of the conv block around ``layer_name``, e.g. "cnn.18" -> ["cnn.16", ..., "cnn.19"].

    Within the parent module's children, in order: from the last Conv2d at or before the layer
    (else the layer itself) up to and including the next pooling layer at or after it (else the
    last child).
    """
    modules = dict(model.named_modules())
    if layer_name not in modules or layer_name == "":
        raise KeyError(f"no module named {layer_name!r} in the model")
    parent_name, _, _ = layer_name.rpartition(".")
    prefix = f"{parent_name}." if parent_name else ""
    siblings = [(prefix + n, m) for n, m in modules[parent_name].named_children()]
    names = [n for n, _ in siblings]
    at = names.index(layer_name)
    convs = [i for i in range(at + 1) if isinstance(siblings[i][1], nn.Conv2d)]
    start = convs[-1] if convs else at
    pools = [i for i in range(at, len(siblings)) if isinstance(siblings[i][1], _POOLS)]
    end = pools[0] if pools else len(siblings) - 1
    return names[start : end + 1]


def default_cam_layer(model: nn.Module, input_shape: tuple[int, int, int] = (3, 128, 128)) -> str:
    """Last activation layer (ReLU, RReLU, SiLU, ...) after the last Conv2d (else the last 4-D
    output after it), e.g. "cnn.18" for HW3.

    Found as torchcam's ``locate_candidate_layer``: one zero input [1,*input_shape] through the
    model with a forward hook on every leaf module, which records call order and output rank.
    """
    calls: list[tuple[str, nn.Module, int]] = []  # (name, module, output ndim) in call order
    handles = []

    def watch(name: str) -> Callable[[nn.Module, tuple, Tensor], None]:
        def hook(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            calls.append((name, module, output.ndim if isinstance(output, Tensor) else -1))

        return hook

    try:
        for name, module in model.named_modules():
            if name and not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(watch(name)))
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode(), eval_mode(model):
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()

    conv_at = [i for i, (_, m, _) in enumerate(calls) if isinstance(m, nn.Conv2d)]
    if not conv_at:
        raise ValueError("the model has no Conv2d layer to explain with a CAM")
    after = calls[conv_at[-1] :]
    relus = [n for n, m, nd in after if nd == 4 and (isinstance(m, _RELUS) or is_activation(m))]
    spatial = [n for n, _, nd in after if nd == 4]
    choice = relus[-1] if relus else spatial[-1]
    logger.info("CAM layer chosen automatically: %s", choice)
    return choice


def layer_localization(
    model: nn.Module,
    folded: nn.Module | None,
    x: Tensor,
    target: Tensor,
    masks: Tensor,
    layer: str,
    batch_size: int = 64,
) -> list[dict]:
    """Grad-CAM's pointing accuracy and mass inside the object masks at each layer of
    ``layer``'s block (``cam_layer_candidates``): the trust table's rows on the layer choice.
    ``folded``: the BatchNorm-folded copy, used where its activation is the model's."""
    rows = []
    for name in cam_layer_candidates(model, layer):
        at = same_activation_model(model, folded, name)
        maps = grad_cam(at, x, target, name, batch_size=batch_size).cpu()
        rows.append(
            {
                "method": f"Grad-CAM @ {name}",
                "pointing": float(metrics.pointing_game(maps, masks).float().mean()),
                "mass_inside": float(metrics.mass_inside(maps, masks).mean()),
            }
        )
    return rows
