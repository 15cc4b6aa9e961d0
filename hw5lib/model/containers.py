"""The state_dict inside whatever a checkpoint file holds: a bare state_dict, or the one dict of
tensors, at any key and depth, that fits the model (``{"net": ...}``, ``{"network": ...,
"optimizer": ..., "epochs": ...}``, Lightning's ``{"state_dict": ...}``), with the prefixes
DataParallel (``module.``), torch.compile (``_orig_mod.``) and Lightning (``model.``) put on
every key stripped where that makes it fit, and then a wrapper module's name (``backbone.``). Numbers, strings and optimizer states beside it are
ignored."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import Tensor, nn

from hw5lib.errors import UserError

PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass(frozen=True)
class Found:
    state: dict[str, Tensor]
    key: str | None  # dotted path of the dict in the file; None: the file is the state_dict
    prefix: str  # stripped from every key ("" where none was)
    fits: bool  # False: the closest candidate, for load_into to say what does not fit

    def record(self) -> dict:
        """What the manifest's ``architecture`` says of the container: nothing for a bare
        state_dict or the course's ``{"model_state_dict": ...}`` without prefixes."""
        rec: dict = {}
        if self.key not in (None, "model_state_dict"):
            rec["state_dict_key"] = self.key
        if self.prefix:
            rec["stripped_prefix"] = self.prefix
        return rec


def tensor_dicts(obj: object, key: str | None = None) -> Iterator[tuple[str | None, dict]]:
    """Every non-empty dict of name -> tensor in ``obj``, dicts and lists walked at any depth,
    with its dotted key (``None`` for ``obj`` itself)."""
    if isinstance(obj, dict) and obj:
        if all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            yield key, obj
            return
        for k, v in obj.items():
            yield from tensor_dicts(v, f"{key}.{k}" if key is not None else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from tensor_dicts(v, f"{key}.{i}" if key is not None else str(i))


def module_in(obj: object) -> tuple[str | None, nn.Module] | None:
    """The one whole model a training dict holds (``{"model": model, "optimizer": ...}``), with
    its dotted key; ``(None, obj)`` for a model itself; None where there is none or several."""
    found = list(_modules(obj))
    return found[0] if len(found) == 1 else None


def _modules(obj: object, key: str | None = None) -> Iterator[tuple[str | None, nn.Module]]:
    if isinstance(obj, nn.Module):
        yield key, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _modules(v, f"{key}.{k}" if key is not None else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _modules(v, f"{key}.{i}" if key is not None else str(i))


def strippings(state: dict[str, Tensor]) -> list[tuple[str, dict[str, Tensor]]]:
    """The state as it is, then with each known prefix that every key shares stripped, one
    after another (``module._orig_mod.`` takes two)."""
    out = [("", state)]
    prefix = ""
    while p := _shared_prefix(state):
        state = {k[len(p) :]: v for k, v in state.items()}
        prefix += p
        out.append((prefix, state))
    return out


def wrapper_stripped(state: dict[str, Tensor]) -> tuple[str, dict[str, Tensor]] | None:
    """The state without the one attribute name every key starts with (``net.``,
    ``backbone.``: a wrapper module of the student's own, Lightning's under another name)."""
    first = {k.partition(".")[0] for k in state}
    if len(first) != 1 or not all("." in k for k in state):
        return None
    p = f"{first.pop()}."
    return p, {k[len(p) :]: v for k, v in state.items()}


def _variants(state: dict[str, Tensor]) -> Iterator[tuple[str, dict[str, Tensor]]]:
    """``strippings``, then with the wrapper's name stripped from the last of them."""
    variants = strippings(state)
    yield from variants
    prefix, last = variants[-1]
    if (wrapped := wrapper_stripped(last)) is not None and wrapped[0] not in PREFIXES:
        yield prefix + wrapped[0], wrapped[1]


def _shared_prefix(state: dict[str, Tensor]) -> str | None:
    return next((p for p in PREFIXES if state and all(k.startswith(p) for k in state)), None)


def find_state_dict(
    obj: object, fits: Callable[[dict[str, Tensor]], bool], key: str | None = None
) -> Found:
    """The one state_dict in ``obj`` that ``fits`` the model (``key``: the dotted path the user
    chose with --checkpoint-key); a one-line UserError if there is none or more than one."""
    found = list(tensor_dicts(obj))
    if key is not None:
        chosen = [(k, d) for k, d in found if k == key]
        if not chosen:
            keys = ", ".join(repr(k) for k, _ in found if k is not None) or "none"
            raise UserError(
                f"--checkpoint-key {key}: the checkpoint has no dict of tensors there "
                f"(it has: {keys})"
            )
        found = chosen
    if not found:
        raise UserError(
            f"checkpoint holds no state_dict (a dict of tensors), only {_describe(obj)}; "
            "save it with torch.save(model.state_dict(), path)"
        )
    fitting = [
        Found(state, k, prefix, True)
        for k, d in found
        for prefix, state in _variants(d)
        if fits(state)
    ]
    if len({f.key for f in fitting}) > 1:
        keys = ", ".join(repr(f.key) for f in fitting)
        raise UserError(
            f"the checkpoint holds {len(fitting)} state_dicts that fit the model ({keys}): "
            "pass --checkpoint-key KEY with the one to explain"
        )
    if fitting:
        return fitting[0]
    k, d = max(found, key=lambda kd: len(kd[1]))  # the largest, for the error to compare
    prefix, state = strippings(d)[-1]
    return Found(state, k, prefix, False)


def _describe(obj: object) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:6])
        return f"a dict of {{{keys}{', ...' if len(obj) > 6 else ''}}}"
    return f"a {type(obj).__name__}"
