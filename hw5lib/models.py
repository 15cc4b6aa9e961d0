"""Safe checkpoint loading and layer lookup (by the course's index into ``model.cnn`` or by name)."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import itertools
import logging
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from model import Classifier

from .data import Preprocess
from .errors import UserError
from .outputs import atomic_write_bytes

log = logging.getLogger(__name__)

_CONV_KEY = re.compile(r"^cnn\.(\d+)\.weight$")
_FC_KEY = re.compile(r"^fc\.(\d+)\.weight$")


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    classes: tuple[str, ...] | None  # names stored in the checkpoint, if any
    preprocess: Preprocess | None  # preprocessing stored in the checkpoint, if any
    architecture: dict  # how to rebuild it: Classifier keyword arguments
    sha256: str


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips holding ``constants.pkl``; torch.save zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") for n in zf.namelist())


def read_checkpoint(path: Path, *, trust_pickle: bool = False) -> object:
    """``torch.load`` with ``weights_only=True`` unless the user opted into unpickling."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if not trust_pickle and "weights_only" in str(err):
            raise UserError(
                f"{path} is a pickled object, not plain weights; unpickling runs code from the "
                "file, so it is off by default: rerun with --trust-pickle only if you trust it"
            ) from None
        raise UserError(f"cannot read checkpoint {path}: {err}") from None
    except ModuleNotFoundError as err:
        hint = " (pip install torchvision)" if err.name and "torchvision" in err.name else ""
        raise UserError(
            f"checkpoint {path} needs the module {err.name!r}, which is not installed{hint}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        msg = str(err).partition("\n")[0] or type(err).__name__
        raise UserError(f"cannot read checkpoint {path}: {msg}") from None


def state_dict_of(obj: object) -> dict[str, torch.Tensor]:
    """A bare state_dict, or the course's ``{"model_state_dict": ...}``."""
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            "checkpoint is neither a state_dict nor a dict with 'model_state_dict'; "
            "save it with torch.save(model.state_dict(), path)"
        )
    # torch.compile and DataParallel prefix every key; strip the known prefixes.
    return {re.sub(r"^(_orig_mod\.|module\.)+", "", k): v for k, v in obj.items()}


def infer_classifier_args(state: dict[str, torch.Tensor]) -> dict:
    """Rebuild ``Classifier`` keyword arguments from tensor shapes, so narrower or wider HW3-style
    variants load without extra flags. Unknown layouts fall back to the HW3 defaults and are then
    reported key by key by ``load_state_dict``."""
    convs = sorted((int(m.group(1)), v) for k, v in state.items() if (m := _CONV_KEY.match(k)))
    convs = [(i, w) for i, w in convs if w.dim() == 4]
    fcs = sorted((int(m.group(1)), v) for k, v in state.items() if (m := _FC_KEY.match(k)))
    if not convs or not fcs:
        return {}
    widths = [w.shape[0] for _, w in convs]
    flat = fcs[0][1].shape[1]
    side = max(1, round((flat / widths[-1]) ** 0.5))
    return {
        "widths": widths,
        "hidden": [w.shape[0] for _, w in fcs[:-1]],
        "num_classes": int(fcs[-1][1].shape[0]),
        "in_channels": int(convs[0][1].shape[1]),
        "input_size": int(side * 2 ** len(widths)),
    }


