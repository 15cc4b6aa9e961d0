"""Unpickling a checkpoint without running code from it: torch's weights-only unpickler with an
allow-list of torch.nn layers and local stand-ins matched by name; a full unpickle only by opt-in."""

from __future__ import annotations

import _compat_pickle
import io
import logging
import pickle
import pickletools
import re
import types
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import torch
from torch import nn

import model as model_py

from .errors import UserError
from .standins import TORCHVISION

log = logging.getLogger(__name__)


# torch.nn classes a whole-model pickle may name, allowed as themselves: unpickling one calls
# only its __new__ and Module.__setstate__, and every attribute it receives is itself something
# the weights-only unpickler allows. An explicit list, no wildcard. What else such a pickle names
# (collections.OrderedDict, builtins.set, torch._utils._rebuild_parameter and
# _rebuild_tensor_v2, torch.FloatStorage, ...) torch allows by default.
SAFE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
    nn.Identity,
    nn.Flatten,
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
    nn.LocalResponseNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softmax,
    nn.LogSoftmax,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.ZeroPad2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.DataParallel,  # unwrapped after loading
)


@dataclass(frozen=True)
class Unpickled:
    obj: object
    stand_ins: dict[str, type]  # pickled class name -> the local class it was loaded as
    unpickler: str  # "weights_only", "allowlist" (legacy whole models) or "full" (--trust-pickle)


def pickled_globals(path: Path, fmt: str) -> set[str]:
    """``module.name`` of every class or function the checkpoint's pickle names, found by
    pickletools, which only parses. Empty if it cannot parse (torch.load will say why)."""
    try:
        if fmt == "zip":
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                return _globals_in(io.BytesIO(zf.read(name)), pickles=1)
        with open(path, "rb") as f:  # magic number, protocol, sys_info, then the object
            return _globals_in(f, pickles=4)
    except Exception:  # a malformed pickle is torch.load's to report
        return set()


def _globals_in(stream: IO[bytes], *, pickles: int) -> set[str]:
    found: set[str] = set()
    for _ in range(pickles):
        ops = pickletools.genops(stream)
        found |= {str(arg).replace(" ", ".", 1) for op, arg, _ in ops if op.name == "GLOBAL"}
    return found


def stand_in_for(pickled: str, user_cls: type[nn.Module] | None = None) -> type[nn.Module] | None:
    """The local class a pickled class loads as, matched by name: the ``--model`` class of that
    name, a torchvision stand-in, or model.py's class of that name (``__main__.Classifier``,
    ``hw3.Classifier``: HW3's ``torch.save(model, path)`` from a script or notebook)."""
    module, _, name = pickled.rpartition(".")
    if module == "torch" or module.startswith("torch."):
        return None
    if user_cls is not None and name == user_cls.__name__:
        return user_cls
    if pickled in TORCHVISION:
        return TORCHVISION[pickled]
    cls = getattr(model_py, name, None)
    is_model = isinstance(cls, type) and issubclass(cls, nn.Module)
    return cls if is_model and cls.__module__ == model_py.__name__ else None


def unpickle(
    path: Path, fmt: str, *, trust_pickle: bool = False, user_cls: type[nn.Module] | None = None
) -> Unpickled:
    """Unpickling that runs no code from the file, with ``SAFE_LAYERS`` and stand-ins allowed
    under the names the file uses; anything else needs ``trust_pickle`` and a full unpickle."""
    names = pickled_globals(path, fmt)
    stand_ins = {n: cls for n in sorted(names) if (cls := stand_in_for(n, user_cls))}
    try:
        with _torch_errors(path):
            obj, how = _safe_load(path, fmt, stand_ins)
        return Unpickled(obj, stand_ins, how)
    except pickle.UnpicklingError as err:
        needs = _refused_global(str(err))
        if not trust_pickle:
            raise UserError(
                f"{path} is a pickled model that needs {needs}; unpickling that would run code "
                "from the file, so it is off by default: rerun with --trust-pickle only if you "
                "trust the file, or save model.state_dict() instead"
            ) from None
        log.info("%s needs %s: unpickling it in full (--trust-pickle)", path, needs)
    return full_unpickle(path, user_cls)


