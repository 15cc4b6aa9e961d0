"""The image loader on real photographs saved in odd modes, sizes and names, on bad files among
good ones, and on fuzzed bytes: it loads what cv2.imread would, upright, or skips with a reason."""

from __future__ import annotations

import functools
import io
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from hw5lib.errors import BadImage, UserError
from hw5lib.inputs import decoding, images
from hw5lib.inputs.datasets import list_images
from hw5lib.inputs.decoding import read_image
from hw5lib.inputs.images import Skipped, load_inputs, load_usable, skipped_warning
from hw5lib.model.preprocess import Preprocess

PRE = Preprocess(size=(24, 32))  # (H, W); no mean/std, so model inputs are pixels in [0,1]
PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "grass", "coins", "rocket")  # bundled


@functools.cache
def photo(name: str) -> Image.Image:
    """A photograph scikit-image ships (no download), shrunk to 64x48 so each test is quick."""
    return Image.fromarray(getattr(skimage.data, name)()).resize((64, 48))


def rgb(name: str = "chelsea") -> Image.Image:
    return photo(name).convert("RGB")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pixels_of(path: Path, channels: int = 3) -> np.ndarray:
    return np.asarray(read_image(path, channels), dtype=np.int16)


def assert_model_inputs(loaded: images.LoadedImages, n: int, pre: Preprocess = PRE) -> None:
    """n images of the configured shape, finite, in [0,1] (no normalization in PRE)."""
    assert loaded.x.shape == (n, pre.channels, *pre.size)
    assert loaded.x.dtype == torch.float32
    assert torch.isfinite(loaded.x).all()
    assert loaded.x.min() >= 0 and loaded.x.max() <= 1


# Odd modes: each case makes the image to save from an RGB photo, and names the pixels the
# loader must return: the RGB "source", its "gray" version, or the "saved" image itself.


def _uint16(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("L"), dtype=np.uint16) * 257  # 8-bit gray, 16-bit full range


def _with_alpha(im: Image.Image, mode: str) -> Image.Image:
    """Random alpha: compositing (which cv2.imread does not do) would change every colour."""
    out = im.convert(mode)
    alpha = np.random.default_rng(0).integers(0, 256, (im.height, im.width), dtype=np.uint8)
    out.putalpha(Image.fromarray(alpha))
    return out


def _palette(im: Image.Image, transparent: bool = False) -> Image.Image:
    out = im.convert("P", palette=Image.Palette.ADAPTIVE)
    if transparent:
        out.info["transparency"] = 0
    return out


def _i16b(im: Image.Image) -> Image.Image:
    return Image.frombytes("I;16B", im.size, _uint16(im).astype(">u2").tobytes())


def _float(im: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(im.convert("L"), dtype=np.float32) / 255, "F")


Make = Callable[[Image.Image], Image.Image]
MODES: dict[str, tuple[Make, str, str]] = {  # id: (make the image to save, format, expected)
    "rgb-png": (lambda im: im, "PNG", "source"),
    "rgb-bmp": (lambda im: im, "BMP", "source"),
    "rgb-tiff": (lambda im: im, "TIFF", "source"),
    "gray-png": (lambda im: im.convert("L"), "PNG", "gray"),
    "1bit-png": (lambda im: im.convert("1"), "PNG", "saved"),
    "1bit-tiff": (lambda im: im.convert("1"), "TIFF", "saved"),
    "palette-png": (_palette, "PNG", "saved"),
    "palette-transparent-png": (lambda im: _palette(im, transparent=True), "PNG", "saved"),
    "palette-gif": (_palette, "GIF", "saved"),
    "la-png": (lambda im: _with_alpha(im, "LA"), "PNG", "gray"),
    "rgba-png": (lambda im: _with_alpha(im, "RGBA"), "PNG", "source"),
    "rgba-tiff": (lambda im: _with_alpha(im, "RGBA"), "TIFF", "source"),
    "cmyk-tiff": (lambda im: im.convert("CMYK"), "TIFF", "saved"),
    "lab-tiff": (lambda im: im.convert("LAB"), "TIFF", "saved"),
    "i16-png": (lambda im: Image.fromarray(_uint16(im)), "PNG", "gray"),
    "i16-tiff": (lambda im: Image.fromarray(_uint16(im)), "TIFF", "gray"),
    "i16b-tiff": (_i16b, "TIFF", "gray"),
    "i32-tiff": (lambda im: Image.fromarray(_uint16(im).astype(np.int32), "I"), "TIFF", "gray"),
    "float-tiff": (_float, "TIFF", "gray"),
}


