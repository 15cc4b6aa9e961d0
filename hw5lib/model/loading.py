"""The classifier a checkpoint holds: a state_dict (found in whatever container holds it) loaded
into the HW3 ``Classifier`` or the user's ``--model`` class or factory, or a whole pickled model
checked against the class it loaded as."""

from __future__ import annotations

import importlib
import importlib.util
import io
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from hw5lib.errors import UserError
from hw5lib.model.checkpoints import checkpoint_format, file_sha256, load_torchscript
from hw5lib.model.containers import find_state_dict, module_in
from hw5lib.model.preprocess import Preprocess
from hw5lib.model.tv import import_torchvision
from hw5lib.model.unpickling import Unpickled, first_line, full_unpickle, is_students, unpickle
from hw5lib.report.outputs import atomic_write_bytes
from model import Classifier

log = logging.getLogger(__name__)

_CONV_KEY = re.compile(r"^cnn\.(\d+)\.weight$")
_FC_KEY = re.compile(r"^fc\.(\d+)\.weight$")


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    classes: tuple[str, ...] | None  # names stored in the checkpoint, if any
    preprocess: Preprocess | None  # preprocessing stored in the checkpoint, if any
    # Classifier keyword arguments, or what a pickled model was loaded as; and where they apply:
    # state_dict_key / stripped_prefix (containers.Found.record), model_key (a whole model in a
    # dict), non_finite_weights (names of NaN/inf parameters and buffers). The manifest's
    # model.architecture.
    architecture: dict
    sha256: str


@dataclass(frozen=True)
class UserModel:
    """``--model``: what was asked for, and a freshly built instance."""

    spec: str
    args: dict | list
    model: nn.Module


def checked_module(
    path: Path, unpickled: Unpickled, user: UserModel | None = None
) -> tuple[nn.Module, dict]:
    """The unpickled model (out of its DataParallel) and its ``architecture`` record, after
    checking that it is what its class's ``forward`` expects: a model.py Classifier must have
    the module tree of a fresh one of the inferred widths and run, a ``--model`` class must
    match the freshly built one, a torchvision model must run on a shape-only input. A
    one-line UserError naming the pickled class otherwise."""
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
        if user is not None and cls is type(user.model):
            _check_same_tree(model, user.model, f"--model {user.spec}")
        elif cls is Classifier:
            arch |= _check_classifier(model)
        elif cls.__module__.startswith("torchvision."):
            _check_forward_shapes(model)
    except UserError as err:
        raise UserError(
            f"{path}: the pickled {pickled} does not load as {loaded_as}: {err}{_hint(pickled)}"
        ) from None
    except Exception as err:  # an attribute its forward needs is missing or of the wrong kind
        raise UserError(
            f"{path}: the pickled {pickled} is not a working {loaded_as}: {first_line(err)}"
            + _hint(pickled)
        ) from None
    return model, arch


def _hint(pickled: str) -> str:
    if not is_students(pickled):
        return ""
    name = pickled.rpartition(".")[2]
    return (
        f"; pass the file that defines it (--model path/to/file.py:{name}), or rerun with "
        "--trust-pickle only if you trust the file"
    )


