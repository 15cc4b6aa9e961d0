"""Model structure: a layer by name or index, the layer table, the default filter layers, and
the faster copies of a model (BatchNorm folded for gradients, traced for inference)."""

from __future__ import annotations

import copy
import itertools
import logging
import re
import warnings
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hw5lib.errors import UserError
from hw5lib.model import probe

log = logging.getLogger(__name__)


def resolve_layer(model: nn.Module, spec: str) -> tuple[str, nn.Module]:
    """A layer by module name (``cnn.15``, ``features.10``), by the course's ``cnn[15]``, or by a
    bare index into the model's first ``nn.Sequential`` (``15`` means ``model.cnn[15]``)."""
    spec = spec.strip()
    modules = dict(model.named_modules())
    name = re.sub(r"\[(\d+)\]", r".\1", spec)
    if name.isdigit():
        seq = next((n for n, m in model.named_children() if isinstance(m, nn.Sequential)), None)
        if seq is None:
            raise UserError(f"layer {spec!r}: the model has no nn.Sequential to index; use a name")
        name = f"{seq}.{name}"
    if name not in modules or name == "":
        choices = ", ".join(n for n in modules if n and n.count(".") <= 1)
        raise UserError(f"no layer {spec!r} in the model; choose one of: {choices}")
    return name, modules[name]


def layer_table(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, str, str]]:
    """(name, type, output shape) of every named module, in registration order, from one
    zero-input forward pass; hooks are removed even if the forward raises."""
    shapes: dict[str, str] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_m: nn.Module, _i: tuple, out: object, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                shapes[name] = "x".join(str(d) for d in out.shape[1:])

        handles.append(module.register_forward_hook(record))
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, *input_shape))
    except Exception as err:
        raise probe.forward_error(err) from err
    finally:
        for h in handles:
            h.remove()
    return [(n, type(m).__name__, shapes.get(n, "-")) for n, m in model.named_modules() if n]


def as_module(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """A layer given as a module of ``model`` or as anything ``resolve_layer`` accepts."""
    return layer if isinstance(layer, nn.Module) else resolve_layer(model, layer)[1]


def default_filter_layers(
    model: nn.Module, count: int = 4, input_shape: tuple[int, int, int] = (3, 128, 128)
) -> list[str]:
    """``count`` layers with a spatial (N, C, H, W) output, spread from first to last in call
    order: the activation layers (any of torch's: ReLU, RReLU, SiLU, ...), else the convs
    (activations applied with ``F.relu``), found by one probe forward at ``input_shape``."""
    pool = probe.spatial_layers(model, input_shape)
    if not pool:
        raise UserError(
            "the model has no layer with a spatial output (N, C, H, W); pass --filter-layers"
        )
    return probe.spread(pool, count)


def gradient_copy(
    model: nn.Module,
    example: Tensor,
    *,
    tolerance: float = 1e-4,
    record: dict[str, str] | None = None,
) -> nn.Module:
    """A copy of ``model`` for input-gradient methods (saliency, SmoothGrad, Grad x Input, IG):
    each eval-mode BatchNorm2d that directly follows a Conv2d in an nn.Sequential is folded into
    that conv, which leaves the function x -> logits unchanged and saves the BatchNorm's forward
    and backward passes (~1.2x the gradient rate of the HW3 Classifier on a laptop CPU). Every
    other layer's activation, and its gradient, is the same too, so filter ascent and the CAMs
    use the copy at every layer but the folded convs and BatchNorms (the copy's
    ``folded_layers``). The model itself if nothing folds or the outputs disagree; ``record``
    gets ``bn_folded``: on, or off and why."""
    record = {} if record is None else record
    if isinstance(model, torch.jit.ScriptModule) or model.training:
        record["bn_folded"] = "off: a TorchScript or training-mode model"
        return model
    fast = copy.deepcopy(model)
    folded: list[str] = []
    for seq_name, seq in list(fast.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(kids):
            if _foldable(conv, bn):
                # _foldable checked the exact types, which named_children cannot say
                fused = fuse_conv_bn_eval(cast(nn.Conv2d, conv), cast(nn.BatchNorm2d, bn))
                setattr(seq, conv_name, fused)
                setattr(seq, bn_name, nn.Identity())
                folded += [".".join(filter(None, (seq_name, n))) for n in (conv_name, bn_name)]
    if not folded:
        record["bn_folded"] = "off: no Conv2d -> BatchNorm2d pair in an nn.Sequential"
        return model
    fast.folded_layers = frozenset(folded)  # their activations differ from the model's
    if _channels_last(model):  # the fused weights come back in the default layout
        fast = fast.to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    why = probe.agrees(model, fast, example, tolerance)
    if why:
        record["bn_folded"] = f"off: {why}"
        log.info("BatchNorm-folded copy off (%s); using the model as is", why)
        return model
    record["bn_folded"] = "on"
    return fast


def same_activation_model(model: nn.Module, fast: nn.Module | None, layer: str) -> nn.Module:
    """``fast`` (a ``gradient_copy``) where ``layer``'s activation is the same in it, else
    ``model``."""
    folded = getattr(fast, "folded_layers", None)
    return fast if fast is not None and folded is not None and layer not in folded else model


def _channels_last(model: nn.Module) -> bool:
    return any(
        p.dim() == 4
        and not p.is_contiguous()
        and p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
    )


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.running_mean is not None  # else it normalizes with batch statistics
        and conv.out_channels == bn.num_features
    )


def inference_copy(
    model: nn.Module,
    example: Tensor,
    *,
    tolerance: float = 1e-4,
    record: dict[str, str] | None = None,
) -> nn.Module:
    """A faster copy of ``model`` for forward-only work (LIME, deletion/insertion, accuracy):
    traced, frozen and optimized for inference (BatchNorm folded into the conv, oneDNN
    layouts), about 2x a plain forward of the HW3 Classifier on a laptop CPU. Used only if its
    softmax output matches the model's on ``example`` within ``tolerance``; else the model itself.
    ``record`` gets ``traced``: on, or off and why.
    """
    record = {} if record is None else record
    if example.device.type != "cpu":  # the oneDNN passes are for the CPU
        record["traced"] = "off: not a CPU run"
        return model
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices
            traced = torch.jit.trace(copy.deepcopy(model).eval(), example, check_trace=False)
            fast = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            want = model.eval()(example).softmax(1)
            got = fast(example).softmax(1)
            fast(example[:1])  # other batch sizes must work too
    except Exception as err:  # any model tracing cannot handle: the plain one is still right
        record["traced"] = f"off: tracing raised {type(err).__name__}: {probe.first_line(err)}"
        log.info("no optimized inference copy (%s); using the model as is", err)
        return model
    if got.shape != want.shape or float((got - want).abs().max()) > tolerance:
        record["traced"] = "off: outputs differ from the plain model's"
        log.info("optimized inference copy disagrees with the model; using the model as is")
        return model
    record["traced"] = "on"
    return fast
