"""Outputs carry no path of this machine: the same data, checkpoint and notes copied into two
other folders (other names, other depths) and explained into two output folders give
byte-identical manifest.json and report.pdf. Runs in-process through the CLI's own config,
with two cheap stages; the others record paths the same way (tests/test_cli.py)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from pypdf import PdfReader

from hw5lib import arguments
from hw5lib.inputs.sample import SampleInfo
from hw5lib.report.portable import portable_command, relative_name
from hw5lib.run.pipeline import run_report
from hw5lib.stages import q1_saliency, q3_confusion

NOTES = "## Q1\nThe object lights up in q1_saliency.\n"
STAGES = (q1_saliency.STAGE, q3_confusion.STAGE)  # the explained images, then every validation one


def place(small_sample: SampleInfo, checkpoint: Path, home: Path) -> tuple[Path, Path, Path]:
    """The data (with one unreadable image), the checkpoint, an extra image and the notes
    under ``home``; returns (data, checkpoint, extra image)."""
    data = home / "food"
    shutil.copytree(small_sample.root, data)
    (data / "validation" / "0_9.jpg").write_bytes(b"")  # skipped, and recorded as skipped
    shutil.copy(checkpoint, home / checkpoint.name)
    extra = home / "mine" / "extra.jpg"
    extra.parent.mkdir()
    shutil.copy(small_sample.root / "testing" / "0000.jpg", extra)
    (home / "NOTES.md").write_text(NOTES)
    return data, home / checkpoint.name, extra


def report(data: Path, checkpoint: Path, extra: Path, out: Path) -> Path:
    argv = ["report", str(data), "-o", str(out), f"--checkpoint={checkpoint}", "--images",
            str(extra), str(data / "testing" / "0001.jpg"), "--notes", str(data.parent / "NOTES.md"),
            "--per-class", "1", "--quiet"]  # fmt: skip
    run_report(
        arguments.report_config(arguments.parse_args(argv), argv), progress=False, stages=STAGES
    )
    return out


@pytest.fixture(scope="module")
def two_reports(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, list[Path]]:
    """Both output folders, and the folders each run's inputs lay in."""
    homes = [tmp_path_factory.mktemp("first_home"), tmp_path_factory.mktemp("x") / "b" / "c2"]
    outs = []
    for i, home in enumerate(homes):
        home.mkdir(parents=True, exist_ok=True)
        inputs = place(small_sample, tiny_checkpoint, home)
        outs.append(report(*inputs, home.parent / f"out_{i}" / "deep"))
    return outs[0], outs[1], homes


@pytest.mark.parametrize("name", ["manifest.json", "report.pdf"])
def test_copied_data_gives_byte_identical_outputs(
    two_reports: tuple[Path, Path, list[Path]], name: str
) -> None:
    first, second, _ = two_reports
    assert (first / name).read_bytes() == (second / name).read_bytes()


def test_outputs_name_no_folder_of_the_machine(two_reports: tuple[Path, Path, list[Path]]) -> None:
    first, _, homes = two_reports
    pdf = first / "report.pdf"
    text = " ".join(p.extract_text() for p in PdfReader(pdf).pages)
    for blob in (pdf.read_bytes().decode("latin-1"), text, (first / "manifest.json").read_text()):
        for folder in (homes[0].parent, *homes, first, Path(__file__).resolve().parent.parent):
            assert str(folder) not in blob
    assert "Explaining Classifier on food" in re.sub(r"\s+", " ", text)


def test_manifest_records_paths_by_data_relative_name_file_name_and_hash(
    two_reports: tuple[Path, Path, list[Path]],
) -> None:
    man = json.loads((two_reports[0] / "manifest.json").read_text())
    assert man["dataset"]["root"] == "food"
    assert man["dataset"]["images"][:2] == ["validation/0_0.jpg", "validation/1_0.jpg"]
    assert man["dataset"]["images"][-2:] == ["testing/0001.jpg", "extra.jpg"]  # --images, sorted
    assert man["parameters"]["images"] == ["extra.jpg", "testing/0001.jpg"]
    assert man["checkpoint"]["file"] == "tiny.pt" and len(man["checkpoint"]["sha256"]) == 64
    assert {"file": "validation/0_9.jpg", "reason": "empty file"} in man["skipped_images"]
    assert man["notes"] == {"sha256": hashlib.sha256(NOTES.encode()).hexdigest()}
    assert man["run"]["command"] == (
        "hw5.py report DATA -o OUT --checkpoint=tiny.pt --images extra.jpg testing/0001.jpg "
        "--notes NOTES.md --per-class 1"
    )


def test_command_labels_paths_but_never_numbers(tmp_path: Path) -> None:
    labels = {Path("2"): "DATA", Path("/x/out/"): "OUT"}
    argv = ["report", "2", "/x/out", "--filters", "2", "--out-dir=/x/out"]
    assert portable_command(argv, labels) == "report 2 OUT --filters 2 --out-dir=OUT"
    (tmp_path / "d").mkdir()
    assert relative_name(tmp_path / "d", tmp_path / "d" / ".." / "d" / "a.jpg") == "a.jpg"
    assert relative_name(tmp_path / "d", tmp_path / "e.jpg") == "e.jpg"
    assert relative_name(None, tmp_path / "e.jpg") == "e.jpg"