def expected_rgb(source: Image.Image, saved: Image.Image, want: str) -> np.ndarray:
    if want == "source":
        return np.asarray(source, dtype=np.int16)
    if want == "gray":
        return np.asarray(source.convert("L").convert("RGB"), dtype=np.int16)
    return np.asarray(
        saved.convert("RGBA").convert("RGB"), dtype=np.int16
    )  # RGBA: no palette warning


LOSSY: dict[str, tuple[Callable[[Image.Image], Image.Image], str]] = {
    "rgb-jpeg": (lambda im: im, "JPEG"),
    "rgb-webp": (lambda im: im, "WEBP"),
    "gray-jpeg": (lambda im: im.convert("L"), "JPEG"),
    "cmyk-jpeg": (lambda im: im.convert("CMYK"), "JPEG"),
}


@pytest.mark.parametrize("case", MODES)
@pytest.mark.parametrize("name", PHOTOS)
def test_photo_in_any_lossless_mode_loads_as_the_pixels_it_holds(tmp_path, name, case):
    make, fmt, expected = MODES[case]
    source = rgb(name)
    saved = make(source)
    path = tmp_path / f"{case}.{fmt.lower()}"
    saved.save(path, fmt)
    want = expected_rgb(source, saved, expected)
    np.testing.assert_array_equal(pixels_of(path), want)
    gray = np.asarray(Image.fromarray(want.astype(np.uint8)).convert("L"), dtype=np.int16)
    assert np.abs(pixels_of(path, 1) - gray).max() <= 1  # L straight or through RGB
    assert_model_inputs(load_usable([path], PRE), 1)
    assert_model_inputs(
        load_usable([path], Preprocess(size=(8, 12), channels=1)),
        1,
        Preprocess(size=(8, 12), channels=1),
    )


@pytest.mark.parametrize("case", LOSSY)
@pytest.mark.parametrize("name", PHOTOS)
def test_photo_in_a_lossy_format_loads_close_to_its_source(tmp_path, name, case):
    make, fmt = LOSSY[case]
    source = rgb(name)
    path = tmp_path / f"{case}.{fmt.lower()}"
    make(source).save(path, fmt, quality=95)
    want = expected_rgb(source, source, "gray" if "gray" in case else "source")
    assert np.abs(pixels_of(path) - want).mean() < 6  # JPEG/WebP noise on a 64x48 photo, of 255
    assert_model_inputs(load_usable([path], PRE), 1)


# EXIF orientation: the stored pixels are turned so that applying the tag gives the upright photo.

