"""Image CSVs of every layout students have: FER2013's ``emotion,pixels,Usage``, the 2019
course's ``label,feature`` and unlabelled ``id,feature``, any square side, integer or float
pixels in [0,255] or [0,1]. Each layout runs ``hw5.py report --preset expression`` end to end
with a model whose Linear only fits the CSV's own side."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pypdf import PdfReader

from hw5lib.cli import main
from hw5lib.errors import BadImage, UserError
from hw5lib.inputs.datasets import label_of, open_dataset
from hw5lib.inputs.image_csv import csv_row_image, read_csv_images
from tests.csv_models import TinyExpressionNet

MODEL = Path(__file__).with_name("csv_models.py")
FAST = ["--lime-samples", "30", "--filter-steps", "3", "--smooth-samples", "3", "--ig-steps", "4"]
FAST += ["--quiet", "--filters-per-layer", "2"]
EVERY_FIGURE = {
    "q1_saliency",
    "q2_filters",
    "q3_lime",
    "q4_smoothgrad",
    "q4_grad_x_input",
    "q4_integrated_gradients",
    "q4_grad_cam",
    "q4_layercam",
    "q4_feature_maps",
    "q4_deepdream",
}


def gray_rows(n: int, side: int, seed: int) -> np.ndarray:
    """(n, side*side) gray values in [0,255], seeded: smooth blobs, not noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side
    centers = rng.uniform(0.2, 0.8, size=(n, 2))
    blobs = np.exp(
        -((yy - centers[:, 0, None, None]) ** 2 + (xx - centers[:, 1, None, None]) ** 2) * 20
    )
    return (blobs * 255).round().reshape(n, -1)


def pixel_text(values: np.ndarray, style: str) -> str:
    """One row's pixels as a student's CSV writes them: ``int`` (FER2013), ``float255``
    ("127.0 ..."), ``unit`` ("0.498 ..." in [0,1])."""
    if style == "int":
        return " ".join(str(int(v)) for v in values)
    if style == "float255":
        return " ".join(f"{v:.1f}" for v in values)
    return " ".join(f"{v / 255:.6f}" for v in values)


def write_csv(path: Path, header: str, side: int, style: str, rows: int = 14) -> np.ndarray:
    """A CSV of ``rows`` images of ``side`` x ``side``, labels 0..6 in turn (ids for an
    ``id,`` header), FER2013's Usage column where the header names it. Returns the pixels."""
    pixels = gray_rows(rows, side, seed=side)
    lines = [header]
    for i, values in enumerate(pixels):
        first = str(i) if header.startswith("id") else str(i % 7)
        usage = ",Training" if i < rows // 2 else ",PublicTest"
        lines.append(f"{first},{pixel_text(values, style)}" + (usage if "Usage" in header else ""))
    path.write_text("\n".join(lines) + "\n")
    return pixels


def checkpoint(path: Path, side: int) -> Path:
    """A seeded random TinyExpressionNet for ``side`` x ``side`` inputs, as a bare state_dict
    (no recorded preprocessing: the side must come from the CSV)."""
    with torch.random.fork_rng():
        torch.manual_seed(side)
        torch.save(TinyExpressionNet(side).state_dict(), path)
    return path


LAYOUTS = [  # header, side, pixel style, labelled
    ("emotion,pixels,Usage", 48, "int", True),
    ("label,feature", 44, "unit", True),
    ("label,feature", 64, "float255", True),
    ("id,feature", 48, "int", False),
]


