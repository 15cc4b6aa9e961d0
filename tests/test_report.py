"""report.pdf: structure, text, images, layout bounds, determinism and atomic writes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader

from hw5lib.report.notes import parse_notes
from hw5lib.report.pdf import CUTS_HEADING, NOTES_HEADING, write_report
from hw5lib.report.pdf_layout import format_cell, latin1
from hw5lib.report.pdf_tables import FIGURES_HEADING, FULL_RECORD, TRUST_HEADING, key_parameters
from hw5lib.report.sections import QUESTIONS, SECTION_HEADINGS, section_heading

# (id, section, width px, height px): wide, square, very tall, and an appendix figure.
# q4_gradcam has an alpha channel, as matplotlib's PNGs do (fpdf stores it as a soft mask).
FIGURES = [
    ("q1_saliency", "Q1", 600, 300),
    ("q2_filters", "Q2", 640, 160),
    ("q2_activations", "Q2", 300, 300),
    ("q3_lime", "Q3", 500, 250),
    ("q4_tall", "Q4", 120, 1400),
    ("q4_gradcam", "Q4", 400, 260),
    ("appendix_grid", "Appendix", 300, 200),
]
CLASSES = ["bread", "dairy product", "crème brûlée ≥ 日本 — “x”", "egg"]
TRUST = {
    "columns": ["method", "deletion AUC", "insertion AUC", "randomization rank corr.", "flagged"],
    "rows": [
        ["Saliency", 0.12345, 0.55, None, False],
        ["Grad-CAM", 0.25, 0.5, 0.021, True],
    ],
    "notes": "Lower deletion AUC is better; flagged maps survive model randomization.",
}


def _make_figures(out_dir: Path) -> list[dict[str, Any]]:
    """Write small noise PNGs and return their manifest entries."""
    rng = np.random.default_rng(0)
    figures = []
    for fid, section, w, h in FIGURES:
        channels = 4 if fid == "q4_gradcam" else 3
        pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        Image.fromarray(pixels).save(out_dir / f"{fid}.png")
        figures.append(
            {
                "id": fid,
                "section": section,
                "title": f"Title of {fid}",
                "caption": f"Caption of {fid}: 31.2% of the mask, AUC 0.123 ≥ 0.054. " * 6,
                "png": f"{fid}.png",
                "npz": f"{fid}.npz",
                "params": {"layer": "cnn.8"},
            }
        )
    return figures


def _manifest(out_dir: Path) -> dict[str, Any]:
    return {
        "tool": {"name": "hw5", "version": "0.1.0"},
        "run": {
            "seed": 0,
            "device": "cpu",
            "python": "3.11.7",
            "torch": "2.3.0",
            "platform": "Linux-x86_64",
            "command": "hw5.py report data/sample out",
        },
        "model": {"name": "Classifier", "parameters": 123456, "input": [3, 128, 128]}
        | {"classes": CLASSES},
        "checkpoint": {"file": "sample.pt", "sha256": "ab12" * 16},
        "dataset": {"root": "data/sample", "explained_split": "validation", "images": 88},
        "preprocess": {"size": 128, "channel_order": "rgb", "mean": None, "std": None},
        "figures": _make_figures(out_dir),
        "accuracy": {
            "overall": 0.93,
            "per_class": [0.9, 0.8, 0.75, 1.0],
            "evaluated": 88,
            "subset": "all of validation/",
        },
        "top_confusions": [{"true": "bread", "pred": "egg", "count": 3}],
        "trust": TRUST,
        "cuts": ["DeepDream skipped: 41 s left of the budget."],
        "outputs": {"q1_saliency.png": "cd34" * 16},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Path]:
    """One full report shared by the read-only tests: (manifest, out_dir, pdf path)."""
    out_dir = tmp_path_factory.mktemp("out")
    manifest = _manifest(out_dir)
    path = out_dir / "report.pdf"
    write_report(manifest, out_dir, path)
    return manifest, out_dir, path


def _text(path: Path) -> str:
    """All pages' text, whitespace collapsed so wrapped lines still match."""
    reader = PdfReader(path)
    return re.sub(r"\s+", " ", " ".join(page.extract_text() for page in reader.pages))


def test_report_opens_and_every_page_has_text(built: tuple[dict, Path, Path]) -> None:
    reader = PdfReader(built[2])
    assert len(reader.pages) >= 6  # title page, Q1..Q4, appendix
    for number, page in enumerate(reader.pages, start=1):
        assert f"page {number} of {len(reader.pages)}" in page.extract_text()


def test_question_headings_appear_in_order(built: tuple[dict, Path, Path]) -> None:
    text = _text(built[2])
    starts = [text.find(SECTION_HEADINGS[q].split(":")[0] + ":") for q in QUESTIONS]
    assert all(s >= 0 for s in starts)
    assert starts == sorted(starts)
    assert text.find(SECTION_HEADINGS["Appendix"], starts[-1]) < text.find(FIGURES_HEADING)