def _safe_load(path: Path, fmt: str, stand_ins: dict[str, type]) -> tuple[object, str]:
    allowed = [*SAFE_LAYERS, *((cls, n) for n, cls in stand_ins.items())]
    with torch.serialization.safe_globals(allowed):
        try:
            return _torch_load(path, weights_only=True), "weights_only"
        except pickle.UnpicklingError:
            if fmt != "legacy":
                raise
        # torch's weights-only unpickler refuses the ("module", class, source) references of a
        # legacy whole-model pickle; its rules, applied to Python's unpickler, read them.
        module = _pickle_module(_allowlist_unpickler())
        return _torch_load(path, weights_only=False, pickle_module=module), "allowlist"


class _AllowlistUnpickler(pickle._Unpickler):
    """Python's pure unpickler under the rules of ``torch.load(weights_only=True)``: globals only
    from ``allowed``, BUILD only on instances of allowed classes (not on a class itself, which
    would let a file rebind, say, ``Counter.__init__``)."""

    allowed: ClassVar[dict[str, Any]] = {}
    dispatch: ClassVar[dict[int, Callable]] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # Python 2 names
        full = f"{module}.{name}"
        if full not in self.allowed:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full} is not allowed")
        return self.allowed[full]

    def load_build(self) -> None:
        inst = self.stack[-2]  # below the state
        if not any(type(inst) is cls for cls in self.allowed.values()):
            raise pickle.UnpicklingError(f"BUILD of a {type(inst).__name__} is not allowed")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def _allowlist_unpickler() -> type[pickle.Unpickler]:
    """``_AllowlistUnpickler`` allowing what ``torch.load(weights_only=True)`` would, the
    ``safe_globals`` in force included (torch has no public getter for its default list)."""
    from torch import _weights_only_unpickler as wu

    allowed = {**wu._get_allowed_globals(), **wu._get_user_allowed_globals()}
    return type("Unpickler", (_AllowlistUnpickler,), {"allowed": allowed})


def _torch_load(path: Path, **kwargs: Any) -> object:
    with warnings.catch_warnings():  # the legacy format compares a class's source with its own
        warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
        return torch.load(path, map_location="cpu", **kwargs)


def _refused_global(message: str) -> str:
    """The class or function torch's weights-only unpickler refused, from its error message."""
    if m := re.search(r"GLOBAL (\S+)", message):
        return m.group(1)
    m = re.search(r"WeightsUnpickler error: (.+)", message)
    return m.group(1).strip() if m else "more than plain weights"


@contextmanager
def _torch_errors(path: Path) -> Iterator[None]:
    """torch.load's failures on a damaged file as one-line UserErrors; UnpicklingError passes."""
    try:
        yield
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        msg = str(err).partition("\n")[0] or type(err).__name__
        raise UserError(f"cannot read checkpoint {path}: {msg}") from None


def full_unpickle(path: Path, user_cls: type[nn.Module] | None) -> Unpickled:
    """Plain unpickling (runs code from the file); a class that cannot be imported, like
    ``__main__.Classifier`` of the training script, resolves through ``stand_in_for``."""
    resolved: dict[str, type] = {}

    def fallback(module: str, name: str) -> Any:
        pickled = f"{module}.{name}"
        cls = stand_in_for(pickled, user_cls)
        if cls is None:
            hint = "pip install torchvision, or pass" if module.startswith("torchvision") else ""
            raise UserError(
                f"{path} needs the class {pickled}, which is not defined here: "
                f"{hint or 'pass'} the file that defines it: --model path/to/file.py:{name}"
            )
        resolved[pickled] = cls
        return cls

    try:
        module = _pickle_module(_importing_unpickler(fallback))
        obj = _torch_load(path, weights_only=False, pickle_module=module)
    except UserError:
        raise
    except Exception as err:  # unpickling runs arbitrary code: any error can come out of it
        raise UserError(f"cannot unpickle {path}: {first_line(err)}") from None
    return Unpickled(obj, resolved, "full")


def _importing_unpickler(fallback: Callable[[str, str], Any]) -> type[pickle.Unpickler]:
    """Python's unpickler, asking ``fallback`` for the classes it cannot import, so no one has
    to add them to ``sys.modules['__main__']``."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                return fallback(module, name)

    return Unpickler


def _pickle_module(unpickler: type[pickle.Unpickler]) -> types.ModuleType:
    """A ``pickle_module`` for torch.load that unpickles with ``unpickler``."""

    def load(file: IO[bytes], **kwargs: Any) -> object:
        return unpickler(file, **kwargs).load()

    module = types.ModuleType("hw5_pickle")  # torch.load reads its __name__ (to spot dill)
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    return module


def first_line(err: BaseException) -> str:
    first = str(err).strip().partition("\n")[0]
    return f"{type(err).__name__}: {first}"
