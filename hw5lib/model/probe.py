"""What a probe forward learns about a model we did not write: its input side, its spatial
layers, whether it ends in probabilities, whether a speed trick keeps its outputs, and where in
the user's own code a forward failed."""

from __future__ import annotations

import copy
import logging
import math
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hw5lib.errors import UserError
from hw5lib.model.hooks import eval_mode

log = logging.getLogger(__name__)

# Sides tried after the default when nothing recorded or given says the input size: the usual
# ones of image classifiers and of the course's data sets (Food-11 128, FER2013 48 and 44).
COMMON_SIDES = (224, 48, 32, 64, 96, 192, 256, 300, 44, 112, 150, 160, 227, 299, 28, 40, 56, 120)
PROBE_IMAGES = 2  # a batch, so a forward that only works for one image is found out


class UserForwardError(UserError):
    """The model's own forward raised; the message names the user's file and line."""


# ------------------------------------------------------------------------- forward errors


def _ours(filename: str) -> bool:
    """Frames of torch, of hw5 and of installed or standard-library packages."""
    path = Path(filename).resolve()
    parts = set(path.parts)
    if {"site-packages", "dist-packages"} & parts or filename.startswith("<"):
        return True
    if "hw5lib" in parts or path.name == "hw5.py":
        return True
    stdlib = Path(sys.base_prefix).resolve() / "lib"
    return path.is_relative_to(stdlib) or "torch" in parts


def user_frame(err: BaseException) -> traceback.FrameSummary | None:
    """The innermost traceback frame of ``err`` in the user's own code, if any."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not _ours(f.filename)]
    return frames[-1] if frames else None


def forward_error(err: Exception) -> UserForwardError:
    """One line for a forward that raised: where in the user's code, and what."""
    what = f"{type(err).__name__}: {first_line(err)}"
    frame = user_frame(err)
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return UserForwardError(
        f"your model's forward raised{where}: {what} (check --size/--channels and the model; "
        "-v shows the traceback)"
    )


