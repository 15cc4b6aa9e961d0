"""audit.pdf from a real audit of the small sample set: the per-class table, a page per flagged
class with its reason, the same bytes twice, maps only when the images are gone; and report.pdf's
Q3 audit table when a report runs into the folder of an audit of the same checkpoint."""

from __future__ import annotations

import copy
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from pypdf import PdfReader

from hw5lib.cli import audit_lines, main
from hw5lib.inputs.sample import SampleInfo
from hw5lib.report.audit_pdf import audit_pdf_bytes
from hw5lib.report.audit_tables import audit_heading, audit_overview
from hw5lib.run.manifest import audit_summary

# a cheap report: few samples, one Q2 layer, no trust checks (as tests/test_cli.py's LIGHT)
CHEAP = ["--lime-samples", "40", "--filter-steps", "5", "--smooth-samples", "4", "--ig-steps",
         "4", "--per-class", "1", "--no-trust", "--filter-layers", "2"]  # fmt: skip
REASON = "attribution 61% in one corner (uniform 6%, 4% in the rest of the class)"


@pytest.fixture(scope="module")
def audited(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """OUT after ``hw5.py audit`` of the small sample's validation split."""
    out = tmp_path_factory.mktemp("audit") / "out"
    argv = ["audit", str(small_sample.root), str(out), "--checkpoint", str(tiny_checkpoint)]
    assert main([*argv, "--quiet", "--device", "cpu"]) == 0
    return out


def pdf_pages(data: bytes) -> list[str]:
    """Each page's text, whitespace collapsed so wrapped lines still match."""
    return [re.sub(r"\s+", " ", p.extract_text()) for p in PdfReader(io.BytesIO(data)).pages]


def class_pages(data: bytes) -> list[str]:
    """The start of each per-class page's heading, in page order."""
    found = [re.match(r"Class .+? \((flagged|none flagged)", p) for p in pdf_pages(data)]
    return [m.group(0) for m in found if m]


def flagged_copy(record: dict, name: str) -> dict:
    """``record`` with the first cluster of class ``name`` flagged for REASON."""
    flagged = copy.deepcopy(record)
    cls = next(c for c in flagged["classes"] if c["name"] == name)
    cls["clusters"][0] |= {"flagged": True, "reason": REASON}
    flagged["flagged"] = [{"class": name, "cluster": 0, "reason": REASON}]
    return flagged


def test_audit_writes_a_pdf_whose_summary_names_every_class(
    audited: Path, small_sample: SampleInfo
) -> None:
    data = (audited / "audit.pdf").read_bytes()
    record = json.loads((audited / "audit.json").read_text())
    first = pdf_pages(data)[0]
    for name in small_sample.classes:
        assert name in first
    assert record["model"]["sha256"][:12] in first and "Every class" in first
    # none flagged (a tiny model, two images a class): the three worst classes get a page each
    assert record["flagged"] == []
    worst = sorted(record["classes"], key=lambda c: c["accuracy"])[:3]
    assert class_pages(data) == [f"Class {c['name']} (none flagged" for c in worst]
    assert "Lapuschkin" in pdf_pages(data)[-1]
    assert "audit.json, audit.pdf and shards/" in audit_lines(record, audited)[0]


def test_each_flagged_class_gets_a_page_with_its_reason(
    audited: Path, small_sample: SampleInfo
) -> None:
    record = json.loads((audited / "audit.json").read_text())
    name = small_sample.classes[4]
    data = audit_pdf_bytes(flagged_copy(record, name), audited.parent / "none")
    assert class_pages(data) == [f"Class {name} (flagged"]  # that class alone
    pages = pdf_pages(data)
    page = next(p for p in pages if p.startswith(f"Class {name} (flagged)"))
    assert REASON in page and "FLAGGED" not in page  # FLAGGED: in the figure, an image
    assert REASON in pages[0]  # the summary lists every flag's reason too
    row = re.search(rf"{re.escape(name)} \d+ \S+ \d+\*? .*?(YES|no)", pages[0])
    assert row is not None and row.group(1) == "YES"


def test_audit_pdf_is_the_same_bytes_twice_and_draws_maps_without_images(
    audited: Path, small_sample: SampleInfo
) -> None:
    record = json.loads((audited / "audit.json").read_text())
    split = small_sample.root / "validation"
    with_images = audit_pdf_bytes(record, split)
    assert with_images == audit_pdf_bytes(record, split)
    assert with_images == (audited / "audit.pdf").read_bytes()  # what the command wrote
    for root in (None, audited / "gone"):
        maps_only = audit_pdf_bytes(record, root)
        assert maps_only.startswith(b"%PDF") and maps_only != with_images
        assert len(pdf_pages(maps_only)) == len(pdf_pages(with_images))


def test_audit_summary_only_for_the_same_checkpoint(audited: Path) -> None:
    record = json.loads((audited / "audit.json").read_text())
    summary = audit_summary(audited, record["model"]["sha256"])
    assert summary == audit_overview(record)
    assert [c["name"] for c in summary["classes"]] == [c["name"] for c in record["classes"]]
    assert audit_summary(audited, "0" * 64) is None
    assert audit_summary(audited / "nowhere", record["model"]["sha256"]) is None


def test_report_into_an_audits_folder_shows_its_table_in_q3(
    audited: Path, small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    base = ["report", str(small_sample.root), "--checkpoint", str(tiny_checkpoint)]
    assert main([*base[:2], str(audited), *base[2:], *CHEAP, "--quiet", "--device", "cpu"]) == 0
    alone = tmp_path / "alone"
    assert main([*base[:2], str(alone), *base[2:], *CHEAP, "--quiet", "--device", "cpu"]) == 0

    record = json.loads((audited / "audit.json").read_text())
    heading = audit_heading(audit_overview(record))
    assert heading == "Every validation image: per-class strategies (hw5.py audit)"
    manifest = json.loads((audited / "manifest.json").read_text())
    assert manifest["audit"] == audit_overview(record)
    text = " ".join(pdf_pages((audited / "report.pdf").read_bytes()))
    at = text.index(heading)
    assert text.index("Q3. LIME") < at < text.index("Q4. Other methods")  # in Q3's section
    table = text[at : text.index("Q4. Other methods")]
    for c in record["classes"]:
        assert re.search(rf"{re.escape(c['name'])} {c['size']} \d+% ", table)

    assert "audit" not in json.loads((alone / "manifest.json").read_text())
    assert heading not in " ".join(pdf_pages((alone / "report.pdf").read_bytes()))


def test_a_failure_to_draw_costs_the_pdf_not_audit_json(
    audited: Path, small_sample: SampleInfo, tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from hw5lib.audit import command

    def broken(audit: dict, split_root: Path | None) -> bytes:
        raise ValueError("no figure today")

    out = audited.parent / "broken"
    shutil.copytree(audited, out)  # a stale audit.pdf there must go: it describes another audit
    monkeypatch.setattr(command, "audit_pdf_bytes", broken)
    argv = ["audit", str(small_sample.root), str(out), "--checkpoint", str(tiny_checkpoint)]
    assert main([*argv, "--quiet", "--device", "cpu"]) == 0
    assert (out / "audit.json").read_bytes() == (audited / "audit.json").read_bytes()
    assert not (out / "audit.pdf").exists()
    assert "audit.pdf not written (ValueError: no figure today)" in caplog.text
    line = capsys.readouterr().out.splitlines()[0]
    assert line.endswith("audit.json and shards/") and "audit.pdf" not in line