def load_into(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with every mismatch named in one line."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
                parts.append(f"{label}: {', '.join(items[:6])}{more}")
        raise UserError(
            f"checkpoint does not fit {type(model).__name__}: "
            + "; ".join(parts)
            + " - pass the architecture it was trained with: --model path/to/file.py:ClassName"
        )
    model.load_state_dict(state, strict=True)


def import_model_class(spec: str) -> type[nn.Module]:
    """``path/to/file.py:ClassName`` -> the class, imported from that file."""
    file, sep, name = spec.rpartition(":")
    path = Path(file)
    if not sep or not name or path.suffix != ".py":
        raise UserError(f"--model must look like path/to/file.py:ClassName, not {spec!r}")
    if not path.is_file():
        raise UserError(f"--model: {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"hw5_user_model_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses and pickling look the module up
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise UserError(f"--model: importing {path} failed: {type(err).__name__}: {err}") from None
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"--model: {path} defines no nn.Module subclass named {name!r}")
    return cls


def build_user_model(spec: str, args: dict) -> nn.Module:
    cls = import_model_class(spec)
    try:
        return cls(**args)
    except TypeError as err:
        raise UserError(
            f"--model: {cls.__name__}(**{args}) failed: {err}; see --model-args"
        ) from None


def load_classifier(
    path: Path,
    *,
    trust_pickle: bool = False,
    model_spec: str | None = None,
    model_args: dict | None = None,
) -> LoadedModel:
    """Load a checkpoint into the HW3 ``Classifier``, into the user's ``file.py:Class``
    (``model_spec``), as TorchScript, or as a whole pickled model (only if trusted)."""
    if is_torchscript(path):
        with warnings.catch_warnings():  # torch 2.13 calls TorchScript deprecated; it still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")
        return LoadedModel(model.eval(), None, None, {"torchscript": True}, file_sha256(path))
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    digest = file_sha256(path)
    if isinstance(obj, nn.Module):
        return LoadedModel(obj.eval(), None, None, {"pickled": type(obj).__name__}, digest)
    meta = obj.get("hw5", {}) if isinstance(obj, dict) else {}
    state = state_dict_of(obj)
    if model_spec:
        args = dict(model_args or {})
        model = build_user_model(model_spec, args)
        args = {"model": model_spec, "args": args}
    else:
        args = meta.get("architecture") or infer_classifier_args(state)
        model = Classifier(**args)
    load_into(model, state)
    pre = Preprocess.from_dict(meta["preprocess"]) if "preprocess" in meta else None
    classes = tuple(meta["classes"]) if "classes" in meta else None
    return LoadedModel(model.eval(), classes, pre, dict(args), digest)


def save_checkpoint(
    path: Path, model: nn.Module, architecture: dict, preprocess: Preprocess, classes: list[str]
) -> None:
    """The course's ``{"model_state_dict": ...}`` plus what hw5 needs to explain it correctly."""
    buf = io.BytesIO()
    payload = {
        "model_state_dict": model.state_dict(),
        "hw5": {
            "architecture": architecture,
            "preprocess": preprocess.to_dict(),
            "classes": list(classes),
        },
    }
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


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
    finally:
        for h in handles:
            h.remove()
    return [(n, type(m).__name__, shapes.get(n, "-")) for n, m in model.named_modules() if n]


def as_module(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """A layer given as a module of ``model`` or as anything ``resolve_layer`` accepts."""
    return layer if isinstance(layer, nn.Module) else resolve_layer(model, layer)[1]


def gradient_copy(model: nn.Module, example: Tensor, *, tolerance: float = 1e-4) -> nn.Module:
    """A copy of ``model`` for input-gradient methods (saliency, SmoothGrad, Grad x Input, IG):
    each eval-mode BatchNorm2d that directly follows a Conv2d in an nn.Sequential is folded into
    that conv, which leaves the function x -> logits unchanged and saves the BatchNorm's forward
    and backward passes (~1.2x the gradient rate of the HW3 Classifier on a laptop CPU). Every
    other layer's activation, and its gradient, is the same too, so filter ascent and the CAMs
    use the copy at every layer but the folded convs and BatchNorms (the copy's
    ``folded_layers``). The model itself if nothing folds or the outputs disagree."""
    if isinstance(model, torch.jit.ScriptModule) or model.training:
        return model
    fast = copy.deepcopy(model)
    folded: list[str] = []
    for seq_name, seq in list(fast.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(kids):
            if _foldable(conv, bn):
                setattr(seq, conv_name, fuse_conv_bn_eval(conv, bn))  # type: ignore[arg-type]
                setattr(seq, bn_name, nn.Identity())
                folded += [".".join(filter(None, (seq_name, n))) for n in (conv_name, bn_name)]
    if not folded:
        return model
    fast.folded_layers = frozenset(folded)  # their activations differ from the model's
    if _channels_last(model):  # the fused weights come back in the default layout
        fast = fast.to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        want, got = model(example).softmax(1), fast(example).softmax(1)
    if float((got - want).abs().max()) > tolerance:
        log.info("BatchNorm-folded copy disagrees with the model; using the model as is")
        return model
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


def inference_copy(model: nn.Module, example: Tensor, *, tolerance: float = 1e-4) -> nn.Module:
    """A faster copy of ``model`` for forward-only work (LIME, deletion/insertion, accuracy):
    traced, frozen and optimized for inference (BatchNorm folded into the conv, oneDNN
    layouts), about 2x a plain forward of the HW3 Classifier on a laptop CPU. Used only if its
    softmax output matches the model's on ``example`` within ``tolerance``; else the model itself.
    """
    if example.device.type != "cpu":  # the oneDNN passes are for the CPU
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
        log.info("no optimized inference copy (%s); using the model as is", err)
        return model
    if got.shape != want.shape or float((got - want).abs().max()) > tolerance:
        log.info("optimized inference copy disagrees with the model; using the model as is")
        return model
    return fast
