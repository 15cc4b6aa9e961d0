"""A Food-11-layout folder of real photographs (the ones scikit-image ships, no download), saved
in the modes, sizes and names real scrapes have, with a few unreadable files among them."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "grass", "coins", "rocket")
CLASSES = 11
SPLITS = {"training": 2, "validation": 2}
EXIF_ORIENTATION = 0x0112
# validation files that are not images, as a scrape leaves them: name -> bytes
BAD = {"3_9.jpg": b"", "7_9.jpg": b"<html>404 Not Found</html>\n"}
TRUNCATED = "5_0.jpg"  # the first of its class: the next readable one is explained instead


@functools.cache
def photo(k: int) -> Image.Image:
    """The k-th photo variant: one of scikit-image's photos, cropped and flipped by k."""
    im = Image.fromarray(getattr(skimage.data, PHOTOS[k % len(PHOTOS)])()).convert("RGB")
    w, h = im.size
    side = min(w, h) * (3 + k % 3) // 5
    left, top = (k * 37) % (w - side + 1), (k * 53) % (h - side + 1)
    im = im.crop((left, top, left + side, top + side)).resize((96 + 8 * (k % 4), 96))
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k % 2 else im


def jpeg(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def turned_jpeg(im: Image.Image) -> bytes:
    """Stored on its side with EXIF orientation 6, as a phone camera saves a portrait shot."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return jpeg(im.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())


def sixteen_bit(im: Image.Image) -> bytes:
    gray = np.asarray(im.convert("L"), dtype=np.uint16) * 257
    return png(Image.fromarray(gray))


# (suffix, encoder) in turn over the files: every mode appears in each split
MODES = (
    (".jpg", lambda im: jpeg(im)),
    (".jpg", lambda im: jpeg(im.convert("L"))),  # grayscale JPEG
    (".jpg", lambda im: jpeg(im.convert("CMYK"))),
    (".png", lambda im: png(im.convert("P"))),  # palette
    (".png", lambda im: png(im.convert("RGBA"))),
    (".png", sixteen_bit),
    (".jpg", turned_jpeg),
    (".JPG", lambda im: jpeg(im)),  # upper-case extension
    (".png", lambda im: png(im.resize((1, 1)))),
    (".jpg", lambda im: jpeg(im.resize((1200, 800)))),
    (".webp", lambda im: _webp(im)),
)


def _webp(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "WEBP", quality=90)
    return buf.getvalue()


def write_real_food11(root: Path) -> Path:
    """training/ and validation/ with <label>_<n> files of 11 classes in mixed modes (class 4's
    first image a low-contrast grass texture, grayscale), the bad files of BAD and TRUNCATED in
    validation/, and testing/ with names holding spaces and non-ASCII characters."""
    k = 0
    for split, per_class in SPLITS.items():
        (root / split).mkdir(parents=True)
        for label in range(CLASSES):
            for n in range(per_class):
                suffix, encode = MODES[k % len(MODES)]
                im = photo(k)
                if label == 4 and n == 0:  # course SLIC finds one superpixel in grass
                    im = Image.fromarray(skimage.data.grass()).convert("RGB").resize((128, 128))
                    suffix, encode = ".jpg", lambda im: jpeg(im.convert("L"))
                (root / split / f"{label}_{n}{suffix}").write_bytes(encode(im))
                k += 1
    for name, data in BAD.items():
        (root / "validation" / name).write_bytes(data)
    for old in (root / "validation").glob(f"{Path(TRUNCATED).stem}.*"):
        old.unlink()
    whole = jpeg(photo(3))
    (root / "validation" / TRUNCATED).write_bytes(whole[: len(whole) // 2])
    (root / "testing").mkdir()
    for i, name in enumerate(("café au lait.jpg", "麵 1.png", "plain.jpeg")):
        data = jpeg(photo(i)) if name.endswith((".jpg", ".jpeg")) else png(photo(i))
        (root / "testing" / name).write_bytes(data)
    return root