def test_every_figure_title_appears_numbered_in_manifest_order(
    built: tuple[dict, Path, Path],
) -> None:
    text = _text(built[2])
    positions = [text.find(f"Figure {k}. Title of {fid}") for k, (fid, *_) in enumerate(FIGURES, 1)]
    assert all(p >= 0 for p in positions)
    assert positions == sorted(positions)


def test_embeds_one_image_per_figure(built: tuple[dict, Path, Path]) -> None:
    reader = PdfReader(built[2])
    assert sum(len(page.images) for page in reader.pages) == len(FIGURES)


def test_images_stay_inside_the_page_margins(built: tuple[dict, Path, Path]) -> None:
    reader = PdfReader(built[2])
    placed = 0
    for page in reader.pages:
        width, height = float(page.mediabox.width), float(page.mediabox.height)
        content = page.get_contents().get_data().decode("latin-1")
        for m in re.finditer(r"([\d.]+) 0 0 ([\d.]+) ([\d.-]+) ([\d.-]+) cm /I\d+ Do", content):
            w, h, x, y = map(float, m.groups())
            assert 0 < x < width - w and 0 < y < height - h
            placed += 1
    assert placed == len(FIGURES)


def test_tall_figure_is_scaled_to_fit_not_cropped(built: tuple[dict, Path, Path]) -> None:
    reader = PdfReader(built[2])
    sizes = []
    for page in reader.pages:
        content = page.get_contents().get_data().decode("latin-1")
        sizes += [
            tuple(map(float, m)) for m in re.findall(r"([\d.]+) 0 0 ([\d.]+) [\d.-]+ ", content)
        ]
    ratios = sorted(h / w for w, h in sizes)
    assert ratios[-1] == pytest.approx(1400 / 120, rel=0.01)  # aspect kept
    assert max(h for _, h in sizes) < float(reader.pages[0].mediabox.height)


def test_heading_is_not_left_alone_when_its_first_figure_is_tall(
    built: tuple[dict, Path, Path],
) -> None:
    reader = PdfReader(built[2])
    q4 = SECTION_HEADINGS["Q4"].split(":")[0]
    page = next(p for p in reader.pages if q4 in p.extract_text())
    assert len(page.images) == 1  # q4_tall shrank a little to share the heading's page


def test_two_builds_are_byte_identical(built: tuple[dict, Path, Path], tmp_path: Path) -> None:
    manifest, out_dir, first = built
    second = tmp_path / "again.pdf"
    write_report(manifest, out_dir, second)
    data = second.read_bytes()
    assert data == first.read_bytes()
    assert b"/CreationDate (D:20000101" in data


def test_trust_table_values_are_formatted(built: tuple[dict, Path, Path]) -> None:
    text = _text(built[2])
    assert TRUST_HEADING in text
    assert text.find(TRUST_HEADING) > text.find(SECTION_HEADINGS["Q4"].split(":")[0])
    assert "Saliency 0.123 0.550 - no" in text
    assert "Grad-CAM 0.250 0.500 0.021 yes" in text
    assert "0.12345" not in text
    assert TRUST["notes"] in text


def test_q3_lists_accuracy_per_class_and_confusions(built: tuple[dict, Path, Path]) -> None:
    text = _text(built[2])
    q3, q4 = (text.find(SECTION_HEADINGS[q].split(":")[0]) for q in ("Q3", "Q4"))
    assert q3 < text.find("Overall accuracy: 93.0% on 88 images") < q4
    assert q3 < text.find("dairy product 80.0%") < q4
    assert q3 < text.find("bread egg 3") < q4


def test_cuts_are_printed_before_the_appendix(built: tuple[dict, Path, Path]) -> None:
    text = _text(built[2])
    assert text.find(CUTS_HEADING) < text.find("DeepDream skipped: 41 s left of the budget.")
    assert text.find(CUTS_HEADING) < text.find(FIGURES_HEADING)


def _appendix_pages(path: Path) -> list[str]:
    """The text of the pages from the appendix's first page on."""
    reader = PdfReader(path)
    first = next(o for o in reader.outline if not isinstance(o, list) and o.title == "Appendix")
    start = reader.get_destination_page_number(first)
    return [re.sub(r"\s+", " ", p.extract_text()) for p in reader.pages[start:]]


def test_appendix_is_one_table_of_the_figures_not_a_json_dump(
    built: tuple[dict, Path, Path],
) -> None:
    manifest, _, path = built
    pages = _appendix_pages(path)
    assert len(pages) <= 2
    appendix = " ".join(pages)
    table = appendix[appendix.find(FIGURES_HEADING) :]
    positions = [table.find(f["id"] + " ") for f in manifest["figures"]]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
    assert "q1_saliency Title of q1_saliency layer=cnn.8 " + "cd34" * 3 + " " in table
    assert FULL_RECORD in appendix
    text = _text(path)
    assert '"outputs": {' not in text and '"sha256": "' not in text