_UNDO = {  # orientation tag -> the turn that stores an upright photo under that tag
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def save_turned(upright: Image.Image, orientation: int, path: Path, fmt: str, **kw) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    upright.transpose(_UNDO[orientation]).save(path, fmt, exif=exif, **kw)


@pytest.mark.parametrize("orientation", sorted(_UNDO))
@pytest.mark.parametrize("name", ("chelsea", "astronaut", "camera"))
def test_exif_orientation_loads_the_upright_photo_exactly(tmp_path, name, orientation):
    upright = rgb(name)
    save_turned(upright, orientation, tmp_path / "turned.png", "PNG")
    loaded = pixels_of(tmp_path / "turned.png")
    np.testing.assert_array_equal(loaded, np.asarray(upright, dtype=np.int16))


@pytest.mark.parametrize("orientation", (3, 6, 8))
def test_exif_orientation_of_a_camera_jpeg_loads_upright(tmp_path, orientation):
    upright = rgb("coffee")
    save_turned(upright, orientation, tmp_path / "IMG_0001.JPG", "JPEG", quality=95)
    Image.fromarray(np.asarray(upright)).save(tmp_path / "upright.jpg", quality=95)
    assert (
        np.abs(pixels_of(tmp_path / "IMG_0001.JPG") - pixels_of(tmp_path / "upright.jpg")).mean()
        < 3
    )
    both = load_usable([tmp_path / "IMG_0001.JPG", tmp_path / "upright.jpg"], PRE)
    assert (both.x[0] - both.x[1]).abs().mean() < 0.02


def test_image_without_orientation_tag_loads_as_stored(tmp_path):
    upright = rgb("chelsea")
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "side.png")
    assert pixels_of(tmp_path / "side.png").shape == (64, 48, 3)


# Sizes and names.


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_tiny_images_load_at_the_configured_size(tmp_path, size, fmt):
    path = tmp_path / f"tiny.{fmt.lower()}"
    rgb("astronaut").resize(size).save(path, fmt)
    assert_model_inputs(load_usable([path], PRE), 1)


def test_a_6000x4000_photo_loads_under_pils_bomb_limit(tmp_path):
    path = tmp_path / "DSC_0042.JPG"
    rgb("rocket").resize((6000, 4000), Image.Resampling.NEAREST).save(path, quality=50)
    loaded = load_usable([path], PRE)
    assert loaded.skipped == ()
    assert_model_inputs(loaded, 1)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and that holds no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


NAMES = (
    "IMG_0001.JPG",
    "scan.JPEG",
    "shot.PNG",
    "my holiday photo.jpg",
    "  leading and trailing spaces .png",
    "café crème.jpeg",
    "фото кота.jpg",
    "写真 ☕.png",
    "emoji 😺.webp",
    "a'quote\"and$dollar.bmp",
    "really a png.jpg",
)


@pytest.mark.parametrize("name", NAMES)
def test_odd_file_names_and_extensions_are_listed_and_loaded(tmp_path, name):
    fmt = "PNG" if name.endswith("really a png.jpg") else None  # contents need not match the name
    rgb("coffee").save(tmp_path / name, fmt)
    assert list_images(tmp_path) == [tmp_path / name]
    loaded = load_usable(list_images(tmp_path), PRE)
    assert loaded.paths == (tmp_path / name,) and loaded.skipped == ()
    assert_model_inputs(loaded, 1)


# Bad files: each costs its own image, with a reason; the good files of the batch still load.


def _truncated(fmt: str, keep: float, **kw) -> Callable[[], bytes]:
    def make() -> bytes:
        b = encode(rgb("chelsea"), fmt, **kw)
        return b[: int(len(b) * keep)] if keep > 0 else b[:-1]

    return make


def _flip(fmt: str, at: int, value: int) -> Callable[[], bytes]:
    def make() -> bytes:
        b = bytearray(encode(rgb("chelsea"), fmt))
        b[at] = value
        return bytes(b)

    return make