def _check_forward_shapes(
    model: nn.Module, side: int = 224, want: tuple[int, ...] | None = None
) -> None:
    """A forward on shape-only (meta) tensors: every attribute ``forward`` uses must be there
    (and the output of shape ``want``), at no cost in memory or time."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    state = {k: torch.empty_like(v, device="meta") for k, v in model.state_dict().items()}
    x = torch.zeros(1, channels, side, side, device="meta")
    with torch.inference_mode():
        out = torch.func.functional_call(model, state, (x,))
    if want is not None and (not isinstance(out, Tensor) or tuple(out.shape) != want):
        raise UserError(f"its forward returns {getattr(out, 'shape', type(out))}, not {want}")


def _check_classifier(model: nn.Module) -> dict:
    args = infer_classifier_args(model.state_dict())
    with torch.device("meta"):  # only the structure is compared: no memory, no init
        fresh, args = model_py_classifier(args)
    try:
        _check_same_tree(model, fresh, "model.py's Classifier")
    except UserError:
        if (own := _own_layers_in_the_template(model, fresh)) is None:
            raise
        return own
    if not args:  # the student's own class: the same tree is all there is to check
        return args
    side = args["input_size"]
    with torch.inference_mode():
        out = model(torch.zeros(1, args["in_channels"], side, side))
    if not isinstance(out, Tensor) or tuple(out.shape) != (1, args["num_classes"]):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserError(f"its forward returns {shape}, not (1, {args['num_classes']})")
    return args


# Input sides a probe tries, the HW3 sample's first: one whose flattened cnn output is what the
# first Linear takes is the side the student trained at (or one pooling to the same size).
PROBE_SIDES = (128, 224, 64, 48, 32, 96, 192, 256, 300, 160, 112, 44, 40, 28)


def _own_layers_in_the_template(model: nn.Module, fresh: nn.Module) -> dict | None:
    """The HW3 template with the student's own layers: the same children as model.py's
    Classifier (``cnn``, ``fc``), each an ``nn.Sequential`` of torch.nn layers only, so
    model.py's forward (``fc(cnn(x).flatten(1))``, the template's ``view(N, -1)``) is theirs.
    Its architecture record where a shape-only forward at some side gives (1, classes); None
    where it is not that template."""
    children = dict(model.named_children())
    if children.keys() != dict(fresh.named_children()).keys():
        return None
    if not all(type(c) is nn.Sequential for c in children.values()):
        return None
    if any(
        not type(m).__module__.startswith("torch.nn.") for m in model.modules() if m is not model
    ):
        return None
    if next(model.named_parameters(recurse=False), None) is not None:
        return None
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not linears or not convs:
        return None
    classes, channels = linears[-1].out_features, convs[0].in_channels
    for side in PROBE_SIDES:
        try:
            _check_forward_shapes(model, side, want=(1, classes))
        except Exception:  # a side the layers do not fit: the next one
            continue
        log.info("the pickled model has model.py's cnn/fc layout with its own layers")
        return {
            "forward": "model.py's Classifier: fc(cnn(x).flatten(1))",
            "num_classes": classes,
            "in_channels": channels,
            "input_size": side,
        }
    return None


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
            + " - pass the architecture it was trained with: --model path/to/file.py:ClassName, "
            "or the function that builds it (file.py:get_model, torchvision.models:resnet18) "
            "with --model-args"
        )
    model.load_state_dict(state, strict=True)


def import_model_builder(spec: str) -> Callable[..., object]:
    """``path/to/file.py:NAME`` or ``package.module:NAME`` -> the class or function NAME, a
    builder of the model (a class, or a factory like ``get_vgg_model`` or ``resnet18``)."""
    where, sep, name = spec.rpartition(":")
    if not sep or not name or not where:
        raise UserError(
            "--model must look like path/to/file.py:ClassName (or :function) or "
            f"package.module:function, not {spec!r}"
        )
    module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
    builder = getattr(module, name, None)
    if not callable(builder):
        raise UserError(
            f"--model: {where} defines no nn.Module subclass or function named {name!r}"
        )
    return builder


def _import_file(path: Path) -> object:
    if not path.is_file():
        raise UserError(f"--model: {path} does not exist")
    if "torchvision" in path.read_text(errors="replace"):  # its import needs hw5's care
        import_torchvision()
    module_spec = importlib.util.spec_from_file_location(f"hw5_user_model_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses and pickling look the module up
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise UserError(f"--model: importing {path} failed: {type(err).__name__}: {err}") from None
    return module


def _import_module(name: str) -> object:
    if name == "torchvision" or name.startswith("torchvision."):
        import_torchvision()
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise UserError(f"--model: cannot import {name}: {err}") from None


def build_user_model(spec: str, args: dict | list | None = None) -> UserModel:
    """``--model`` built with ``--model-args`` (a JSON object: keyword arguments; a list:
    positional ones); whatever it returns must be an nn.Module."""
    builder = import_model_builder(spec)
    args = args if args is not None else {}
    name = getattr(builder, "__name__", spec)
    shown = f"{name}(**{args})" if isinstance(args, dict) else f"{name}(*{args})"
    try:
        model = builder(**args) if isinstance(args, dict) else builder(*args)
    except TypeError as err:
        raise UserError(f"--model: {shown} failed: {err}; see --model-args") from None
    except Exception as err:
        raise UserError(f"--model: {shown} raised {first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model: {shown} returned a {type(model).__name__}, not an nn.Module")
    return UserModel(spec, args, model)


def load_classifier(
    path: Path,
    *,
    trust_pickle: bool = False,
    model_spec: str | None = None,
    model_args: dict | list | None = None,
    checkpoint_key: str | None = None,
) -> LoadedModel:
    """Load a checkpoint: a state_dict, in whatever container holds it, into the HW3
    ``Classifier`` or into the user's ``--model`` (``model_spec``), TorchScript, or a whole
    pickled model, which loads weights-only (``unpickle``) unless only ``trust_pickle`` can
    load it. Non-finite weights are named in one warning and in ``architecture``."""
    fmt = checkpoint_format(path)
    digest = file_sha256(path)
    if fmt == "torchscript":
        model = load_torchscript(path)
        return LoadedModel(model.eval(), None, None, {"torchscript": True}, digest)
    user = build_user_model(model_spec, model_args) if model_spec else None
    built = user.model if user else None
    unpickled = unpickle(path, fmt, trust_pickle=trust_pickle, user=built)
    held = module_in(unpickled.obj)  # {"model": <whole model>, "optimizer": ...}
    if held is not None:
        unpickled = replace(unpickled, obj=held[1])
    if isinstance(unpickled.obj, nn.Module):
        try:
            model, arch = checked_module(path, unpickled, user)
        except UserError:  # a class that does not fit: the file's own class may be importable
            if not (trust_pickle and unpickled.unpickler != "full" and unpickled.stand_ins):
                raise
            full = full_unpickle(path, built)
            if held is not None:
                full = replace(full, obj=module_in(full.obj)[1])  # type: ignore[index]
            model, arch = checked_module(path, full, user)
        if held is not None and held[0] is not None:
            arch["model_key"] = held[0]
        return _loaded(model, None, None, arch, digest)
    obj = unpickled.obj
    meta = obj.get("hw5", {}) if isinstance(obj, dict) else {}
    recorded = meta.get("architecture") if isinstance(meta, dict) else None
    if user is not None:
        found = find_state_dict(obj, lambda s: _fits(user.model, s), checkpoint_key)
        model, args = user.model, {"model": user.spec, "args": user.args}
    else:
        found = find_state_dict(obj, lambda s: _fits_classifier(s, recorded), checkpoint_key)
        model, args = model_py_classifier(recorded or infer_classifier_args(found.state))
    load_into(model, found.state)
    pre = Preprocess.from_dict(meta["preprocess"]) if "preprocess" in meta else None
    classes = tuple(meta["classes"]) if "classes" in meta else None
    return _loaded(model, classes, pre, dict(args) | found.record(), digest)


def _loaded(
    model: nn.Module,
    classes: tuple[str, ...] | None,
    pre: Preprocess | None,
    arch: dict,
    digest: str,
) -> LoadedModel:
    """The LoadedModel, its non-finite weights named once (log warning and ``architecture``)."""
    bad = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        more = f" (+{len(bad) - 8} more)" if len(bad) > 8 else ""
        log.warning(
            "the checkpoint has non-finite weights in %s%s: every figure of this model will "
            'say "not finite"',
            ", ".join(bad[:8]),
            more,
        )
        arch = arch | {"non_finite_weights": bad}
    return LoadedModel(model.eval(), classes, pre, arch, digest)


def _fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """The same keys, each tensor of the same shape."""
    own = model.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == v.shape for k, v in state.items())


def _fits_classifier(state: dict[str, torch.Tensor], recorded: dict | None) -> bool:
    """Whether ``state`` fits model.py's Classifier of the widths recorded or inferred."""
    args = recorded or infer_classifier_args(state)
    try:
        with torch.device("meta"):  # only the shapes are compared: no memory, no init
            model, _ = model_py_classifier(args)
    except UserError:
        return False
    return _fits(model, state)


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
