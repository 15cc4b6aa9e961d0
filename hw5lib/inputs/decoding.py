"""Image files decoded as cv2.imread would: upright, 8-bit RGB or L, 16-bit and float scaled
down; or BadImage with a short reason (missing, empty, truncated, not an image...) told from
PIL's error and the file's own first and last bytes."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from hw5lib.errors import BadImage
from hw5lib.inputs.image_csv import csv_row_image

logger = logging.getLogger(__name__)


def read_image(path: Path, channels: int = 3) -> Image.Image:
    """Open any common image upright as 8-bit RGB (or L), as cv2.imread does: EXIF orientation
    applied, grayscale repeated, alpha dropped, 16-bit and float scaled down rather than clipped.
    An unreadable file raises BadImage with a short reason."""
    if is_csv_row(path):
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


def is_csv_row(path: Path) -> bool:
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
    check_file(path)
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


def check_file(path: Path) -> None:
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


def cut_short_file(path: Path) -> bool:
    """Does the file stop before the end its format's bytes promise?"""
    try:
        return _cut_short(path, _signature(_head(path))) is True
    except OSError:  # gone since it was checked: cv2.imread will find it missing
        return False


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