BAD: dict[str, tuple[str, Callable[[], bytes] | None, str]] = {  # id: (file name, bytes, reason)
    "empty": ("empty.jpg", lambda: b"", "empty file"),
    "text": ("notes.jpg", lambda: b"shopping list: eggs, bread\n", "not an image"),
    "html": ("download.JPG", lambda: b"<!DOCTYPE html><html>403 Forbidden</html>", "not an image"),
    "zeros": ("zeros.png", lambda: bytes(4096), "not an image"),
    "jpeg-half": ("half.jpg", _truncated("JPEG", 0.5), "truncated"),
    "jpeg-header-only": ("head.jpg", _truncated("JPEG", 0.2), "truncated"),
    "jpeg-last-byte": ("almost.jpg", _truncated("JPEG", 0), "truncated"),
    "progressive-jpeg-half": ("prog.jpg", _truncated("JPEG", 0.5, progressive=True), "truncated"),
    "png-half": ("half.png", _truncated("PNG", 0.5), "truncated"),
    "gif-half": ("half.gif", _truncated("GIF", 0.5), "truncated"),
    "webp-half": ("half.webp", _truncated("WEBP", 0.5), "truncated"),
    "tiff-half": ("half.tif", _truncated("TIFF", 0.5), "truncated"),
    "bmp-half": ("half.bmp", _truncated("BMP", 0.5), "truncated"),
    "jpeg-bad-marker": ("marker.jpg", _flip("JPEG", 3, 0x7F), "corrupt JPEG"),
    "png-bad-crc": ("crc.png", _flip("PNG", 20, 0xFF), "corrupt PNG"),
    "heic": (
        "IMG_0002.jpg",
        lambda: b"\x00\x00\x00\x18ftypheic" + bytes(64),
        "unsupported format (HEIC or video)",
    ),
    "bomb": ("bomb.png", lambda: png_header_only(30000, 30000), "too large to decode safely"),
    "folder": ("folder.jpg", None, "not a file"),
}


def make_bad(folder: Path, case: str) -> Path:
    name, make, _ = BAD[case]
    path = folder / name
    if make is None:
        path.mkdir()
    else:
        path.write_bytes(make())
    return path


@pytest.mark.parametrize("case", BAD)
def test_bad_file_among_good_ones_is_skipped_with_its_reason(tmp_path, case):
    good = [tmp_path / "a good one.png", tmp_path / "z good one.jpg"]
    rgb("astronaut").save(good[0])
    rgb("coffee").save(good[1])
    bad = make_bad(tmp_path, case)
    loaded = load_usable([good[0], bad, good[1]], PRE)
    assert loaded.skipped == (Skipped(bad, BAD[case][2]),)
    assert loaded.paths == tuple(good) and loaded.kept == (0, 2)
    assert_model_inputs(loaded, 2)
    torch.testing.assert_close(loaded.x, load_inputs(good, PRE), rtol=0, atol=0)


@pytest.mark.parametrize("case", BAD)
def test_read_image_of_a_bad_file_raises_bad_image_a_user_error(tmp_path, case):
    bad = make_bad(tmp_path, case)
    with pytest.raises(BadImage) as err:
        read_image(bad)
    assert isinstance(err.value, UserError)
    assert err.value.reason == BAD[case][2]
    assert str(bad) in str(err.value) and BAD[case][2] in str(err.value)
    with pytest.raises(BadImage):
        load_inputs([bad], PRE)  # the raising API stays as it was


def test_missing_file_is_skipped_as_missing(tmp_path):
    loaded = load_usable([tmp_path / "gone.jpg"], PRE)
    assert loaded.skipped == (Skipped(tmp_path / "gone.jpg", "missing"),)


def test_mode_pil_cannot_convert_is_skipped_as_unsupported(tmp_path, monkeypatch):
    (tmp_path / "odd.png").write_bytes(b"stands for a file that decodes to mode La")
    monkeypatch.setattr(decoding, "_decode", lambda path: Image.new("La", (4, 4)))
    loaded = load_usable([tmp_path / "odd.png"], PRE)
    assert loaded.skipped == (Skipped(tmp_path / "odd.png", "unsupported colour mode La"),)


