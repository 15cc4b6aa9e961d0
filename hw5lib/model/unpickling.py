"""Unpickling a checkpoint without running code from it: torch's weights-only unpickler with an
allow-list of every torch.nn layer, torchvision's model classes, numpy scalars, and the student's
own classes mapped to model.py's or ``--model``'s; a full unpickle only by opt-in."""

from __future__ import annotations

import _compat_pickle
import functools
import importlib
import io
import logging
import pickle
import pickletools
import pkgutil
import re
import sys
import types
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import torch
from torch import nn

import model as model_py
from hw5lib.errors import UserError
from hw5lib.model.tv import VERSION as TORCHVISION_VERSION
from hw5lib.model.tv import import_torchvision

log = logging.getLogger(__name__)


@functools.cache
def torch_nn_classes() -> tuple[type[nn.Module], ...]:
    """Every module class torch.nn defines (each ``torch.nn.modules.*`` file's, and
    DataParallel), allowed as themselves: unpickling one calls only its ``__new__`` and
    ``Module.__setstate__``, and every attribute it receives is itself something the
    weights-only unpickler allows. Computed from torch.nn, so a layer torch adds is allowed too;
    only classes torch.nn itself defines, never a subclass defined elsewhere."""
    classes: set[type[nn.Module]] = {nn.DataParallel}  # unwrapped after loading
    for info in pkgutil.iter_modules(nn.modules.__path__, "torch.nn.modules."):
        module = importlib.import_module(info.name)
        classes |= {
            v
            for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == info.name
        }
    return tuple(sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}"))


def numpy_scalar_globals() -> list[Any]:
    """What a pickled numpy scalar (an ``"acc": np.float64(0.9)`` beside the weights) names:
    numpy's ``scalar(dtype, bytes)`` and ``dtype``, which build a number and nothing else."""
    dtypes = {type(np.dtype(c)) for c in np.typecodes["All"] if c not in "OMmV"}  # no objects
    return [np.float64(0).__reduce__()[0], np.dtype, *sorted(dtypes, key=str)]


@dataclass(frozen=True)
class Unpickled:
    obj: object
    stand_ins: dict[str, type]  # pickled name -> the class it loaded as, where not its own
    unpickler: str  # "weights_only", "allowlist" (legacy whole models) or "full" (--trust-pickle)


def pickled_globals(path: Path, fmt: str) -> list[str]:
    """``module.name`` of every class or function the checkpoint's pickle names, in the order it
    names them, found by pickletools, which only parses. Empty if it cannot parse (torch.load
    will say why)."""
    try:
        if fmt == "zip":
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                return _globals_in(io.BytesIO(zf.read(name)), pickles=1)
        with open(path, "rb") as f:  # magic number, protocol, sys_info, then the object
            return _globals_in(f, pickles=4)
    except Exception:  # a malformed pickle is torch.load's to report
        return []


def _globals_in(stream: IO[bytes], *, pickles: int) -> list[str]:
    """GLOBAL's names (protocols 0-3, torch.save's default), and STACK_GLOBAL's (protocol 4+,
    ``pickle_protocol=4``): the two strings pushed last, directly or from the memo."""
    found: dict[str, None] = {}
    for _ in range(pickles):
        strings: list[str] = []
        memo: dict[int, object] = {}
        last: object = None
        for op, arg, _ in pickletools.genops(stream):
            if op.name == "GLOBAL":
                found.setdefault(str(arg).replace(" ", ".", 1))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.setdefault(f"{strings[-2]}.{strings[-1]}")
            elif op.name == "MEMOIZE":
                memo[len(memo)] = last
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = last
            elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(
                memo.get(int(arg)), str
            ):
                strings.append(str(memo[int(arg)]))
            last = arg if isinstance(arg, str) and "UNICODE" in op.name else None
            if last is not None:
                strings.append(str(last))
    return list(found)


# Packages whose names in a pickle are never a student's model class.
_NOT_STUDENTS = frozenset({"torch", "torchvision", "numpy", "__builtin__", "copy_reg"})


def is_students(pickled: str) -> bool:
    """Whether a pickled name can be a student's own class (``__main__.Net``, ``hw3.MyCNN``):
    not torch's, torchvision's or numpy's, not the standard library's (``posix.system``)."""
    top = pickled.partition(".")[0]
    return top not in _NOT_STUDENTS and top not in sys.stdlib_module_names


def load_as(names: list[str], user: nn.Module | None = None) -> dict[str, type[nn.Module]]:
    """The class each pickled student or torchvision class loads as. The first student class the
    pickle names is the model itself: it loads as the ``--model`` class (``user``, built), or
    else as model.py's class of that name or its ``Classifier``, and is then checked against a
    fresh one. Other student classes (blocks) load as the class of that name in the ``--model``
    file or model.py. torchvision's load as themselves. Anything else is left for torch to
    refuse."""
    students = [n for n in names if is_students(n)]
    found = {n: cls for n in names if n.startswith("torchvision.") and (cls := _torchvision(n))}
    for i, pickled in enumerate(students):
        if cls := _students_class(pickled, user, top=i == 0):
            found[pickled] = cls
    return found


