"""The classifier a checkpoint holds: a state_dict (found in whatever container holds it) loaded
into the HW3 ``Classifier`` (classifier_args.py) or the user's ``--model`` class or factory
(user_model.py), or a whole pickled model checked against the class it loaded as
(pickled_checks.py); and the checkpoint hw5 itself saves."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from hw5lib.errors import UserError
from hw5lib.model.checkpoints import checkpoint_format, file_sha256, load_torchscript
from hw5lib.model.classifier_args import infer_classifier_args, model_py_classifier
from hw5lib.model.containers import find_state_dict, module_in
from hw5lib.model.pickled_checks import checked_module
from hw5lib.model.preprocess import Preprocess
from hw5lib.model.unpickling import full_unpickle, unpickle
from hw5lib.model.user_model import build_user_model
from hw5lib.report.outputs import atomic_write_bytes

log = logging.getLogger(__name__)


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
            if held is not None and (held_in_full := module_in(full.obj)) is not None:
                full = replace(full, obj=held_in_full[1])
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
