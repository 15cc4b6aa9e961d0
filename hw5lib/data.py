"""Sorted file lists, image loading and the exact preprocessing a checkpoint was trained with."""

from __future__ import annotations

import csv
import functools
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import Tensor

from .errors import BadImage, UserError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("training", "validation", "testing")
_LABELLED = re.compile(r"^(\d+)_\d+$")  # Food-11: <label>_<n>.jpg


@dataclass(frozen=True)
class Preprocess:
    """How pixels become the model's input: resize, scale to [0,1], order channels, normalize.

    ``channel_order`` matters: the HW3 sample code read images with cv2 (BGR), the HW5 sample code
    with PIL (RGB). A checkpoint explained in the wrong order still runs, but every map is wrong.
    """

    size: tuple[int, int] = (128, 128)  # (H, W)
    channels: int = 3
    channel_order: str = "bgr"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise UserError(f"channel order must be 'rgb' or 'bgr', not {self.channel_order!r}")
        if self.channels not in (1, 3):
            raise UserError(f"input channels must be 1 or 3, not {self.channels}")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v is not None and len(v) not in (1, self.channels):
                raise UserError(f"--{name} needs 1 or {self.channels} values, got {len(v)}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise UserError("--std values must be positive")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        for k in ("mean", "std"):
            d[k] = None if d[k] is None else list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        def tup(v: Sequence[float] | None) -> tuple[float, ...] | None:
            return None if v is None else tuple(float(a) for a in v)

        return cls(
            size=tuple(int(a) for a in d.get("size", (128, 128))),  # type: ignore[arg-type]
            channels=int(d.get("channels", 3)),
            channel_order=str(d.get("channel_order", "bgr")),
            mean=tup(d.get("mean")),
            std=tup(d.get("std")),
        )

    def _stats(self) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean or (0.0,), dtype=torch.float32)
        std = torch.tensor(self.std or (1.0,), dtype=torch.float32)
        return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def normalize(self, pixels: Tensor) -> Tensor:
        """[N,C,H,W] display-order pixels in [0,1] (RGB or gray) -> model input."""
        if self.channels == 3 and self.channel_order == "bgr":
            pixels = pixels.flip(1)
        mean, std = self._stats()
        return (pixels - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Model input [N,C,H,W] -> pixels in display order (RGB or gray), clipped to [0,1]."""
        mean, std = self._stats()
        pixels = x.detach().cpu() * std + mean
        if self.channels == 3 and self.channel_order == "bgr":
            pixels = pixels.flip(1)
        return pixels.clamp(0, 1)


@dataclass(frozen=True)
class ImageSet:
    """Images in sorted order with their labels (None where the file name carries none)."""

    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int | None, ...] = field(default=())
    classes: tuple[str, ...] | None = None  # class folder names of an ImageFolder

    def __len__(self) -> int:
        return len(self.paths)


def list_images(folder: Path) -> list[Path]:
    """Every image file directly in ``folder``, sorted by name (os.listdir order is arbitrary)."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def label_of(path: Path) -> int | None:
    """Food-11 names files ``<label>_<n>.jpg``; testing files carry no label."""
    m = _LABELLED.match(path.stem)
    return int(m.group(1)) if m else None


EXPLAIN_SPLITS = ("validation", "val", "training", "train", "testing", "test")
LABELLED_SPLITS = ("validation", "val", "training", "train")
TRAIN_SPLITS = ("training", "train")
CSV_USAGE = {  # FER2013's Usage column, by the role a Food-11 split name plays
    "validation": "PublicTest",
    "val": "PublicTest",
    "training": "Training",
    "train": "Training",
    "testing": "PrivateTest",
    "test": "PrivateTest",
}


def find_split(root: Path, preferred: Sequence[str] = EXPLAIN_SPLITS) -> Path:
    """The split to use: the first of ``preferred`` present under ``root``, or ``root`` itself."""
    if not root.exists():
        raise UserError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the Food-11 root or one of its splits")
    for name in preferred:
        if (root / name).is_dir():
            return root / name
    return root


def open_dataset(root: Path, preferred: Sequence[str] = EXPLAIN_SPLITS) -> ImageSet:
    """One split of any supported layout, sorted: a Food-11 root or folder (``<label>_<n>.jpg``),
    an ImageFolder (one subfolder per class, optionally under train/ val/), or a FER2013-style
    CSV (``label,pixels[,Usage]``; a row is addressed as ``file.csv#row``)."""
    if root.suffix.lower() == ".csv":
        return csv_split(root, preferred)
    folder = find_split(root, preferred)
    if list_images(folder):
        return load_split(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and list_images(d))
    if not classes:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its class folders")
    paths: list[Path] = []
    labels: list[int | None] = []
    for i, name in enumerate(classes):
        found = list_images(folder / name)
        paths += found
        labels += [i] * len(found)
    return ImageSet(folder, tuple(paths), tuple(labels), tuple(classes))


@functools.lru_cache(maxsize=4)
def read_csv_rows(path: Path) -> tuple[tuple[int | None, str, str], ...]:
    """(label, pixels, usage) per row of a FER2013-style CSV, read once per run."""
    if not path.is_file():
        raise UserError(f"CSV file {path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "pixels" not in header:
        raise UserError(
            f"{path} needs a 'pixels' column in its header (FER2013: emotion,pixels,Usage)"
        )
    pix = header.index("pixels")
    lab = next((i for i, h in enumerate(header) if h in ("emotion", "label")), None)
    use = header.index("usage") if "usage" in header else None
    return tuple(
        (
            int(r[lab]) if lab is not None and r[lab].strip() else None,
            r[pix],
            r[use] if use is not None else "",
        )
        for r in rows[1:]
        if r
    )


def csv_split(path: Path, preferred: Sequence[str]) -> ImageSet:
    """The rows of the first preferred split present in the Usage column (all rows if none)."""
    rows = read_csv_rows(path)
    usages = {u for _, _, u in rows}
    wanted = next((CSV_USAGE[p] for p in preferred if CSV_USAGE.get(p) in usages), None)
    picked = [i for i, (_, _, u) in enumerate(rows) if wanted is None or u == wanted]
    if not picked:
        raise UserError(f"{path} has no rows")
    return ImageSet(
        path, tuple(Path(f"{path}#{i}") for i in picked), tuple(rows[i][0] for i in picked)
    )


def csv_row_image(path: Path) -> Image.Image:
    """The grayscale square image of one CSV row (FER2013: 48x48)."""
    file, _, row = str(path).rpartition("#")
    rows = read_csv_rows(Path(file))
    try:
        values = np.array(rows[int(row)][1].split(), dtype=np.float64)
    except (IndexError, ValueError):
        raise BadImage(path, "no such row, or its pixels are not numbers") from None
    side = round(len(values) ** 0.5)
    if side * side != len(values) or not len(values):
        raise BadImage(path, f"{len(values)} pixels do not make a square image")
    return Image.fromarray(values.reshape(side, side).clip(0, 255).astype(np.uint8), "L")


def load_split(folder: Path) -> ImageSet:
    """A Food-11 split (or any flat folder of images) as a sorted ImageSet."""
    paths = list_images(folder)
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return ImageSet(folder, tuple(paths), tuple(label_of(p) for p in paths))


def read_image(path: Path, channels: int = 3) -> Image.Image:
    """Open any common image upright as 8-bit RGB (or L), as cv2.imread does: EXIF orientation
    applied, grayscale repeated, alpha dropped, 16-bit and float scaled down rather than clipped.
    An unreadable file raises BadImage with a short reason."""
    if ".csv#" in path.name and not path.is_file():
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


def _pixel_array(path: Path, pre: Preprocess) -> np.ndarray:
    """One image resized -> (H, W, C) float32 pixels in [0,1], display channel order."""
    h, w = pre.size
    im = read_image(path, pre.channels).resize((w, h), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32) / 255.0
    return a[:, :, None] if a.ndim == 2 else a


def _stack(arrays: Sequence[np.ndarray], pre: Preprocess) -> Tensor:
    """(H, W, C) arrays -> [N,C,H,W]; an empty list gives [0,C,H,W]."""
    if not arrays:
        return torch.empty(0, pre.channels, *pre.size)
    batch = torch.from_numpy(np.stack(arrays))  # (N, H, W, C)
    return batch.permute(0, 3, 1, 2).contiguous()


def load_pixels(paths: Sequence[Path], pre: Preprocess) -> Tensor:
    """Read and resize images -> [N,C,H,W] float pixels in [0,1], display channel order.
    The first unreadable file raises BadImage; see load_usable to skip it instead."""
    return _stack([_pixel_array(p, pre) for p in paths], pre)


def load_inputs(paths: Sequence[Path], pre: Preprocess) -> Tensor:
    """Images -> the model's input tensor [N,C,H,W], exactly as the checkpoint was trained."""
    return pre.normalize(load_pixels(paths, pre))


def load_usable(paths: Sequence[Path], pre: Preprocess) -> LoadedImages:
    """The model inputs of every readable image, in order. An unreadable file is listed in
    ``skipped`` instead of raised: one bad photo in a folder costs that photo, not the run."""
    arrays: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[Skipped] = []
    for i, p in enumerate(paths):
        try:
            arrays.append(_pixel_array(p, pre))
        except BadImage as err:
            logger.debug("%s", err)
            skipped.append(Skipped(p, err.reason))
            continue
        kept.append(i)
    x = pre.normalize(_stack(arrays, pre))
    return LoadedImages(x, tuple(paths[i] for i in kept), tuple(kept), tuple(skipped))


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


def read_classes(text: str | None, count: int) -> list[str]:
    """Class names from a comma list; numbered names when none are given."""
    if not text:
        return [str(i) for i in range(count)]
    names = [c.strip() for c in text.split(",")]
    if len(names) != count:
        raise UserError(f"--classes names {len(names)} classes but the model has {count} outputs")
    return names


FOOD11_CLASSES = (
    "Bread",
    "Dairy product",
    "Dessert",
    "Egg",
    "Fried food",
    "Meat",
    "Noodles/Pasta",
    "Rice",
    "Seafood",
    "Soup",
    "Vegetable/Fruit",
)
FER2013_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
CLASS_PRESETS = {"food11": FOOD11_CLASSES, "fer2013": FER2013_CLASSES, "catdog": ("cat", "dog")}


# ---------------------------------------------------------------- object masks of a generated set


def _relative(root: Path, image_path: Path | str) -> Path | None:
    path = Path(image_path)
    if not path.is_absolute():
        return path
    try:
        return path.resolve().relative_to(Path(root).resolve())
    except ValueError:
        return None


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) >= 128


def load_mask(root: Path, image_path: Path | str, *, label: int | None = None) -> np.ndarray | None:
    """The [H, W] bool object mask of an image of a generated set, or None if it has none.

    ``image_path`` is absolute or relative to ``root``; for ``expression`` sets it is
    ``fer2013.csv#<row>``. An image holding several objects (``both.jpg``) gives the mask of
    class ``label`` if one is given, else the union of its masks.
    """
    root = Path(root)
    rel = _relative(root, image_path)
    if rel is None:
        return None
    if "#" in rel.name:  # a CSV row
        row = rel.name.split("#", 1)[1]
        path = root / "masks" / f"{row}.png"
        return _read_mask(path) if row.isdigit() and path.is_file() else None
    path = root / "masks" / rel.with_suffix(".png")
    if path.is_file():
        return _read_mask(path)
    parts = sorted(path.parent.glob(f"{rel.stem}_*.png")) if path.parent.is_dir() else []
    if label is not None:
        classes_file = root / "classes.txt"
        if not classes_file.is_file():
            return None
        names = classes_file.read_text().splitlines()
        if not 0 <= label < len(names):
            return None
        wanted = path.parent / f"{rel.stem}_{names[label]}.png"
        return _read_mask(wanted) if wanted in parts else None
    if not parts:
        return None
    masks = [_read_mask(p) for p in parts]
    return np.logical_or.reduce(masks)


def object_masks(root: Path, paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray | None:
    """Masks of every explained image, resized to the model input (nearest); None unless all
    of them have one."""
    masks = []
    for p in paths:
        m = load_mask(root, p)
        if m is None:
            return None
        im = Image.fromarray(m.astype(np.uint8) * 255).resize(size[::-1], Image.Resampling.NEAREST)
        masks.append(np.asarray(im) > 127)
    return np.stack(masks)
