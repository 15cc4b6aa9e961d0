"""Batches of image files as model inputs, skipping the unreadable ones. The "cv2" reader calls
cv2 itself, for the exact pixels of the HW3 sample code ("cv2-cubic", "cv2-area": its other
resizes); the "pil" reader decodes (decoding.py) and resizes with PIL. With --preprocess the
student's function reads instead."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hw5lib.errors import BadImage, UserError
from hw5lib.inputs.decoding import check_file, cut_short_file, is_csv_row, read_image
from hw5lib.model.preprocess import Preprocess, UserReader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """A file a batch left out, and why ("empty file", "truncated", "not an image", ...)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class LoadedImages:
    """The model inputs of the readable images of a batch and what was left out."""

    x: Tensor  # (N, C, H, W) model input, N = len(paths); (0, C, H, W) when nothing was readable
    paths: tuple[Path, ...]
    kept: tuple[int, ...]  # position of each loaded image in the requested list (for labels)
    skipped: tuple[Skipped, ...]


# cv2 readers by their resize: HW3's INTER_LINEAR, and the INTER_CUBIC and INTER_AREA students
# also train with; one cv2.imread serves all three (pixel_variants).
CV2_RESIZE = {"cv2": cv2.INTER_LINEAR, "cv2-cubic": cv2.INTER_CUBIC, "cv2-area": cv2.INTER_AREA}


def _pixel_array(path: Path, pre: Preprocess) -> np.ndarray:
    """One image resized -> (H, W, C) float32 pixels in [0,1], display channel order."""
    return pixel_variants(path, pre, (pre.reader,))[pre.reader]


