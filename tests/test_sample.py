"""The synthetic sample set: reproducible bytes, Food-11 layout, masks, and class separability."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hsv

from hw5lib.inputs.masks import load_mask
from hw5lib.inputs.sample import SampleInfo, generate_sample
from hw5lib.inputs.sample_render import class_names

SMALL = {"training": 3, "validation": 1, "testing": 1}  # 55 images: seconds, all 11 classes


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its POSIX path relative to ``root``."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def food(tmp_path_factory: pytest.TempPathFactory) -> SampleInfo:
    return generate_sample(tmp_path_factory.mktemp("food") / "sample", seed=0, per_class=SMALL)


def labelled_items(info: SampleInfo) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(RGB uint8 [H,W,3], mask bool [H,W], label) for every training/validation image."""
    out = []
    for item in info.items:
        if item.image.startswith("testing/"):
            continue
        with Image.open(info.root / item.image) as im:
            pixels = np.asarray(im.convert("RGB"))
        out.append((pixels, load_mask(info.root, item.image), item.label))
    return out


def test_same_seed_gives_byte_identical_tree(food: SampleInfo, tmp_path: Path) -> None:
    again = generate_sample(tmp_path / "again", seed=0, per_class=SMALL)
    first, second = tree_hashes(food.root), tree_hashes(again.root)
    assert len(first) == 2 * 55 + 2  # images, masks, classes.txt, SAMPLE.json
    assert first == second


def test_other_seed_changes_every_image(food: SampleInfo, tmp_path: Path) -> None:
    other = tree_hashes(generate_sample(tmp_path / "other", seed=1, per_class=SMALL).root)
    base = tree_hashes(food.root)
    images = [k for k in base if k.endswith(".jpg")]
    assert sorted(images) == sorted(k for k in other if k.endswith(".jpg"))
    assert all(base[k] != other[k] for k in images)


def test_images_do_not_change_when_counts_change(food: SampleInfo, tmp_path: Path) -> None:
    fewer = generate_sample(tmp_path / "fewer", per_class={"training": 2, "validation": 0})
    base, small = tree_hashes(food.root), tree_hashes(fewer.root)
    shared = [k for k in small if k.startswith(("training/", "masks/training/"))]
    assert len(shared) == 2 * 11 * 2
    assert all(small[k] == base[k] for k in shared)


def test_food11_layout_and_file_names(food: SampleInfo) -> None:
    root = food.root
    assert sorted(p.name for p in root.iterdir()) == [
        "SAMPLE.json",
        "classes.txt",
        "masks",
        "testing",
        "training",
        "validation",
    ]
    for split, per_class in SMALL.items():
        names = sorted(p.name for p in (root / split).iterdir())
        assert len(names) == 11 * per_class
        if split == "testing":  # Food-11 testing images carry an id, not a label
            assert names == [f"{i:04d}.jpg" for i in range(11 * per_class)]
        else:
            expected = {f"{label}_{n}.jpg" for label in range(11) for n in range(per_class)}
            assert set(names) == expected
    assert not list(root.glob("training/**/*.png"))  # masks live beside the data, not in it
    assert (root / "classes.txt").read_text().splitlines() == list(class_names("food11"))
    assert len(set(food.classes)) == 11
    meta_text = (root / "SAMPLE.json").read_text()
    meta = json.loads(meta_text)
    assert list(meta) == sorted(meta)
    assert (meta["seed"], meta["mode"], meta["per_class"]) == (0, "food11", SMALL)
    assert meta["generator_version"] >= 1
    assert list(food.items) == sorted(food.items)
    assert {i.image for i in food.items} == {
        p.relative_to(root).as_posix() for p in root.rglob("*.jpg")
    }
    test_labels = sorted(i.label for i in food.items if i.image.startswith("testing/"))
    assert test_labels == list(range(11))


def test_default_counts_follow_food11_split_sizes(tmp_path: Path) -> None:
    info = generate_sample(tmp_path / "d", per_class={"training": 0, "validation": 0})
    assert len(info.items) == 11 * 2  # testing keeps its default of 2 per class
    assert json.loads((info.root / "SAMPLE.json").read_text())["per_class"] == {
        "testing": 2,
        "training": 0,
        "validation": 0,
    }


def test_every_image_has_a_mask_of_its_size_covering_3_to_50_percent(food: SampleInfo) -> None:
    for item in food.items:
        with Image.open(food.root / item.image) as im, Image.open(food.root / item.mask) as m:
            assert m.mode == "L" and m.size == im.size
            raw = np.asarray(m)
        assert set(np.unique(raw)) <= {0, 255}
        mask = load_mask(food.root, item.image)
        assert mask is not None and np.array_equal(mask, raw == 255)
        assert 0.03 <= mask.mean() <= 0.50, item.image
    absolute = load_mask(food.root, food.root / food.items[0].image)
    assert np.array_equal(absolute, load_mask(food.root, food.items[0].image))
    assert load_mask(food.root, "training/99_0.jpg") is None


def test_image_sizes_vary_and_are_not_all_square(food: SampleInfo) -> None:
    sizes = set()
    for item in food.items:
        with Image.open(food.root / item.image) as im:
            sizes.add(im.size)
    widths, heights = {w for w, _ in sizes}, {h for _, h in sizes}
    assert len(widths) > 5 and len(heights) > 5
    assert any(w != h for w, h in sizes)
    assert min(widths | heights) >= 96 and max(widths | heights) <= 192


