"""--reader: the cv2 reader gives exactly the HW3 sample code's input, the pil reader HW5's."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageOps
from torch import nn

from hw5lib.config import RunConfig
from hw5lib.errors import UserError
from hw5lib.inputs.images import load_inputs, load_usable, pixel_variants
from hw5lib.model.loading import LoadedModel
from hw5lib.model.preprocess import READERS, Preprocess
from hw5lib.run.subject import resolve_preprocess
from hw5lib.run.train import TrainConfig

EXIF_ORIENTATION = 0x0112
STATS = {"none": (None, None), "half": ((0.5,), (0.5,))}


@functools.cache
def photo(name: str) -> Image.Image:
    """A scikit-image photo (offline), shrunk to an odd, non-square size so resizing matters."""
    return Image.fromarray(getattr(skimage.data, name)()).resize((201, 157))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """JPEG and PNG photos, one gray, and one stored on its side with EXIF orientation 6."""
    root = tmp_path_factory.mktemp("photos")
    photo("astronaut").save(root / "astronaut.jpg", quality=90)
    photo("coffee").save(root / "coffee.png")
    photo("camera").save(root / "camera.png")  # 8-bit gray
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # as a phone saves a portrait shot
    turned = photo("chelsea").transpose(Image.Transpose.ROTATE_90)
    turned.save(root / "chelsea_turned.jpg", quality=90, exif=exif.tobytes())
    return sorted(root.iterdir())


def hw3_input(path: Path, pre: Preprocess) -> torch.Tensor:
    """The HW3 sample code's few lines, with the channel order and statistics of ``pre``."""
    h, w = pre.size
    if pre.channels == 1:
        img = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (w, h))[:, :, None]
    else:
        img = cv2.resize(cv2.imread(str(path)), (w, h))
        if pre.channel_order == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)
    if pre.mean is not None:
        x = (x - pre.mean[0]) / pre.std[0]
    return x


def hw5_input(path: Path, pre: Preprocess) -> torch.Tensor:
    """The HW5 sample code's PIL pipeline: upright, RGB, bilinear resize, scaled to [0,1]."""
    h, w = pre.size
    im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    a = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    x = torch.from_numpy(a).permute(2, 0, 1)
    x = x.flip(0) if pre.channel_order == "bgr" else x
    return x if pre.mean is None else (x - pre.mean[0]) / pre.std[0]


@pytest.mark.parametrize("stats", STATS)
@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_cv2_reader_equals_hw3_sample_code_exactly(photos, order, stats) -> None:
    mean, std = STATS[stats]
    pre = Preprocess(channel_order=order, mean=mean, std=std, reader="cv2")
    expected = torch.stack([hw3_input(p, pre) for p in photos])
    assert torch.equal(load_inputs(photos, pre), expected)


def test_cv2_reader_keeps_height_and_width_apart(photos) -> None:
    pre = Preprocess(size=(48, 80), reader="cv2")
    x = load_inputs(photos, pre)
    assert x.shape == (len(photos), 3, 48, 80)
    assert torch.equal(x, torch.stack([hw3_input(p, pre) for p in photos]))


def test_cv2_reader_of_a_gray_model_equals_imread_grayscale(photos) -> None:
    pre = Preprocess(size=(64, 64), channels=1, reader="cv2")
    assert torch.equal(load_inputs(photos, pre), torch.stack([hw3_input(p, pre) for p in photos]))


def test_cv2_reader_turns_exif_photo_upright(photos) -> None:
    pre = Preprocess(reader="cv2")
    turned = next(p for p in photos if "turned" in p.name)
    upright = turned.with_name("chelsea_upright.png")
    photo("chelsea").save(upright)
    x = load_inputs([turned, upright], pre)
    assert (x[0] - x[1]).abs().mean() < 0.03  # only JPEG's loss apart, not rotated


@pytest.mark.parametrize("stats", STATS)
@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_pil_reader_is_the_hw5_pil_pipeline(photos, order, stats) -> None:
    mean, std = STATS[stats]
    pre = Preprocess(channel_order=order, mean=mean, std=std, reader="pil")
    assert torch.equal(load_inputs(photos, pre), torch.stack([hw5_input(p, pre) for p in photos]))