def pixel_variants(path: Path, pre: Preprocess, readers: Sequence[str]) -> dict[str, np.ndarray]:
    """``path`` as each of ``readers`` gives it -> (H, W, C) float32 pixels in [0,1], display
    channel order; the file is decoded once by cv2 and once by PIL at most, and each reader's
    resize works on that one decoded array."""
    h, w = pre.size
    out: dict[str, np.ndarray] = {}
    decoded = _cv2_decode(path, pre.channels) if set(readers) & set(CV2_RESIZE) else None
    for reader in readers:
        if reader in CV2_RESIZE:
            img = cv2.resize(decoded, (w, h), interpolation=CV2_RESIZE[reader])
            a = img.astype(np.float32) / 255  # as HW3's code scales: bit-equal model inputs
        else:
            im = read_image(path, pre.channels).resize((w, h), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
        out[reader] = a[:, :, None] if a.ndim == 2 else a
    return out


def _cv2_decode(path: Path, channels: int) -> np.ndarray:
    """(H, W, 3) RGB or (H, W) gray uint8 pixels of ``path`` as cv2.imread decodes them; PIL
    for what this cv2 build cannot read (a CSV row; AVIF, GIF before 4.11) and to say why a bad
    file is bad."""
    if is_csv_row(path):
        return np.asarray(read_image(path, channels))
    check_file(path)  # missing or empty: PIL's reason, without cv2's warning on stderr
    if cut_short_file(path):
        read_image(path, channels)  # cv2 pads a cut file with grey; skip it as PIL does
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
    if img is None:
        return np.asarray(read_image(path, channels))  # BadImage with PIL's reason, or pixels
    return img if img.ndim == 2 else np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB


def _stack(arrays: Sequence[np.ndarray], pre: Preprocess) -> Tensor:
    """(H, W, C) arrays -> [N,C,H,W]; an empty list gives [0,C,H,W]."""
    if not arrays:
        return torch.empty(0, pre.channels, *pre.size)
    batch = torch.from_numpy(np.stack(arrays))  # (N, H, W, C)
    return batch.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def _inputs(paths: Sequence[Path], pre: Preprocess) -> Tensor:
    """Model inputs [N,C,H,W]; the first unreadable file raises BadImage."""
    if pre.function is not None:
        return _stack_inputs([user_input(pre.function, p, pre) for p in paths], pre)
    return pre.normalize(_stack([_pixel_array(p, pre) for p in paths], pre))


def load_pixels(paths: Sequence[Path], pre: Preprocess) -> Tensor:
    """Read and resize images -> [N,C,H,W] float pixels in [0,1], display channel order.
    The first unreadable file raises BadImage; see load_usable to skip it instead."""
    if pre.function is not None:  # shown as the run shows the function's inputs
        return pre.denormalize(_inputs(paths, pre))
    return _stack([_pixel_array(p, pre) for p in paths], pre)


def load_inputs(paths: Sequence[Path], pre: Preprocess) -> Tensor:
    """Images -> the model's input tensor [N,C,H,W], exactly as the checkpoint was trained."""
    return _inputs(paths, pre)


def load_usable(paths: Sequence[Path], pre: Preprocess) -> LoadedImages:
    """The model inputs of every readable image, in order. An unreadable file is listed in
    ``skipped`` instead of raised: one bad photo in a folder costs that photo, not the run."""
    arrays: list[np.ndarray | Tensor] = []  # pixels, or the function's inputs
    kept: list[int] = []
    skipped: list[Skipped] = []
    for i, p in enumerate(paths):
        try:
            if pre.function is not None:
                arrays.append(user_input(pre.function, p, pre))
            else:
                arrays.append(_pixel_array(p, pre))
        except BadImage as err:
            logger.debug("%s", err)
            skipped.append(Skipped(p, err.reason))
            continue
        kept.append(i)
    if pre.function is not None:
        x = _stack_inputs(arrays, pre)
    else:
        x = pre.normalize(_stack(arrays, pre))
    return LoadedImages(x, tuple(paths[i] for i in kept), tuple(kept), tuple(skipped))


def _stack_inputs(inputs: Sequence[Tensor], pre: Preprocess) -> Tensor:
    """(C, H, W) inputs -> [N,C,H,W]; an empty list gives [0,C,H,W]."""
    return torch.stack(list(inputs)) if inputs else torch.empty(0, pre.channels, *pre.size)


def user_input(reader: UserReader, path: Path, pre: Preprocess) -> Tensor:
    """``path`` as the --preprocess function returns it -> the model input (C, H, W) float32.
    A function that raises costs that image (BadImage with its error); a result of the wrong
    shape (not the model's channels, not ``pre.size``) is a one-line UserError."""
    try:
        out = reader.function(str(path))
    except Exception as err:  # the student's code: any error costs the image, not the run
        raise BadImage(path, f"{reader.name} raised {type(err).__name__}: {err}") from None
    x = as_chw(out, pre.channels)
    if x is None or tuple(x.shape) != (pre.channels, *pre.size):
        got = tuple(getattr(out, "shape", ())) or type(out).__name__
        raise UserError(
            f"--preprocess {reader.file}:{reader.name} returned {got} for {path.name}; the model "
            f"takes {pre.channels} channel(s) at {pre.size[0]}x{pre.size[1]}: return an (H, W, C) "
            "array or a (C, H, W) tensor of that size for every image"
        )
    return x


def as_chw(out: object, channels: int) -> Tensor | None:
    """A function's result -> float32 (C, H, W), or None when it is no image of ``channels``.
    numpy arrays are read as (H, W[, C]) and tensors as ([1,] C, H, W) unless only the other
    layout has ``channels`` where the channels go."""
    if isinstance(out, Image.Image):
        out = np.asarray(out)
    if isinstance(out, np.ndarray):
        if not (np.issubdtype(out.dtype, np.number) or out.dtype == np.bool_):
            return None
        x, channels_last = torch.from_numpy(np.ascontiguousarray(out).astype(np.float32)), True
    elif isinstance(out, Tensor):
        x, channels_last = out.detach().cpu().to(torch.float32), False
    else:
        return None
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]  # a batch of one, as a transform pipeline may return
    if x.ndim == 2:
        return x[None].contiguous() if channels == 1 else None
    if x.ndim != 3:
        return None
    first, last = x.shape[0] == channels, x.shape[2] == channels
    if last and (channels_last or not first):
        return x.permute(2, 0, 1).contiguous()  # (H, W, C) -> (C, H, W)
    return x.contiguous() if first else None


def _printable(name: str) -> str:
    """A file name fit for one line of output: quoted and escaped if it holds a newline etc."""
    return name if name.isprintable() else ascii(name)


def skipped_warning(skipped: Sequence[Skipped], *, show: int = 3) -> str:
    """One line for the user: how many files were skipped, the first few with their reasons."""
    if not skipped:
        return ""
    n = len(skipped)
    named = ", ".join(f"{_printable(s.path.name)} ({s.reason})" for s in skipped[:show])
    more = f", and {n - show} more" if n > show else ""
    return f"skipped {n} unreadable image{'s' if n != 1 else ''}: {named}{more}"
