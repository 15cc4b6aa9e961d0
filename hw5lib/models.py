"""The classifier a checkpoint holds: a state_dict loaded into the HW3 ``Classifier`` or the user's
``--model`` class, or a whole pickled model checked against the stand-in it loaded as."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from model import Classifier

from .checkpoints import checkpoint_format, file_sha256, load_torchscript
from .data import Preprocess
from .errors import UserError
from .outputs import atomic_write_bytes
from .standins import StandIn
from .unpickling import Unpickled, first_line, full_unpickle, unpickle

_CONV_KEY = re.compile(r"^cnn\.(\d+)\.weight$")
_FC_KEY = re.compile(r"^fc\.(\d+)\.weight$")


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    classes: tuple[str, ...] | None  # names stored in the checkpoint, if any
    preprocess: Preprocess | None  # preprocessing stored in the checkpoint, if any
    architecture: dict  # Classifier keyword arguments, or what a pickled model was loaded as
    sha256: str


def checked_module(
    path: Path, unpickled: Unpickled, user: tuple[str, dict] | None = None
) -> tuple[nn.Module, dict]:
    """The unpickled model (out of its DataParallel) and its ``architecture`` record, after
    checking that a stand-in received the layers its ``forward`` uses: a model.py Classifier
    must have the module tree of a fresh one of the inferred widths and run, a torchvision
    stand-in must hold its parts, a ``--model`` class (``user``: spec, args) must match a fresh
    one. A one-line UserError otherwise."""
    model = unpickled.obj
    if isinstance(model, nn.DataParallel):  # saved from a multi-GPU run
        model = model.module
    assert isinstance(model, nn.Module)
    cls = type(model)
    loaded_as = f"{cls.__module__}.{cls.__qualname__}"
    pickled = next((n for n, c in unpickled.stand_ins.items() if c is cls), loaded_as)
    arch: dict = {"pickled_class": pickled, "loaded_as": loaded_as}
    arch["unpickler"] = unpickled.unpickler
    try:
        model.eval()
        if cls is Classifier:
            arch |= _check_classifier(model)
        elif isinstance(model, StandIn):
            _check_stand_ins(model)
        elif user is not None and pickled in unpickled.stand_ins:
            _check_same_tree(model, _construct(cls, user[1]), f"--model {user[0]}")
    except UserError as err:
        raise UserError(
            f"{path}: the pickled {pickled} does not load as {loaded_as}: {err}"
        ) from None
    except Exception as err:  # an attribute the stand-in needs is missing or of the wrong kind
        raise UserError(
            f"{path}: the pickled {pickled} is not a working {loaded_as}: {first_line(err)}"
        ) from None
    return model, arch


def _check_classifier(model: nn.Module) -> dict:
    args = infer_classifier_args(model.state_dict())
    if not args:
        raise UserError("it has no cnn.N / fc.N layers")
    with torch.device("meta"):  # only the structure is compared: no memory, no init
        fresh, args = model_py_classifier(args)
    _check_same_tree(model, fresh, "model.py's Classifier")
    if not args:  # the student's own class: the same tree is all there is to check
        return args
    side = args["input_size"]
    with torch.inference_mode():
        out = model(torch.zeros(1, args["in_channels"], side, side))
    if not isinstance(out, Tensor) or tuple(out.shape) != (1, args["num_classes"]):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserError(f"its forward returns {shape}, not (1, {args['num_classes']})")
    return args


def _check_stand_ins(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, StandIn) and (missing := module.missing_parts()):
            raise UserError(f"{name or 'the model'} has no {', '.join(missing)}")


def _check_same_tree(model: nn.Module, fresh: nn.Module, what: str) -> None:
    """Same module names, types and settings (ignoring ``inplace``) and the same tensor shapes."""
    got, want = _tree(model), _tree(fresh)
    for name in [*want, *(n for n in got if n not in want)]:
        label = name or "the model"
        if name not in got:
            raise UserError(f"it has no {label} ({what} has {want[name]})")
        if name not in want:
            raise UserError(f"its {label} ({got[name]}) is not in {what}")
        if got[name] != want[name]:
            raise UserError(f"its {label} is {got[name]} where {what} has {want[name]}")


def _tree(model: nn.Module) -> dict[str, str]:
    """Each module's ``Type(settings)`` and each parameter and buffer's shape, by name."""
    tree = {}
    for name, module in model.named_modules():
        tree[name] = f"{type(module).__name__}({_INPLACE.sub('', module.extra_repr())})"
    return tree | {k: f"a {tuple(v.shape)} tensor" for k, v in model.state_dict().items()}


_INPLACE = re.compile(r"(, )?inplace=(True|False)")  # in-place or not, the same function


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


def model_py_classifier(args: dict) -> tuple[nn.Module, dict]:
    """model.py's Classifier with the widths a checkpoint implies, and those arguments; or,
    where the student replaced it with their own class that takes no such arguments (the
    seed reports' HW3 nets), ``Classifier()`` as they wrote it, and no arguments."""
    try:
        return Classifier(**args), args
    except TypeError as err:
        if not args:
            raise UserError(f"model.py's Classifier() failed: {err}") from None
    try:
        return Classifier(), {}
    except TypeError as err:
        raise UserError(
            f"model.py's Classifier takes neither {sorted(args)} nor no arguments ({err}); "
            "pass --model path/to/file.py:ClassName --model-args '{...}'"
        ) from None


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
    return _construct(import_model_class(spec), args)


def _construct(cls: type[nn.Module], args: dict) -> nn.Module:
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
    """Load a checkpoint: a state_dict into the HW3 ``Classifier`` or into the user's
    ``file.py:Class`` (``model_spec``), TorchScript, or a whole pickled model, which loads
    weights-only into local stand-ins (``unpickle``) unless only ``trust_pickle`` can load it."""
    fmt = checkpoint_format(path)
    digest = file_sha256(path)
    if fmt == "torchscript":
        model = load_torchscript(path)
        return LoadedModel(model.eval(), None, None, {"torchscript": True}, digest)
    user_cls = import_model_class(model_spec) if model_spec else None
    unpickled = unpickle(path, fmt, trust_pickle=trust_pickle, user_cls=user_cls)
    if isinstance(unpickled.obj, nn.Module):
        user = (model_spec, dict(model_args or {})) if model_spec else None
        try:
            model, arch = checked_module(path, unpickled, user)
        except UserError:  # a stand-in that does not fit: the class itself may be importable
            if not (trust_pickle and unpickled.unpickler != "full" and unpickled.stand_ins):
                raise
            model, arch = checked_module(path, full_unpickle(path, user_cls), user)
        return LoadedModel(model.eval(), None, None, arch, digest)
    obj = unpickled.obj
    meta = obj.get("hw5", {}) if isinstance(obj, dict) else {}
    state = state_dict_of(obj)
    if user_cls is not None and model_spec:
        args = dict(model_args or {})
        model = _construct(user_cls, args)
        args = {"model": model_spec, "args": args}
    else:
        model, args = model_py_classifier(meta.get("architecture") or infer_classifier_args(state))
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