@pytest.mark.parametrize(
    ("reader", "interpolation"), [("cv2-cubic", cv2.INTER_CUBIC), ("cv2-area", cv2.INTER_AREA)]
)
def test_cv2_resize_variants_equal_cv2_resize_with_that_interpolation(
    photos, reader, interpolation
) -> None:
    pre = Preprocess(size=(48, 80), channel_order="rgb", reader=reader)
    expected = [
        cv2.resize(cv2.imread(str(p))[:, :, ::-1], (80, 48), interpolation=interpolation)
        for p in photos
        if "turned" not in p.name  # cv2.imread turns it upright as the reader does, checked above
    ]
    kept = [p for p in photos if "turned" not in p.name]
    x = torch.from_numpy(np.stack(expected).astype(np.float32) / 255).permute(0, 3, 1, 2)
    assert torch.equal(load_inputs(kept, pre), x)
    linear = load_inputs(kept, replace(pre, reader="cv2"))
    assert (linear - x).abs().max() > 0.01  # another resize, other pixels


def test_one_decode_gives_every_readers_pixels(photos) -> None:
    pre = Preprocess(size=(40, 40))
    variants = pixel_variants(photos[0], pre, READERS)
    for reader in READERS:
        alone = load_inputs([photos[0]], replace(pre, reader=reader, channel_order="rgb"))
        assert torch.equal(torch.from_numpy(variants[reader]).permute(2, 0, 1), alone[0])


def test_readers_see_different_pixels(photos) -> None:
    cv, pil = (load_inputs(photos, Preprocess(reader=r)) for r in ("cv2", "pil"))
    assert (cv - pil).abs().max() > 0.1  # why the reader must match training


def test_cv2_reader_resizes_csv_rows_with_cv2(tmp_path: Path) -> None:
    gray = np.asarray(photo("camera").resize((48, 48)))
    csv = tmp_path / "fer2013.csv"
    csv.write_text("emotion,pixels,Usage\n3," + " ".join(map(str, gray.ravel())) + ",Training\n")
    x = load_inputs([tmp_path / "fer2013.csv#0"], Preprocess(size=(64, 64), channels=1))
    expected = cv2.resize(gray, (64, 64), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    assert torch.equal(x[0, 0], torch.from_numpy(expected))


def test_bad_files_are_skipped_with_the_same_reason_by_both_readers(photos, tmp_path) -> None:
    whole = photos[0].read_bytes()
    bad = {"empty.jpg": b"", "404.jpg": b"<html>404 Not Found</html>\n", "cut.jpg": whole[:-900]}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    paths = [photos[0], *(tmp_path / n for n in bad), tmp_path / "gone.jpg", photos[1]]
    cv, pil = (load_usable(paths, Preprocess(reader=r)) for r in ("cv2", "pil"))
    assert cv.kept == pil.kept == (0, len(paths) - 1)
    assert cv.skipped == pil.skipped
    assert [s.reason for s in cv.skipped] == ["empty file", "not an image", "truncated", "missing"]


def test_preprocess_defaults_to_cv2_but_old_checkpoints_read_with_pil() -> None:
    assert Preprocess().reader == "cv2"  # the HW3 sample code
    old = Preprocess(channel_order="rgb").to_dict()
    del old["reader"]  # as hw5.py train wrote it before the reader was recorded
    assert Preprocess.from_dict(old).reader == "pil"
    pre = Preprocess(reader="cv2")
    assert pre.to_dict()["reader"] == "cv2" and Preprocess.from_dict(pre.to_dict()) == pre


def test_unknown_reader_is_a_user_error() -> None:
    with pytest.raises(UserError, match="reader"):
        Preprocess(reader="skimage")


def test_train_reads_and_records_pil_by_default(tiny_checkpoint: Path) -> None:
    assert TrainConfig(data=Path("d"), out=Path("o")).preprocess.reader == "pil"
    meta = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["hw5"]
    assert meta["preprocess"]["reader"] == "pil"


def loaded(pre: Preprocess | None) -> LoadedModel:
    return LoadedModel(nn.Identity(), None, pre, {}, "")


@pytest.mark.parametrize(
    ("flag", "recorded", "expected"),
    [("cv2", "pil", "cv2"), ("pil", "cv2", "pil"), (None, "pil", "pil"), (None, None, "cv2")],
)
def test_reader_flag_beats_checkpoint_which_beats_default(flag, recorded, expected) -> None:
    cfg = RunConfig(data=None, out=Path("out"), checkpoint=Path("c.pt"), reader=flag)
    pre = Preprocess(reader=recorded) if recorded else None
    assert resolve_preprocess(cfg, loaded(pre), 3).reader == expected
