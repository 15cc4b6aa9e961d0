"""File lists, image reading, preprocessing, checkpoint loading, layer lookup and atomic outputs."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hw5lib.errors import UserError
from hw5lib.inputs.datasets import find_split, label_of, list_images, load_split
from hw5lib.inputs.decoding import read_image
from hw5lib.methods.attributions import input_gradient
from hw5lib.methods.cam import grad_cam, layer_cam
from hw5lib.model.checkpoints import read_checkpoint
from hw5lib.model.classifier_args import infer_classifier_args
from hw5lib.model.layers import gradient_copy, resolve_layer, same_activation_model
from hw5lib.model.loading import load_classifier, save_checkpoint
from hw5lib.model.preprocess import Preprocess
from hw5lib.report.outputs import atomic_write_bytes, npz_bytes
from model import Classifier
from tests.zoo import ResidualNet, seeded_

NARROW = {"widths": [4, 6, 8, 8, 10], "hidden": [12, 14], "num_classes": 5, "input_size": 32}


def narrow_classifier(seed: int = 0, **overrides) -> Classifier:
    with torch.random.fork_rng():  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        model = Classifier(**{**NARROW, **overrides}).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a lost buffer shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model


def assert_same_weights(loaded: nn.Module, model: nn.Module) -> None:
    """Every parameter and buffer (BatchNorm statistics included) arrived unchanged."""
    got, want = loaded.state_dict(), model.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


# datasets.py: file lists


def test_list_images_is_sorted_whatever_the_creation_order(tmp_path):
    names = ["9_1.jpg", "10_0.png", "0_3.JPG", "0_10.jpeg", "b.bmp", "a.webp"]
    for name in names:  # created unsorted
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "1_1.jpg").write_bytes(b"")  # only files directly in the folder
    got = [p.name for p in list_images(tmp_path)]
    assert got == sorted(names)


def test_list_images_skips_folders_named_like_images(tmp_path):
    (tmp_path / "1_1.jpg").write_bytes(b"")
    (tmp_path / "album.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["1_1.jpg"]


def test_list_images_of_a_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="missing"):
        list_images(tmp_path / "missing")


def test_label_of_parses_food11_names_and_returns_none_for_test_names():
    assert label_of(Path("3_12.jpg")) == 3
    assert label_of(Path("/data/validation/10_0.jpg")) == 10
    assert label_of(Path("0001.jpg")) is None
    assert label_of(Path("3_x.jpg")) is None


def test_load_split_keeps_labels_aligned_with_sorted_paths(tmp_path):
    for name in ("5_1.jpg", "2_0.jpg", "0001.jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    split = load_split(tmp_path)
    assert [p.name for p in split.paths] == ["0001.jpg", "2_0.jpg", "5_1.jpg"]
    assert split.labels == (None, 2, 5)


def test_find_split_prefers_validation_then_training(tmp_path):
    assert find_split(tmp_path) == tmp_path  # a flat folder of images is its own split
    (tmp_path / "testing").mkdir()
    assert find_split(tmp_path) == tmp_path / "testing"
    (tmp_path / "training").mkdir()
    assert find_split(tmp_path) == tmp_path / "training"
    (tmp_path / "validation").mkdir()
    assert find_split(tmp_path) == tmp_path / "validation"
    with pytest.raises(UserError, match="nowhere"):
        find_split(tmp_path / "nowhere")


# images.py: reading images


def rgb_array(h: int = 6, w: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_read_image_reads_rgb_jpeg(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(rgb_array()).save(path, quality=95)
    im = read_image(path)
    assert im.mode == "RGB" and im.size == (5, 6)
    assert read_image(path, channels=1).mode == "L"


def test_read_image_repeats_grayscale_png_into_three_channels(tmp_path):
    gray = rgb_array()[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    a = np.asarray(read_image(tmp_path / "g.png"))
    assert a.shape == (6, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(a[..., c], gray)
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "g.png", 1)), gray)


def test_read_image_drops_alpha_of_rgba_png_without_compositing(tmp_path):
    rgb = rgb_array()
    alpha = np.zeros((6, 5, 1), dtype=np.uint8)  # fully transparent: colours must survive
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(tmp_path / "t.png")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "t.png")), rgb)


def test_read_image_expands_palette_png_to_its_colours(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    expected = np.array(palette, dtype=np.uint8).reshape(3, 3)[idx]
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "p.png")), expected)


def test_read_image_scales_16_bit_png_down_instead_of_clipping(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")  # really 16-bit on disk
    a = np.asarray(read_image(tmp_path / "d.png"))
    expected = np.round(values / 65535 * 255).astype(np.uint8)  # [0, 1, 128, 255]
    assert a.shape == (1, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(a[..., c], expected)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_read_image_of_a_broken_file_raises_user_error_naming_it(tmp_path, kind):
    path = tmp_path / f"broken_{kind}.jpg"
    if kind == "garbage":
        path.write_bytes(b"this is not an image at all")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        buf = io.BytesIO()
        Image.fromarray(rgb_array(64, 64)).save(buf, "JPEG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UserError) as err:
        read_image(path)
    assert str(path) in str(err.value)


# data.py: preprocessing


def pixels(n: int = 2, channels: int = 3) -> torch.Tensor:
    return torch.rand(n, channels, 4, 5, generator=torch.Generator().manual_seed(3))


def test_bgr_preprocessing_flips_channels_relative_to_rgb():
    p = pixels()
    rgb = Preprocess(channel_order="rgb").normalize(p)
    bgr = Preprocess(channel_order="bgr").normalize(p)
    torch.testing.assert_close(rgb, p)
    torch.testing.assert_close(bgr, p[:, [2, 1, 0]])


def test_mean_and_std_apply_in_model_channel_order():
    p = pixels()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    x = Preprocess(channel_order="bgr", mean=mean, std=std).normalize(p)
    for c in range(3):  # model channel c is display channel 2 - c
        torch.testing.assert_close(x[:, c], (p[:, 2 - c] - mean[c]) / std[c])


@pytest.mark.parametrize("order", ["rgb", "bgr"])
@pytest.mark.parametrize(
    "stats", [(None, None), ((0.4, 0.5, 0.6), (0.2, 0.3, 0.4)), ((0.5,), (0.25,))]
)
def test_denormalize_inverts_normalize(order, stats):
    pre = Preprocess(channel_order=order, mean=stats[0], std=stats[1])
    p = pixels()
    torch.testing.assert_close(pre.denormalize(pre.normalize(p)), p, atol=1e-6, rtol=0)


def test_denormalize_inverts_normalize_for_gray():
    pre = Preprocess(channels=1, mean=(0.5,), std=(0.2,))
    p = pixels(channels=1)
    torch.testing.assert_close(pre.denormalize(pre.normalize(p)), p, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channel_order": "rbg"}, "rbg"),
        ({"channels": 2}, "2"),
        ({"mean": (0.1, 0.2)}, "mean"),
        ({"std": (0.0,)}, "std"),
    ],
)
def test_bad_preprocess_settings_raise_user_error(kwargs, match):
    with pytest.raises(UserError, match=match):
        Preprocess(**kwargs)


def test_preprocess_round_trips_through_dict():
    pre = Preprocess(
        size=(64, 48), channels=3, channel_order="rgb", mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0)
    )
    assert Preprocess.from_dict(pre.to_dict()) == pre


# models.py, checkpoints.py: loading checkpoints


@pytest.mark.parametrize("wrap", ["bare", "course"])
def test_narrow_checkpoint_loads_with_widths_inferred_from_shapes(tmp_path, wrap):
    model = narrow_classifier()
    state = model.state_dict()
    path = tmp_path / "model.pth"
    torch.save(state if wrap == "bare" else {"model_state_dict": state, "epoch": 3}, path)
    loaded = load_classifier(path)
    assert loaded.architecture == {**NARROW, "in_channels": 3}
    assert not loaded.model.training
    assert loaded.classes is None and loaded.preprocess is None
    assert len(loaded.sha256) == 64
    assert_same_weights(loaded.model, model)


def test_gray_checkpoint_infers_one_input_channel(tmp_path):
    model = narrow_classifier(in_channels=1)
    torch.save(model.state_dict(), tmp_path / "gray.pth")
    loaded = load_classifier(tmp_path / "gray.pth")
    assert loaded.architecture["in_channels"] == 1
    assert_same_weights(loaded.model, model)


def test_infer_classifier_args_recovers_the_hw3_defaults():
    state = {k: torch.empty(v.shape) for k, v in Classifier().state_dict().items()}
    args = infer_classifier_args(state)
    assert args == {
        "widths": [64, 128, 256, 512, 512],
        "hidden": [1024, 512],
        "num_classes": 11,
        "in_channels": 3,
        "input_size": 128,
    }


def test_mismatched_checkpoint_names_missing_key_and_both_shapes_on_one_line(tmp_path):
    state = narrow_classifier().state_dict()
    del state["fc.4.bias"]
    state["cnn.1.weight"] = torch.ones(5)  # BatchNorm of width 4 given 5 values
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError) as err:
        load_classifier(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "\n" not in msg
    assert "fc.4.bias" in msg
    assert "cnn.1.weight" in msg and "(5,)" in msg and "(4,)" in msg


@pytest.mark.parametrize("trust", [False, True])
def test_pickled_whole_classifier_loads_weights_only_with_or_without_trust(tmp_path, trust):
    model = narrow_classifier()
    path = tmp_path / "whole.pt"
    torch.save(model, path)  # pickled as model.Classifier (tests/test_checkpoints.py: others)
    loaded = load_classifier(path, trust_pickle=trust)
    assert type(loaded.model) is Classifier
    assert loaded.architecture["unpickler"] == "weights_only"
    assert loaded.architecture["input_size"] == 32
    assert_same_weights(loaded.model, model)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_compile_and_data_parallel_prefixes_are_stripped(tmp_path, prefix):
    model = narrow_classifier()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": state}, tmp_path / "p.pth")
    loaded = load_classifier(tmp_path / "p.pth")
    assert_same_weights(loaded.model, model)


def test_save_checkpoint_round_trips_architecture_preprocess_and_classes(tmp_path):
    model = narrow_classifier(seed=4)
    pre = Preprocess(size=(32, 32), channel_order="rgb", mean=(0.5, 0.4, 0.3), std=(0.2,) * 3)
    classes = ["a", "b", "c", "d", "e"]
    path = tmp_path / "out" / "ckpt.pth"
    save_checkpoint(path, model, dict(NARROW), pre, classes)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]
    loaded = load_classifier(path)
    assert loaded.architecture == NARROW
    assert loaded.preprocess == pre
    assert loaded.classes == tuple(classes)
    assert_same_weights(loaded.model, model)
    # still the course's format: a plain weights-only load finds model_state_dict
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw["model_state_dict"]) == set(model.state_dict())


@pytest.mark.parametrize("content", [None, b"", b"definitely not a checkpoint", b"PK\x03\x04junk"])
def test_missing_or_corrupt_checkpoint_is_a_user_error(tmp_path, content):
    path = tmp_path / "ckpt.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=r"ckpt\.pth"):
        read_checkpoint(path)


def test_checkpoint_that_is_not_a_state_dict_is_a_user_error(tmp_path):
    torch.save({"weights": [1, 2, 3]}, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="state_dict"):
        load_classifier(tmp_path / "odd.pth")


# layers.py: layer lookup


@pytest.mark.parametrize("spec", ["15", "cnn[15]", "cnn.15", " cnn.15 "])
def test_resolve_layer_accepts_index_bracket_and_dotted_names(spec):
    model = narrow_classifier()
    name, layer = resolve_layer(model, spec)
    assert name == "cnn.15"
    assert layer is model.cnn[15]


def test_resolve_layer_reaches_named_layers_outside_cnn():
    model = narrow_classifier()
    assert resolve_layer(model, "fc.2")[1] is model.fc[2]
    assert resolve_layer(model, "fc[2]")[1] is model.fc[2]


@pytest.mark.parametrize("spec", ["cnn.99", "99", "head", ""])
def test_unknown_layer_raises_user_error_listing_choices(spec):
    with pytest.raises(UserError) as err:
        resolve_layer(narrow_classifier(), spec)
    msg = str(err.value)
    assert "cnn.15" in msg and "fc.0" in msg


# outputs.py


ARRAYS = {
    "saliency": np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4),
    "labels": np.array([3, 1, 4], dtype=np.int64),
    "flags": np.array([True, False]),
}


def test_npz_bytes_are_identical_across_calls_and_clock_times(monkeypatch):
    first = npz_bytes(ARRAYS)
    later = time.time() + 10 * 365 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: later)  # a zip stamped "now" would change
    monkeypatch.setattr(time, "localtime", lambda *_: time.gmtime(later))
    assert npz_bytes(ARRAYS) == first
    assert npz_bytes(dict(reversed(list(ARRAYS.items())))) == first  # key order is irrelevant


def test_npz_bytes_round_trip_through_np_load():
    with np.load(io.BytesIO(npz_bytes(ARRAYS)), allow_pickle=False) as z:
        assert sorted(z.files) == sorted(ARRAYS)
        for k, v in ARRAYS.items():
            assert z[k].dtype == v.dtype
            np.testing.assert_array_equal(z[k], v)
    with zipfile.ZipFile(io.BytesIO(npz_bytes(ARRAYS))) as zf:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())


def test_atomic_write_replaces_content_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "deep" / "report.bin"
    atomic_write_bytes(path, b"first version, longer than the second")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["report.bin"]


def test_atomic_write_that_fails_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "keep.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "text, not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.bin"]


def test_gradient_copy_folds_batchnorm_and_keeps_the_input_gradient() -> None:
    # float64 so that the comparison tests the algebra, not float32 rounding.
    model = seeded_(ResidualNet(), 3).double().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 3, 5, 10])
    fast = gradient_copy(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3  # untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    torch.testing.assert_close(
        input_gradient(fast, x, target), input_gradient(model, x, target), rtol=1e-10, atol=1e-12
    )
    # It keeps the model's memory layout: channels_last is what makes the CPU convs fast.
    nhwc = gradient_copy(model.to(memory_format=torch.channels_last), x)
    conv = nhwc.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_gradient_copy_is_the_model_itself_when_folding_would_be_wrong() -> None:
    x = torch.randn(2, 3, 16, 16)
    training = seeded_(ResidualNet(), 3).train()
    assert gradient_copy(training, x) is training  # batch statistics: not an affine map
    bn_first = nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)
    ).eval()
    bn_first(x)
    assert gradient_copy(bn_first, x) is bn_first  # no conv -> BatchNorm pair to fold


def test_cams_on_the_folded_copy_match_the_model_except_at_folded_layers() -> None:
    model = seeded_(ResidualNet(), 5).double().eval()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 4, 9])
    fast = gradient_copy(model, x)
    assert same_activation_model(model, fast, "stem.0") is model  # the folded conv
    assert same_activation_model(model, fast, "stem.1") is model  # its BatchNorm
    assert same_activation_model(model, None, "stem.2") is model  # no copy made
    for layer in ("stem.2", "stage.1"):  # a ReLU, and a residual block holding folded pairs
        assert same_activation_model(model, fast, layer) is fast
        for fn in (grad_cam, layer_cam):
            torch.testing.assert_close(
                fn(fast, x, target, layer), fn(model, x, target, layer), rtol=1e-9, atol=1e-12
            )
