"""Image files decoded as cv2.imread would (a short reason where one cannot be), and batches
of them as model inputs, skipping the unreadable ones. The "cv2" reader calls cv2 itself, for
the exact pixels of the HW3 sample code ("cv2-cubic", "cv2-area": its other resizes); the "pil"
reader decodes and resizes with PIL. With --preprocess the student's function reads instead."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import Tensor

from hw5lib.errors import BadImage, UserError
from hw5lib.inputs.datasets import csv_row_image
from hw5lib.model.preprocess import Preprocess, UserReader

logger = logging.getLogger(__name__)


def read_image(path: Path, channels: int = 3) -> Image.Image:
    """Open any common image upright as 8-bit RGB (or L), as cv2.imread does: EXIF orientation
    applied, grayscale repeated, alpha dropped, 16-bit and float scaled down rather than clipped.
    An unreadable file raises BadImage with a short reason."""
    if _is_csv_row(path):
        return csv_row_image(path).convert("L" if channels == 1 else "RGB")
    im = _to_8bit(_decode(path))
    target = "L" if channels == 1 else "RGB"
    try:
        return im.convert(target)
    except ValueError:  # PIL converts some modes only to some others (LAB -> RGB, not -> L)
        pass
    try:
        return im.convert("RGB").convert(target)
    except ValueError:
        raise BadImage(path, f"unsupported colour mode {im.mode}") from None


def _is_csv_row(path: Path) -> bool:
    """A FER2013-style ``file.csv#row``: pixels from a CSV row, no file of its own."""
    return ".csv#" in path.name and not path.is_file()


# What cv2.imread reads, plus GIF and AVIF; others (TGA, XBM...) would decode text files as pixels.
_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "WEBP", "TIFF", "GIF", "PPM", "JPEG2000", "AVIF")
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"RIFF", "WEBP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _decode(path: Path) -> Image.Image:
    """The fully decoded, upright image in ``path``, or BadImage saying why not."""
    _check_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # PIL's warnings are logged here, never raised
        try:
            im = Image.open(path, formats=_FORMATS)
        except Exception as err:  # PIL's plugins raise OSError, ValueError, SyntaxError...
            raise BadImage(path, _failure_reason(path, err, None)) from None
        with im:
            try:
                im.load()
                if ImageFile.LOAD_TRUNCATED_IMAGES and _cut_short(path, im.format) is True:
                    raise OSError("image file is truncated")  # PIL was told to pad it with grey
            except Exception as err:
                raise BadImage(path, _failure_reason(path, err, im.format)) from None
            _upright(im)
    for w in caught:  # corrupt EXIF, a large image: the pixels are fine
        logger.debug("%s: %s", path, w.message)
    return im


def _check_file(path: Path) -> None:
    """Fail early, with a plain reason, for what is not a readable non-empty file."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadImage(path, "missing") from None
    except OSError as err:
        raise BadImage(path, f"cannot open ({err.strerror})") from None
    if not path.is_file():
        raise BadImage(path, "not a file")
    if size == 0:
        raise BadImage(path, "empty file")


def _upright(im: Image.Image) -> None:
    """Apply the EXIF orientation tag in place, as cv2.imread does for camera photos."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as err:  # a broken EXIF block should not cost the pixels
        logger.debug("%s: EXIF orientation ignored: %s", im.filename, err)


def _failure_reason(path: Path, err: Exception, fmt: str | None) -> str:
    """Why a file did not decode, from the error and the file's own first and last bytes."""
    if isinstance(err, (Image.DecompressionBombError, MemoryError)):
        return "too large to decode safely"
    if isinstance(err, OSError) and err.errno is not None:
        return f"cannot open ({err.strerror})"
    try:
        head = _head(path)
        fmt = fmt or _signature(head)
        cut = _cut_short(path, fmt) if fmt else None
    except OSError as gone:  # removed or locked since it was opened
        return f"cannot open ({gone.strerror})"
    if fmt is None:
        return "unsupported format (HEIC or video)" if head[4:8] == b"ftyp" else "not an image"
    if cut is None:  # no end marker to check: believe PIL
        cut = "truncat" in str(err).lower() or isinstance(err, EOFError)
    return "truncated" if cut else f"corrupt {fmt}"


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _signature(head: bytes) -> str | None:
    """The format a file's magic bytes claim (BMP also needs its reserved bytes zero)."""
    for magic, fmt in _SIGNATURES:
        if head.startswith(magic) and (fmt != "BMP" or head[6:10] == bytes(4)):
            return fmt
    return None


def _cut_short(path: Path, fmt: str | None) -> bool | None:
    """Does the file stop before its format's end marker or declared length? None where the
    bytes cannot tell (TIFF; a GIF trailer is one byte, found in cut LZW data by chance)."""
    size = path.stat().st_size
    head = _head(path)
    if len(head) < 16:  # no image of any format fits in fewer bytes
        return True
    with open(path, "rb") as f:
        f.seek(size - 16)
        tail = f.read().rstrip(b"\x00")  # some writers pad after the end marker
    if fmt in ("JPEG", "MPO", "PNG"):  # neither marker can occur by chance in the coded data
        return not tail.endswith(b"\xff\xd9" if fmt != "PNG" else b"IEND\xaeB`\x82")
    if fmt == "GIF":
        return True if not tail.endswith(b";") else None
    if fmt in ("WEBP", "BMP"):
        declared = int.from_bytes(head[4:8] if fmt == "WEBP" else head[2:6], "little")
        return True if declared + (8 if fmt == "WEBP" else 0) > size else None
    if fmt == "TIFF" and head[:4] in (b"II*\x00", b"MM\x00*"):
        return True if _tiff_ifd_end(path, head) > size else None
    return None


def _tiff_ifd_end(path: Path, head: bytes) -> int:
    """Where a classic TIFF's first directory ends: past the file's end, the file was cut."""
    order = "little" if head[:2] == b"II" else "big"
    start = int.from_bytes(head[4:8], order)
    with open(path, "rb") as f:
        f.seek(start)
        count = f.read(2)
    return start + 2 + 12 * int.from_bytes(count, order) + 4 if len(count) == 2 else start + 2


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float gray -> 8-bit L, scaled by the full range the values fit in."""
    if im.mode == "P":
        return im.convert("RGBA")  # honours palette transparency, which PIL warns about for RGB
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    arr = arr.clip(min=0)
    top = float(arr.max(initial=0))
    ranges = (1.0, 255.0, 65535.0) if im.mode == "F" else (255.0, 65535.0)
    full = next((r for r in ranges if top <= r), top)
    return Image.fromarray((arr / full * 255).round().astype(np.uint8), "L")


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
    if _is_csv_row(path):
        return np.asarray(read_image(path, channels))
    _check_file(path)  # missing or empty: PIL's reason, without cv2's warning on stderr
    if _cut_short_file(path):
        read_image(path, channels)  # cv2 pads a cut file with grey; skip it as PIL does
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
    if img is None:
        return np.asarray(read_image(path, channels))  # BadImage with PIL's reason, or pixels
    return img if img.ndim == 2 else np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB


def _cut_short_file(path: Path) -> bool:
    """Does the file stop before the end its format's bytes promise?"""
    try:
        return _cut_short(path, _signature(_head(path))) is True
    except OSError:  # gone since it was checked: cv2.imread will find it missing
        return False


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