@pytest.mark.parametrize("load_truncated", [False, True])
@pytest.mark.parametrize("fmt", ["JPEG", "progressive JPEG", "PNG"])
def test_a_file_cut_anywhere_is_called_truncated(tmp_path, monkeypatch, fmt, load_truncated):
    """Wherever the cut falls, and even where someone let PIL pad truncated images with grey."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    b = encode(rgb("camera").resize((16, 12)), fmt.split()[-1], progressive="prog" in fmt)
    end = len(b) - (21 if fmt == "PNG" else 0)  # cut in its last checksums, a PNG has all pixels
    path = tmp_path / "cut.img"
    reasons = set()
    for cut in sorted({*range(8, end, 7), *range(end - 24, end)}):  # 8: the PNG signature
        path.write_bytes(b[:cut])
        with pytest.raises(BadImage) as err:
            read_image(path)
        reasons.add(err.value.reason)
    assert reasons == {"truncated"}


def test_batch_of_only_bad_files_is_empty_and_lists_them_all(tmp_path):
    bad = [make_bad(tmp_path, case) for case in ("empty", "text", "jpeg-half")]
    loaded = load_usable(bad, PRE)
    assert loaded.x.shape == (0, 3, 24, 32)
    assert loaded.paths == () and loaded.kept == ()
    assert [s.path for s in loaded.skipped] == bad


def test_empty_request_is_an_empty_batch():
    assert load_usable([], PRE).x.shape == (0, 3, 24, 32)


def test_skipped_warning_is_one_line_with_count_names_and_reasons():
    one = [Skipped(Path("/d/a.jpg"), "empty file")]
    assert skipped_warning(one) == "skipped 1 unreadable image: a.jpg (empty file)"
    five = [Skipped(Path(f"/d/{c}.jpg"), "truncated") for c in "abcde"]
    assert skipped_warning(five, show=2) == (
        "skipped 5 unreadable images: a.jpg (truncated), b.jpg (truncated), and 3 more"
    )
    assert skipped_warning([]) == ""
    odd = skipped_warning([Skipped(Path("two\nlines.jpg"), "not an image")])
    assert "\n" not in odd and "lines.jpg" in odd


# Fuzzing: whatever the bytes and the name, a file loads at the configured shape or is skipped.

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI does not flake
    database=None,
)
SUFFIXES = st.sampled_from(["", ".jpg", ".JPG", ".jpeg", ".png", ".PNG", ".tif", ".webp", ".bmp"])
FILE_NAMES = (
    st.tuples(
        st.text(
            st.characters(exclude_categories=("Cs",), exclude_characters="/\x00"),
            min_size=1,
            max_size=24,
        ),
        SUFFIXES,
    )
    .map("".join)
    .filter(lambda n: n not in (".", "..") and len(n.encode()) <= 200)
)


@functools.cache
def seeds() -> tuple[bytes, ...]:
    """Small real files of every format, for mutations to start from."""
    im = rgb("chelsea").resize((20, 15))
    exif = Image.Exif()
    exif[0x0112] = 6
    return (
        encode(im, "JPEG"),
        encode(im, "JPEG", progressive=True, exif=exif),
        encode(im, "PNG"),
        encode(im.convert("P"), "GIF"),
        encode(im, "BMP"),
        encode(im, "TIFF"),
        encode(im, "WEBP"),
        encode(Image.fromarray(_uint16(im)), "PNG"),
    )


def check_loads_or_skips(content: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        good, fuzzed = Path(tmp) / "good.png", Path(tmp) / "sub" / name
        rgb("coins").resize((8, 6)).save(good)
        fuzzed.parent.mkdir()
        fuzzed.write_bytes(content)
        loaded = load_usable([fuzzed, good], PRE)  # anything but BadImage escapes and fails
    assert good in loaded.paths
    assert len(loaded.paths) + len(loaded.skipped) == 2
    assert_model_inputs(loaded, len(loaded.paths))
    for s in loaded.skipped:
        assert s.path == fuzzed and s.reason
        assert "\n" not in skipped_warning(loaded.skipped)


@FUZZ
@given(content=st.binary(max_size=1024), name=FILE_NAMES)
def test_arbitrary_bytes_under_any_name_load_or_are_skipped(content, name):
    check_loads_or_skips(content, name)


@FUZZ
@given(
    seed=st.integers(0, len(seeds()) - 1),
    edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 2**20),
    name=FILE_NAMES,
)
def test_damaged_real_images_load_or_are_skipped(seed, edits, cut, name):
    b = bytearray(seeds()[seed])
    for at, value in edits:
        b[at % len(b)] = value
    check_loads_or_skips(bytes(b if cut is None else b[: cut % len(b)]), name)
