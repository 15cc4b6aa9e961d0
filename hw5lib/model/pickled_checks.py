"""A whole pickled model checked against the class it loaded as before it is explained: the
module tree of a fresh instance (model.py's Classifier, the ``--model`` class), the HW3
template with the student's own layers, or a shape-only forward (torchvision)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from hw5lib.errors import UserError
from hw5lib.model.classifier_args import infer_classifier_args, model_py_classifier
from hw5lib.model.unpickling import Unpickled, first_line, is_students
from hw5lib.model.user_model import UserModel
from model import Classifier

log = logging.getLogger(__name__)


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
