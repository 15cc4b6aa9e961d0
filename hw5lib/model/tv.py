"""Importing torchvision where its C++ ops cannot load.

PyPI's torchvision wheel is built against the CUDA torch; beside the CPU torch this project
installs, its ``_C`` extension fails to load (which torchvision tolerates), but its
``_meta_registrations`` then registers fake kernels for ``torchvision::nms`` and ``::qnms``
without checking, and ``import torchvision`` raises "operator torchvision::nms does not exist".
hw5 uses only torchvision's model classes (pure Python), so it declares those two operator
schemas itself when the extension is missing: the import then succeeds, and the detection ops
(which hw5 never calls) still say they are unavailable if called.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import types

import torch

from hw5lib.errors import UserError

log = logging.getLogger(__name__)

VERSION = "0.28.0"  # the build matching torch==2.13.0 (requirements.txt)

# Operators torchvision registers fake kernels for without checking that its extension loaded.
_UNCHECKED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARIES: list[torch.library.Library] = []  # kept alive: dropping one undefines its ops


@functools.cache
def import_torchvision() -> types.ModuleType:
    """``torchvision``, imported even where its C++ extension does not match this torch; a
    one-line UserError where it is not installed."""
    try:
        return importlib.import_module("torchvision")
    except ImportError:
        raise UserError(
            f"this needs torchvision: pip install torchvision=={VERSION} (with torch==2.13.0 "
            "in the same command, so that pip keeps the CPU build)"
        ) from None
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    log.info("torchvision's C++ ops do not load with this torch; importing its models only")
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # the half-imported package
    if not hasattr(torch.ops.torchvision, "nms"):
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _UNCHECKED_OPS:
            lib.define(schema)
        _LIBRARIES.append(lib)
    return importlib.import_module("torchvision")