def _mean_hue(pixels: np.ndarray, mask: np.ndarray) -> float:
    """Circular mean hue in degrees over the mask's interior (edges blend with the background)."""
    inner = ndimage.binary_erosion(mask, iterations=2)
    hue = rgb2hsv(pixels)[..., 0][inner] * 2 * np.pi
    return float(np.degrees(np.angle(np.exp(1j * hue).mean())) % 360)


def _hue_gap(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def test_each_class_object_has_its_own_hue(food: SampleInfo) -> None:
    hues = [(_mean_hue(pixels, mask), label) for pixels, mask, label in labelled_items(food)]
    centres = []
    for label in range(11):
        own = np.radians([h for h, lab in hues if lab == label])
        centres.append(float(np.degrees(np.angle(np.exp(1j * own).mean())) % 360))
    gaps = [_hue_gap(a, b) for i, a in enumerate(centres) for b in centres[i + 1 :]]
    assert min(gaps) > 20  # classes sit ~33 degrees apart
    for hue, label in hues:  # every single object is nearest to its own class
        assert int(np.argmin([_hue_gap(hue, c) for c in centres])) == label


def test_background_outside_the_mask_is_cluttered(food: SampleInfo) -> None:
    for pixels, mask, _ in labelled_items(food):
        outside = pixels[~mask].astype(float)  # [K, 3]
        assert outside.std(axis=0).mean() > 12
        # clutter is more than a smooth field: many distinct colours, sharp local changes
        gray = pixels.astype(float).mean(axis=2)
        edges = np.abs(np.diff(gray, axis=1))[~mask[:, 1:] & ~mask[:, :-1]]
        assert (edges > 25).sum() >= 20


def test_object_is_drawn_over_the_clutter(food: SampleInfo) -> None:
    """Every pixel inside the object keeps the object's colour: no clutter paints over it."""
    for pixels, mask, _ in labelled_items(food):
        hsv = rgb2hsv(pixels)
        inner = ndimage.binary_erosion(mask, iterations=2)
        hue = np.degrees(hsv[..., 0][inner] * 2 * np.pi)
        off = np.abs((hue - _mean_hue(pixels, mask) + 180) % 360 - 180)
        assert off.max() < 20 and hsv[..., 1][inner].min() > 0.35


def test_expression_mode_writes_fer2013_csv_with_48x48_rows(tmp_path: Path) -> None:
    counts = {"Training": 2, "PublicTest": 1}
    info = generate_sample(tmp_path / "fer", mode="expression", per_class=counts)
    with open(info.root / "fer2013.csv", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["emotion", "pixels", "Usage"]
        rows = list(reader)
    assert len(rows) == 7 * 3
    assert sorted({int(r[0]) for r in rows}) == list(range(7))
    assert [r[2] for r in rows] == ["Training"] * 14 + ["PublicTest"] * 7
    for index, (_, pixels, _) in enumerate(rows):
        values = np.array(pixels.split(" "), dtype=int)
        assert values.size == 48 * 48 and values.min() >= 0 and values.max() <= 255
        with Image.open(info.root / "masks" / f"{index}.png") as m:
            assert m.size == (48, 48) and m.mode == "L"
        mask = load_mask(info.root, f"fer2013.csv#{index}")
        assert mask is not None and 0.03 <= mask.mean() <= 0.5
    assert len(info.classes) == 7
    assert load_mask(info.root, "fer2013.csv#999") is None


def test_catdog_both_jpg_has_two_disjoint_masks(tmp_path: Path) -> None:
    info = generate_sample(tmp_path / "cd", mode="catdog", per_class={"train": 1, "val": 1})
    root = info.root
    assert info.classes == ("cat", "dog")
    for rel in ("train/cat/0000.jpg", "train/dog/0000.jpg", "val/cat/0000.jpg", "cat.jpg"):
        with Image.open(root / rel) as im:
            assert im.size == (224, 224) and im.mode == "RGB"
        assert load_mask(root, rel) is not None
    cat = load_mask(root, "both.jpg", label=0)
    dog = load_mask(root, "both.jpg", label=1)
    assert cat.shape == dog.shape == (224, 224)
    assert cat.any() and dog.any() and not (cat & dog).any()
    assert np.array_equal(load_mask(root, "both.jpg"), cat | dog)
    assert (root / "masks" / "both_cat.png").is_file() and (
        root / "masks" / "both_dog.png"
    ).is_file()
    assert [(i.label, i.mask) for i in info.items if i.image == "both.jpg"] == [
        (0, "masks/both_cat.png"),
        (1, "masks/both_dog.png"),
    ]


def test_regenerating_replaces_an_earlier_set_without_stale_files(tmp_path: Path) -> None:
    root = tmp_path / "s"
    generate_sample(root, per_class={"training": 2, "validation": 1, "testing": 0})
    generate_sample(root, per_class={"training": 1, "validation": 0, "testing": 0})
    assert not (root / "validation").exists() or not any((root / "validation").iterdir())
    assert not (root / "training" / "0_1.jpg").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp dirs left behind


def test_refuses_to_overwrite_a_directory_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        generate_sample(tmp_path, per_class={"training": 1})
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_rejects_unknown_mode_split_and_negative_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        generate_sample(tmp_path / "a", mode="cifar")
    with pytest.raises(ValueError, match="train"):
        generate_sample(tmp_path / "a", per_class={"train": 1})
    with pytest.raises(ValueError, match="seed"):
        generate_sample(tmp_path / "a", seed=-1)
    assert not any(tmp_path.iterdir())