@pytest.mark.parametrize(("header", "side", "style", "labelled"), LAYOUTS)
def test_csv_layout_is_read_at_its_own_side_and_scale(
    tmp_path: Path, header: str, side: int, style: str, labelled: bool
) -> None:
    path = tmp_path / "train.csv"
    pixels = write_csv(path, header, side, style)
    table = read_csv_images(path)
    assert (table.side, table.unit) == (side, style == "unit")
    split = open_dataset(path)
    labels = [i % 7 for i in range(len(pixels))] if labelled else [None] * len(pixels)
    if "Usage" in header:  # the explained split is FER2013's PublicTest rows
        labels = labels[len(pixels) // 2 :]
    assert list(split.labels) == labels
    image = np.asarray(csv_row_image(Path(f"{path}#3")))
    assert image.shape == (side, side)
    # [0,1] floats come back as the 8-bit gray values they were written from
    np.testing.assert_array_equal(image, pixels[3].reshape(side, side).astype(np.uint8))


@pytest.mark.parametrize(("header", "side", "style", "labelled"), LAYOUTS)
def test_expression_preset_runs_every_csv_layout_end_to_end(
    tmp_path: Path, capsys, header: str, side: int, style: str, labelled: bool
) -> None:
    data = tmp_path / ("test.csv" if not labelled else "train.csv")
    write_csv(data, header, side, style)
    ckpt = checkpoint(tmp_path / "fer.pth", side)
    out = tmp_path / "out"
    args = ["report", data, out, "--preset", "expression", "--checkpoint", ckpt]
    args += ["--model", f"{MODEL}:TinyExpressionNet", "--model-args", json.dumps({"side": side})]
    assert main([*map(str, args), *[a for a in FAST if a != "--quiet"]]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    scale = "[0,1], scaled by 255" if style == "unit" else "[0,255]"
    said = f"hw5: {data.name}: 14 rows ({header}) of {side}x{side} gray pixels in {scale}"
    assert said in err.splitlines()  # what the file was read as, in one line
    title = re.sub(r"\s+", " ", PdfReader(out / "report.pdf").pages[0].extract_text())
    top = 1 if style == "unit" else 255
    assert f"CSV 14 rows ({header}) of {side}x{side} gray pixels in [0,{top}]" in title
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["input"] == [1, side, side]
    assert man["dataset"]["csv"] == {
        "layout": header,
        "rows": 14,
        "side": side,
        "pixel_range": [0, 1] if style == "unit" else [0, 255],
    }
    assert man["model"]["classes"][3] == "Happy"
    figures = {p.stem for p in out.glob("*.png")}
    assert figures >= EVERY_FIGURE
    assert ("q3_confusion" in figures) == labelled  # an id,feature file has no labels to score
    with np.load(out / "q1_saliency.npz") as z:
        assert z["input"].shape[1:] == (1, side, side)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("label,feature\n0," + " ".join(["1"] * 2000) + "\n", "2000 pixels, which is no square"),
        ("label,image\n0," + " ".join(["1"] * 16) + "\n", "has no column of pixels"),
        ("emotion,pixels\n0," + " ".join(["300"] * 16) + "\n", "pixel values run from 300 to 300"),
        ("label,feature\n0," + " ".join(["a"] * 16) + "\n", "other than numbers"),
        ("label,feature\nhappy," + " ".join(["1"] * 16) + "\n", "label 'happy' is not a class"),
        ("label,feature\n", "no rows"),
    ],
)
def test_a_malformed_csv_is_one_line_saying_what_is_wrong(
    tmp_path: Path, content: str, says: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=says) as caught:
        read_csv_images(path)
    assert "\n" not in str(caught.value)


def test_float_labels_as_pandas_writes_them_are_class_numbers(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("label,feature\n3.0," + " ".join(["0.5"] * 16) + "\n")
    table = read_csv_images(path)
    assert table.rows[0][0] == 3 and table.side == 4 and table.unit
    assert np.asarray(csv_row_image(Path(f"{path}#0"))).tolist() == [[128] * 4] * 4


def test_a_non_square_csv_stops_the_report_in_one_line(tmp_path: Path, capsys) -> None:
    data = tmp_path / "train.csv"
    data.write_text("label,feature\n0," + " ".join(["1"] * 2000) + "\n")
    ckpt = checkpoint(tmp_path / "fer.pth", 48)
    args = ["report", data, tmp_path / "out", "--preset", "expression", "--checkpoint", ckpt]
    args += ["--model", f"{MODEL}:TinyExpressionNet"]
    assert main([*map(str, args), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hw5: error: ") and "no square image" in err
    assert len(err.strip().splitlines()) == 1


def test_a_csv_saved_by_excel_with_a_byte_order_mark_reads_its_header(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbflabel,feature\r\n5," + b" ".join([b"7"] * 9) + b"\r\n")
    table = read_csv_images(path)
    assert (table.layout, table.side, table.rows[0][0]) == ("label,feature", 3, 5)


def test_a_csv_row_has_the_label_of_its_row(tmp_path: Path) -> None:
    """--training-indices into a CSV explain each row against its own label."""
    path = tmp_path / "train.csv"
    write_csv(path, "label,feature", 4, "int")
    assert [label_of(Path(f"{path}#{i}")) for i in (0, 3, 9)] == [0, 3, 2]


def test_a_row_of_another_length_is_one_unreadable_image_not_the_run(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    rows = ["0," + " ".join(["9"] * 16), "1," + " ".join(["9"] * 15), "2," + " ".join(["9"] * 16)]
    path.write_text("label,feature\n" + "\n".join(rows) + "\n")
    assert read_csv_images(path).side == 4
    with pytest.raises(BadImage, match="15 pixels, not 4x4") as caught:
        csv_row_image(Path(f"{path}#1"))
    assert caught.value.reason == "15 pixels, not 4x4"  # listed with the skipped images
    assert np.asarray(csv_row_image(Path(f"{path}#2"))).shape == (4, 4)
