"""--preprocess file.py:function: the student's own image reading, used as is.

Whatever their training script did (cv2.imread + INTER_CUBIC resize + GaussianBlur + their own
mean/std) the model gets exactly what the function returns for each file, so the explained
inputs match training where no candidate of the input check does. Figures still need pixels in
[0,1] in display order: the function's outputs are mapped back by one affine map per channel,
--mean/--std when given (they then say how the function normalized), else min-max over the
explained images; the channel order is the one whose first channel follows the file's red, as
PIL decodes it (--channel-order wins).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hw5lib.errors import BadImage, UserError
from hw5lib.inputs.decoding import read_image
from hw5lib.inputs.images import user_input
from hw5lib.model.preprocess import Preprocess, UserReader

log = logging.getLogger(__name__)

MINMAX = "min-max per channel over the explained images"
GIVEN = "--mean/--std"
ORDER_IMAGES = 4  # images whose colours decide the display channel order


def import_reader(spec: str) -> UserReader:
    """``path/to/file.py:function`` -> the function, imported from that file, with the file's
    name and sha256 (no folder of this machine) for the manifest."""
    file, sep, name = spec.rpartition(":")
    path = Path(file)
    if not sep or not name or path.suffix != ".py":
        raise UserError(f"--preprocess must look like path/to/file.py:function, not {spec!r}")
    if not path.is_file():
        raise UserError(f"--preprocess: {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"hw5_user_preprocess_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise UserError(
            f"--preprocess: importing {path.name} failed: {type(err).__name__}: {err}"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"--preprocess: {path.name} defines no function named {name!r}")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return UserReader(path.name, sha, name, function)


def with_reader(pre: Preprocess, reader: UserReader, paths: Sequence[Path]) -> Preprocess:
    """``pre`` reading with the function; the input size is what it returns for the first of
    ``paths`` it reads (every other image must match it)."""
    probe = replace(pre, function=reader)
    for path in paths:
        try:
            out = reader.function(str(path))
        except Exception as err:  # that image is skipped later, with this reason
            log.debug("%s: %s raised %s", path, reader.name, err)
            continue
        shape = tuple(getattr(out, "shape", ()))
        size = _size_of(shape, pre.channels, isinstance(out, np.ndarray | Image.Image))
        if size is None:  # as_chw takes no layout _size_of rejects: user_input raises
            user_input(reader, path, probe)  # the one-line error naming the shape
            raise AssertionError(f"user_input accepted a result of shape {shape}")
        return replace(probe, size=size)
    return probe


def _size_of(shape: tuple, channels: int, channels_last: bool) -> tuple[int, int] | None:
    """(H, W) of a result of ``shape`` (see images.as_chw for the layouts)."""
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2:
        return (int(shape[0]), int(shape[1])) if channels == 1 else None
    if len(shape) != 3:
        return None
    first, last = shape[0] == channels, shape[2] == channels
    if last and (channels_last or not first):
        return int(shape[0]), int(shape[1])
    return (int(shape[1]), int(shape[2])) if first else None


def fit_display(
    pre: Preprocess,
    x: Tensor,
    paths: Sequence[Path],
    *,
    order_given: bool,
    stats_given: bool,
) -> Preprocess:
    """``pre`` whose mean/std map the function's inputs ``x`` [N,C,H,W] (of ``paths``) back to
    [0,1] pixels, and whose channel order is the display's; the function is kept as is."""
    assert pre.function is not None
    order = pre.channel_order if order_given else display_order(x, paths, pre)
    if stats_given:
        mean, std, how = pre.mean, pre.std, GIVEN
    else:
        lo = x.amin(dim=(0, 2, 3)).double()  # (C,)
        hi = x.amax(dim=(0, 2, 3)).double()
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        # pixels = (x - lo) / span, i.e. x = (pixels - mean) / std with:
        mean = tuple(round(float(v), 6) for v in -lo / span)
        std = tuple(round(float(v), 6) for v in 1 / span)
        how = MINMAX
    reader = replace(pre.function, display=f"{how}; channel order {order}")
    log.info("--preprocess %s:%s shown by %s", reader.file, reader.name, reader.display)
    return replace(pre, channel_order=order, mean=mean, std=std, function=reader)


def display_order(x: Tensor, paths: Sequence[Path], pre: Preprocess) -> str:
    """ "bgr" when the inputs' first channel follows the files' blue more than their red (as
    cv2.imread reads them), else "rgb"; gray models have none to find."""
    if pre.channels != 3:
        return pre.channel_order
    red = blue = 0.0
    h, w = pre.size
    for xi, path in list(zip(x, paths, strict=True))[:ORDER_IMAGES]:
        try:
            rgb = np.asarray(read_image(path).resize((w, h)), dtype=np.float64)  # (H, W, 3)
        except BadImage:
            continue
        first = xi[0].double().numpy().ravel()
        red += _correlation(first, rgb[:, :, 0].ravel())
        blue += _correlation(first, rgb[:, :, 2].ravel())
    return "bgr" if blue > red else "rgb"


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / norm if norm > 0 else 0.0
