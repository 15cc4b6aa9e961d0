"""Safe checkpoint loading and layer lookup (by the course's index into ``model.cnn`` or by name)."""

from __future__ import annotations

import _compat_pickle
import copy
import hashlib
import importlib.util
import io
import itertools
import logging
import pickle
import pickletools
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

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import model as model_py
from model import Classifier

from .data import Preprocess
from .errors import UserError
from .outputs import atomic_write_bytes
from .standins import TORCHVISION, StandIn

log = logging.getLogger(__name__)

_CONV_KEY = re.compile(r"^cnn\.(\d+)\.weight$")
_FC_KEY = re.compile(r"^fc\.(\d+)\.weight$")


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    classes: tuple[str, ...] | None  # names stored in the checkpoint, if any
    preprocess: Preprocess | None  # preprocessing stored in the checkpoint, if any
    architecture: dict  # Classifier keyword arguments, or what a pickled model was loaded as
    sha256: str


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# torch.save's zip archive, and the magic number that opens its legacy format (a raw pickle).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = torch.serialization.MAGIC_NUMBER.to_bytes(10, "little")
_PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")  # the byte after the PROTO opcode 0x80

# Leading bytes of files mistaken for checkpoints -> what the error calls them.
_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras?)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
)


def describe_bytes(head: bytes) -> str:
    """What a file that is not a checkpoint looks like, from its first bytes."""
    if not head:
        return "empty"
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if head[8:10] == b'{"':  # safetensors: an 8-byte header length, then the JSON header
        return "a safetensors file"
    text = _as_text(head)
    if text is None:
        return "binary data of no format hw5 knows"
    start = text.lstrip().lower()
    if start.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the file itself: run git lfs pull"
    if start.startswith(("<!doctype html", "<html")):
        return "an HTML page: a download link that needs sign-in or sharing?"
    return "a text file"


def _as_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # more than a character cut off at the end of the sample
            return None
        text = head[: err.start].decode("utf-8")
    return text if all(c.isprintable() or c in "\t\n\r\f" for c in text) else None


def checkpoint_format(path: Path) -> str:
    """``"zip"`` (torch.save), ``"legacy"`` (torch.save before 1.6 or with
    ``_use_new_zipfile_serialization=False``) or ``"torchscript"``, decided from the bytes before
    anything is unpickled; any other file is a UserError saying what it looks like."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_ZIP_MAGIC):
        return _zip_format(path)
    if head[:1] == b"\x80" and head[1:2] in _PICKLE_PROTOCOLS:
        if _LEGACY_MAGIC in head[:32]:
            return "legacy"
        raise UserError(
            f"{path} is a Python pickle that torch.save did not write; "
            "save the model with torch.save(model.state_dict(), path)"
        )
    raise UserError(f"{path} is not a PyTorch checkpoint ({describe_bytes(head)})")


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise UserError(
            f"{path} is not a PyTorch checkpoint (a damaged or truncated zip archive)"
        ) from None
    if any(n.endswith("/constants.pkl") for n in names):  # TorchScript zips hold data.pkl too
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "zip"
    what = "a NumPy .npz archive" if names and all(n.endswith(".npy") for n in names) else ""
    raise UserError(
        f"{path} is not a PyTorch checkpoint ({what or 'a zip archive without torch.save data'})"
    )


def read_checkpoint(path: Path, *, trust_pickle: bool = False) -> object:
    """The object in a checkpoint file: a state_dict, a dict holding one, or a whole model
    (weights-only with local stand-ins; fully unpickled only if the user opted in)."""
    fmt = checkpoint_format(path)
    if fmt == "torchscript":
        return _load_torchscript(path)
    return unpickle(path, fmt, trust_pickle=trust_pickle).obj


def _load_torchscript(path: Path) -> nn.Module:
    with warnings.catch_warnings():  # torch 2.13 calls TorchScript deprecated; it still loads
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as err:
            msg = str(err).partition("\n")[0]
            raise UserError(f"cannot read TorchScript checkpoint {path}: {msg}") from None


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
    return _full_unpickle(path, user_cls)


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


def _full_unpickle(path: Path, user_cls: type[nn.Module] | None) -> Unpickled:
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
        raise UserError(f"cannot unpickle {path}: {_first_line(err)}") from None
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
            f"{path}: the pickled {pickled} is not a working {loaded_as}: {_first_line(err)}"
        ) from None
    return model, arch


def _check_classifier(model: nn.Module) -> dict:
    args = infer_classifier_args(model.state_dict())
    if not args:
        raise UserError("it has no cnn.N / fc.N layers")
    with torch.device("meta"):  # only the structure is compared: no memory, no init
        fresh = Classifier(**args)
    _check_same_tree(model, fresh, "model.py's Classifier")
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


def _first_line(err: BaseException) -> str:
    first = str(err).strip().partition("\n")[0]
    return f"{type(err).__name__}: {first}"


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
        model = _load_torchscript(path)
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
            model, arch = checked_module(path, _full_unpickle(path, user_cls), user)
        return LoadedModel(model.eval(), None, None, arch, digest)
    obj = unpickled.obj
    meta = obj.get("hw5", {}) if isinstance(obj, dict) else {}
    state = state_dict_of(obj)
    if user_cls is not None and model_spec:
        args = dict(model_args or {})
        model = _construct(user_cls, args)
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
