"""Pickling a model as a student's training script (``__main__``) or torchvision would have."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import pytest
import torch


def save_as(path: Path, obj: object, names: dict[type, str], **save_kwargs) -> Path:
    """``torch.save(obj, path)`` with each class pickled under the given ``module.Name``, as if
    a training script or torchvision had defined it there. Nothing stays registered."""
    qualnames = {cls: cls.__qualname__ for cls in names}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for cls, full in names.items():
                module, _, name = full.rpartition(".")
                mp.setattr(cls, "__module__", module)
                cls.__qualname__ = name  # not in the class __dict__: monkeypatch cannot undo it
                parts = module.split(".")
                for i in range(1, len(parts) + 1):  # torchvision, torchvision.models, ...
                    package = ".".join(parts[:i])
                    if package not in sys.modules:
                        mp.setitem(sys.modules, package, types.ModuleType(package))
                mp.setattr(sys.modules[module], name, cls, raising=False)
            with warnings.catch_warnings():  # the legacy format wants the source of a class
                warnings.simplefilter("ignore", UserWarning)
                torch.save(obj, path, **save_kwargs)
    finally:
        for cls, qualname in qualnames.items():
            cls.__qualname__ = qualname
    return path
