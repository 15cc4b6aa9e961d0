"""``--model``: the user's model class or factory (``file.py:Name``, ``package.module:name``)
imported and built with ``--model-args``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from hw5lib.errors import UserError
from hw5lib.model.tv import import_torchvision
from hw5lib.model.unpickling import first_line


@dataclass(frozen=True)
class UserModel:
    """``--model``: what was asked for, and a freshly built instance."""

    spec: str
    args: dict | list
    model: nn.Module


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