def test_key_parameters_keep_short_values_and_summarise_long_lists() -> None:
    params = {"layer": "cnn.18", "samples": [600, 700, 1000, 600, 600], "steps": 80}
    params |= {"files": [f"{i}.jpg" for i in range(12)], "unexplained": {"a.jpg": "zero"}}
    assert key_parameters(params) == "layer=cnn.18; samples=600-1000; steps=80"
    assert key_parameters({"layers": ["cnn.2", "cnn.6"], "filters": [[0, 1], [2, 3]]}) == (
        "layers=cnn.2,cnn.6"
    )
    assert key_parameters({}) == "-"
    assert len(key_parameters({f"k{i}": "v" * 12 for i in range(20)})) <= 60


NOTES = """# My HW5 report

## Q1. Saliency
Saliency first paragraph, about q1_saliency,
soft-wrapped over two lines.

Saliency second paragraph: ≥ 2 “classes”.

## Q3
LIME paragraph.
"""


def test_notes_paragraphs_close_their_sections_in_order(
    built: tuple[dict, Path, Path], tmp_path: Path
) -> None:
    manifest, out_dir, _ = built
    path = tmp_path / "report.pdf"
    write_report(manifest, out_dir, path, parse_notes(NOTES, "NOTES.md"))
    text = _text(path)
    q1, q2, q3, q4 = (text.find(SECTION_HEADINGS[q].split(":")[0] + ":") for q in QUESTIONS)
    first = text.find("Saliency first paragraph, about q1_saliency, soft-wrapped over two lines.")
    second = text.find('Saliency second paragraph: >= 2 "classes".')
    lime = text.find("LIME paragraph.")
    last_q1_figure = text.find("Figure 1. Title of q1_saliency")
    assert q1 < last_q1_figure < text.find(NOTES_HEADING, q1) < first < second < q2
    assert text.find("Most frequent confusions") < text.find(NOTES_HEADING, q3) < lime < q4
    assert text.count(NOTES_HEADING + " ") == 2  # no heading for a section without notes
    assert "My HW5 report" not in text


def test_non_latin1_class_name_is_replaced_not_fatal(built: tuple[dict, Path, Path]) -> None:
    text = _text(built[2])
    assert 'crème brûlée >= ?? - "x"' in text


def test_minimal_manifest_without_optional_parts_still_builds(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    write_report({"figures": []}, tmp_path, path)
    text = _text(path)
    assert all(SECTION_HEADINGS[q].split(":")[0] in text for q in QUESTIONS)
    assert TRUST_HEADING not in text and CUTS_HEADING not in text


def test_missing_png_prints_caption_without_crashing(tmp_path: Path) -> None:
    fig = {"id": "gone", "section": "Q1", "title": "Lost figure", "caption": "c", "png": "x.png"}
    path = tmp_path / "report.pdf"
    write_report({"figures": [fig]}, tmp_path, path)
    assert "Figure 1. Lost figure" in _text(path)
    assert sum(len(p.images) for p in PdfReader(path).pages) == 0


def test_rewrite_replaces_report_atomically_without_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(b"old report")
    write_report({"figures": [], "cuts": ["first"]}, tmp_path, path)
    first = path.read_bytes()
    write_report({"figures": [], "cuts": ["second"]}, tmp_path, path)
    assert path.read_bytes().startswith(b"%PDF") and path.read_bytes() != first
    assert "second" in _text(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]


def test_latin1_maps_symbols_and_replaces_the_rest() -> None:
    assert latin1("3 × 4 ≥ 2 — ok…") == "3 x 4 >= 2 - ok..."
    assert latin1("café ő 日\x07") == "café o ? "
    latin1("".join(map(chr, range(0x2000, 0x2400)))).encode("latin-1")  # never raises


def test_format_cell_formats_floats_none_and_bools() -> None:
    assert [format_cell(v) for v in (0.12345, None, True, False, 7, "x")] == [
        "0.123",
        "-",
        "yes",
        "no",
        "7",
        "x",
    ]


def test_failed_replace_keeps_old_report_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(b"old report")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("hw5lib.report.pdf.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report({"figures": []}, tmp_path, path)
    assert path.read_bytes() == b"old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]


def test_q4_heading_names_the_methods_the_run_drew() -> None:
    drawn = {"q4_smoothgrad", "q4_shap", "q4_deepdream"}
    assert section_heading("Q4", drawn) == (
        "Q4. Other methods: what do SmoothGrad, SHAP and DeepDream show?"
    )
    assert "SHAP" not in section_heading("Q4", {"q4_smoothgrad", "q4_grad_cam"})
    assert "SHAP" in section_heading("Q4", set())  # no figure: the question as asked
    assert section_heading("Q1", drawn) == SECTION_HEADINGS["Q1"]