def run_forward(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` without gradients, its failure turned into one line naming the user's code."""
    try:
        with torch.inference_mode(), eval_mode(model):
            out = model(x)
    except Exception as err:
        raise forward_error(err) from err
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserError(
            f"the model returns {shape} for a {tuple(x.shape)} input; hw5 explains classifiers "
            "that return (N, classes)"
        )
    return out


# ------------------------------------------------------------------------------ input size


def device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _linear_sides(model: nn.Module, channels: int, default: int) -> list[int]:
    """The sides that make the conv trunk's output fit the first Linear's ``in_features``,
    from the trunk's last spatial output at ``default`` (its downsampling factor): the common
    sides among them first (a trunk that halves three times takes 40 to 47 alike, and 44 is
    FER's crop), then the smallest; empty if unknown."""
    linear = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    if linear is None:
        return []
    shapes = spatial_outputs(model, (channels, default, default), strict=False)
    if not shapes:
        return []
    c, h, w = shapes[-1][1]  # the last spatial output before the flatten
    if h != w or not h or linear.in_features % c:
        return []
    side = math.isqrt(linear.in_features // c)
    if side * side * c != linear.in_features:
        return []
    factor = max(default // h, 1)
    low = side * factor
    return [s for s in COMMON_SIDES if low <= s < low + factor] + [low]


def infer_side(model: nn.Module, channels: int, default: int) -> tuple[int, str]:
    """The first side, of ``default``, those the first Linear implies and the common sides,
    whose forward runs and returns (N, K); with where it came from. ``default`` if none runs
    (its forward then fails with the user's own error)."""
    device = device_of(model)
    tried: list[int] = []
    for side in dict.fromkeys([default, *_linear_sides(model, channels, default), *COMMON_SIDES]):
        tried.append(side)
        try:
            with torch.inference_mode(), eval_mode(model):
                out = model(torch.zeros(PROBE_IMAGES, channels, side, side, device=device))
        except Exception:  # the wrong size raises in the model's own layers
            continue
        if isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == PROBE_IMAGES:
            return side, ("default" if side == default else "probed")
    log.info("no input side of %s runs the model; keeping %d", tried, default)
    return default, "default"


# --------------------------------------------------------------------------- spatial layers


@contextmanager
def _watch(model: nn.Module, record: Callable[[str, nn.Module, object], None]) -> Iterator[None]:
    """A forward hook on every leaf module calling ``record(name, module, output)``; removed
    in ``finally``."""
    handles = []
    hookable = not isinstance(model, torch.jit.ScriptModule)  # TorchScript takes no hooks
    try:
        for name, module in model.named_modules() if hookable else ():
            if name and next(module.children(), None) is None:
                handles.append(
                    module.register_forward_hook(lambda m, _i, out, name=name: record(name, m, out))
                )
        yield
    finally:
        for h in handles:
            h.remove()


def spatial_outputs(
    model: nn.Module, input_shape: tuple[int, int, int], *, strict: bool = True
) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, (C, H, W)) of every leaf layer with a 4-D output, in the order a zero-input
    forward first calls them. ``strict=False``: what was seen before a failing forward."""
    seen: dict[str, tuple[int, int, int]] = {}

    def record(name: str, _m: nn.Module, out: object) -> None:
        if isinstance(out, Tensor) and out.dim() == 4 and name not in seen:
            _, c, h, w = out.shape
            seen[name] = (c, h, w)

    with _watch(model, record):
        try:
            with torch.inference_mode(), eval_mode(model):
                model(torch.zeros(1, *input_shape, device=device_of(model)))
        except Exception as err:
            if strict:
                raise forward_error(err) from err
    return list(seen.items())


def is_activation(module: nn.Module) -> bool:
    """Any of torch's activation layers (RReLU, SiLU, Mish, ...), not only the ReLU family."""
    return type(module).__module__ == "torch.nn.modules.activation" and not isinstance(
        module, nn.Softmax | nn.LogSoftmax | nn.Softmax2d | nn.Softmin | nn.MultiheadAttention
    )


def spread(pool: list[str], count: int) -> list[str]:
    """``count`` of ``pool`` spread evenly from first to last."""
    if count <= 0 or not pool:
        return []
    picks = np.unique(np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int))
    return [pool[int(i)] for i in picks]


def spatial_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """The layers to show by default: the activation layers with a spatial output, else the
    convs, else any layer with one; in call order."""
    modules = dict(model.named_modules())
    names = [n for n, _ in spatial_outputs(model, input_shape)]
    return (
        [n for n in names if is_activation(modules[n])]
        or [n for n in names if isinstance(modules[n], nn.Conv2d)]
        or names
    )


def require_spatial(
    model: nn.Module, layers: dict[str, str], input_shape: tuple[int, int, int]
) -> None:
    """Each named layer (option -> layer name) must output a spatial map; else one line saying
    which layers do."""
    spatial = dict(spatial_outputs(model, input_shape))
    for option, name in layers.items():
        if name not in spatial:
            choices = ", ".join(spatial) or "none"
            raise UserError(
                f"{option} {name}: that layer's output is not a spatial feature map (N, C, H, W); "
                f"the layers that give one are: {choices}"
            )


# ------------------------------------------------------------------------- output head

LOGITS = "logits"
HEADS = {nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax", nn.Sigmoid: "sigmoid"}
PROB_TOLERANCE = 1e-4


@dataclass(frozen=True)
class OutputHead:
    """What the model's output is, and what the gradient methods explain."""

    kind: str = LOGITS  # logits, softmax, log_softmax or sigmoid
    layer: str | None = None  # the final module whose input the gradient methods explain
    found: str = "probe"  # structure (the last module called) or values (sums to 1)

    @property
    def explained(self) -> str:
        if self.kind == LOGITS:
            return "the model's outputs (logits)"
        if self.layer is None:
            return f"the log of the model's {self.kind} outputs (its head is not a module)"
        return f"the input to the final {self.layer} ({self.kind})"

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "layer": self.layer, "found": self.found,
                "explained": self.explained}  # fmt: skip


def output_head(model: nn.Module, example: Tensor) -> OutputHead:
    """What the model's output is (``probe_output``)."""
    return probe_output(model, example)[0]


def probe_output(model: nn.Module, example: Tensor) -> tuple[OutputHead, Tensor]:
    """The final Softmax/LogSoftmax/Sigmoid module, found as the last module called whose
    output is the model's output; else, from the values: rows of non-negative outputs summing
    to 1 are probabilities, rows whose exp sums to 1 log-probabilities. A TorchScript model
    (no hooks to take a head off with) is taken as it is. With the output on ``example``."""
    calls: list[tuple[str, nn.Module, object]] = []
    with _watch(model, lambda n, m, out: calls.append((n, m, out))):
        out = run_forward(model, example)
    if isinstance(model, torch.jit.ScriptModule):
        return OutputHead(), out
    if calls and calls[-1][2] is out:
        name, module, _ = calls[-1]
        kind = next((k for t, k in HEADS.items() if type(module) is t), None)
        if kind is not None:
            return OutputHead(kind, name, "structure"), out
    values = out.float()
    ones = torch.ones(values.shape[0], device=values.device)
    if (values >= 0).all() and torch.allclose(values.sum(1), ones, atol=PROB_TOLERANCE):
        return OutputHead("softmax", None, "values"), out
    if (values <= 0).all() and torch.allclose(values.exp().sum(1), ones, atol=PROB_TOLERANCE):
        return OutputHead("log_softmax", None, "values"), out
    return OutputHead(), out


def _input_of(_module: nn.Module, inputs: tuple, _output: Tensor) -> Tensor:
    return inputs[0]


def _log_of(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
    return output.clamp_min(torch.finfo(output.dtype).tiny).log()


def take_off_head(model: nn.Module, head: OutputHead) -> nn.Module:
    """A copy of the model that returns logits, what gradient methods and CAMs explain: a
    final Softmax/LogSoftmax/Sigmoid module gives back its input; a softmax inside ``forward``
    is undone by a log (log-probabilities are logits up to a constant per image). Layer names
    stay those of the model. The hook lives as long as the copy: it is what the run explains."""
    if head.kind == LOGITS or (head.layer is None and head.kind == "log_softmax"):
        return model
    logits = copy.deepcopy(model)
    if head.layer is not None:
        dict(logits.named_modules())[head.layer].register_forward_hook(_input_of)
    else:
        logits.register_forward_hook(_log_of)
    return logits


def probabilities(logits: Tensor, kind: str) -> Tensor:
    """The model's own probabilities from what ``Logits`` returns: a Sigmoid head's sigmoid,
    else a softmax (which gives back a Softmax head's output and undoes a LogSoftmax)."""
    return logits.sigmoid() if kind == "sigmoid" else logits.softmax(dim=1)


# ---------------------------------------------------------------------------- fast paths


def agrees(model: nn.Module, fast: nn.Module, example: Tensor, tolerance: float = 1e-4) -> str:
    """ "" where ``fast`` gives ``model``'s softmax outputs on ``example`` and its input gradient
    runs (hooks and ``.view`` must survive the backward pass too), else why not."""
    try:
        with torch.no_grad(), eval_mode(model):
            want = model(example).float().softmax(1)
        x = example.detach().clone().requires_grad_(True)
        with eval_mode(fast):
            out = fast(x).float()
            torch.autograd.grad(out.sum(), x)
        got = out.detach().softmax(1)
    except Exception as err:
        return f"forward raised {type(err).__name__}: {first_line(err)}"
    if got.shape != want.shape or float((got - want).abs().max()) > tolerance:
        return "outputs differ from the plain model's"
    return ""


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def channels_last(model: nn.Module, example: Tensor, record: dict[str, str]) -> nn.Module:
    """The model in channels_last layout (oneDNN's convolutions run ~1.3-1.5x faster on NHWC
    tensors, bench/RESULTS.md) if it computes the same and its forward and backward still run
    (a ``.view`` flatten does not on NHWC tensors); else the plain model, said once."""
    if example.device.type != "cpu" or isinstance(model, torch.jit.ScriptModule):
        record["channels_last"] = "off: not a CPU run"
        return model
    try:
        fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    except Exception as err:
        why = f"copy raised {type(err).__name__}: {first_line(err)}"
    else:
        why = agrees(model, fast, example)
        if not why:
            record["channels_last"] = "on"
            return fast
    record["channels_last"] = f"off: {why}"
    log.info("channels_last layout off (%s); using the model as it is", why)
    return model