def _students_class(pickled: str, user: nn.Module | None, *, top: bool) -> type[nn.Module] | None:
    name = pickled.rpartition(".")[2]
    if user is not None:
        if top:
            return type(user)
        module = sys.modules.get(type(user).__module__)
        classes = {type(m).__name__: type(m) for m in user.modules()}
        cls = classes.get(name, getattr(module, name, None))
        return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None
    cls = getattr(model_py, name, None)
    if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == "model":
        return cls
    return model_py.Classifier if top else None


def _torchvision(pickled: str) -> type[nn.Module] | None:
    """torchvision's own class of that name (``torchvision.models.resnet.ResNet``), if it has
    one: only modules torchvision has imported itself are looked in, nothing is imported by
    name from the file."""
    import_torchvision()
    module, _, name = pickled.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    is_model = isinstance(cls, type) and issubclass(cls, nn.Module)
    return cls if is_model and cls.__module__.startswith("torchvision.") else None


def unpickle(
    path: Path, fmt: str, *, trust_pickle: bool = False, user: nn.Module | None = None
) -> Unpickled:
    """Unpickling that runs no code from the file, with every torch.nn layer, torchvision's
    models, numpy scalars and ``load_as``'s classes allowed under the names the file uses;
    anything else needs ``trust_pickle`` and a full unpickle."""
    names = pickled_globals(path, fmt)
    if any(n.startswith("torchvision.") for n in names) and not trust_pickle:
        import_torchvision()  # its absence is one line, before torch names a class it needs
    stand_ins = load_as(names, user)
    try:
        with _torch_errors(path):
            obj, how = _safe_load(path, fmt, stand_ins)
        return Unpickled(obj, {n: c for n, c in stand_ins.items() if _renamed(n, c)}, how)
    except pickle.UnpicklingError as err:
        needs = _refused_global(str(err))
        if not trust_pickle:
            top = next((n for n in names if is_students(n)), needs)
            raise UserError(_refusal(path, needs, top)) from None
        log.info("%s needs %s: unpickling it in full (--trust-pickle)", path, needs)
    return full_unpickle(path, user)


def _renamed(pickled: str, cls: type) -> bool:
    return pickled != f"{cls.__module__}.{cls.__qualname__}"


def _refusal(path: Path, needs: str, top: str) -> str:
    """The one line refusing a pickle that names ``needs`` (``top``: its model's class)."""
    if is_students(needs) and needs.rpartition(".")[2][:1].isupper():  # a class of theirs
        name = top.rpartition(".")[2]
        return (
            f"{path} is a pickled model that needs the class {needs}, which hw5 cannot load "
            f"without running code from the file: pass the file that defines it (--model "
            f"path/to/file.py:{name}), or rerun with --trust-pickle only if you trust the file, "
            "or save model.state_dict() instead"
        )
    return (
        f"{path} is a pickled model that needs {needs}; unpickling that would run code "
        "from the file, so it is off by default: rerun with --trust-pickle only if you "
        "trust the file, or save model.state_dict() instead"
    )


def _safe_load(path: Path, fmt: str, stand_ins: dict[str, type]) -> tuple[object, str]:
    allowed = [*torch_nn_classes(), *numpy_scalar_globals()]
    allowed += [(cls, n) for n, cls in stand_ins.items()]  # under the name the file uses
    with torch.serialization.safe_globals(allowed):
        try:
            return _torch_load(path, weights_only=True), "weights_only"
        except pickle.UnpicklingError as err:
            if fmt != "legacy" and "Unsupported operand" not in str(err):
                raise
        # torch's weights-only unpickler refuses the ("module", class, source) references of a
        # legacy whole-model pickle, and protocol 4's FRAME opcode (pickle_protocol=4); its
        # rules, applied to Python's unpickler, read them.
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
        warnings.filterwarnings("ignore", "Detected pickle protocol")  # read by our unpickler
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
    except (RuntimeError, EOFError, OSError, ValueError, TypeError) as err:
        msg = str(err).partition("\n")[0] or type(err).__name__
        raise UserError(f"cannot read checkpoint {path}: {msg}") from None


def full_unpickle(path: Path, user: nn.Module | None) -> Unpickled:
    """Plain unpickling (runs code from the file); a class that cannot be imported, like
    ``__main__.Classifier`` of the training script, resolves through ``load_as``."""
    stand_ins = load_as(pickled_globals(path, _format_of(path)), user)
    resolved: dict[str, type] = {}

    def fallback(module: str, name: str) -> Any:
        pickled = f"{module}.{name}"
        cls = stand_ins.get(pickled)
        if cls is None:
            hint = (
                f"pip install torchvision=={TORCHVISION_VERSION}, or pass"
                if module.startswith("torchvision")
                else ""
            )
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


def _format_of(path: Path) -> str:
    return "zip" if zipfile.is_zipfile(path) else "legacy"


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
    vars(module).update(Unpickler=unpickler, load=load)
    return module


def first_line(err: BaseException) -> str:
    first = str(err).strip().partition("\n")[0]
    return f"{type(err).__name__}: {first}"
