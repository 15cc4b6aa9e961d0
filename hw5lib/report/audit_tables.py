"""The audit's per-class summary, as audit.pdf's first page and report.pdf's Q3 show it: what
``audit_overview`` keeps of audit.json (the manifest records it) and the table drawn from that."""

from __future__ import annotations

from typing import Any

from fpdf import FPDF

from hw5lib.report.pdf_layout import add_heading, add_paragraph, add_table

AUDIT_JSON = "audit.json"  # what ``hw5.py audit DATA OUT`` writes into OUT
WHOLE_CLASS = "whole class: "  # how audit.json starts a whole class's reason (said here already)
# The shares a row shows, in this order, with their column names; one no class has (an
# audit without masks has no inside_object) gets no column.
SHARES = (
    ("corner", "one corner"),
    ("corners", "corners"),
    ("border", "border"),
    ("centre", "centre"),
    ("inside_object", "inside object"),
)


def is_flagged(cls: dict) -> bool:
    whole = cls.get("whole_class") or {}
    return bool(whole.get("flagged")) or any(c.get("flagged") for c in cls.get("clusters") or [])


def audit_overview(audit: dict) -> dict[str, Any]:
    """What the summary table and the flags need from audit.json: the data, each class's size,
    accuracy, number of strategies, attribution shares (with a uniform map's) and flag, and
    every flag's reason. Raises KeyError or TypeError on a record of another shape."""
    data = audit["data"]
    return {
        "data": {
            "name": data["name"],
            "split": data["split"],
            "images": data["images"],
            "skipped": len(data.get("skipped") or []),
        },
        "clustered": audit["clustered"],
        "grouped_by": audit["grouped_by"],
        "accuracy": audit.get("accuracy"),
        "classes": [
            {
                "name": c["name"],
                "images": c["size"],
                "accuracy": c.get("accuracy"),
                "strategies": len(c.get("clusters") or []),
                "analysed": c.get("eigengap") is not None,
                "share": dict((c.get("location") or {}).get("share") or {}),
                "uniform": dict((c.get("location") or {}).get("uniform") or {}),
                "flagged": is_flagged(c),
            }
            for c in audit["classes"]
        ],
        "flags": [
            {"class": f["class"], "cluster": f.get("cluster"), "reason": f.get("reason") or ""}
            for f in audit.get("flagged") or []
        ],
    }


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.0f}%"


def _share_cell(c: dict, key: str) -> str:
    """A share; inside the object, the mask's area (a uniform map's share) in brackets."""
    cell = percent(c["share"].get(key))
    if key == "inside_object" and c["share"].get(key) is not None:
        cell += f" ({percent(c['uniform'].get(key))})"
    return cell


def summary_rows(overview: dict[str, Any]) -> list[list[str]]:
    """The header and one row per class; inside-object shares with the mask's area (what a
    uniform map puts there) in brackets."""
    classes = overview.get("classes") or []
    shares = [
        (key, name) for key, name in SHARES if any(c["share"].get(key) is not None for c in classes)
    ]
    rows = [["class", "images", "accuracy", "strategies", *(n for _, n in shares), "flagged"]]
    for c in classes:
        cells = [_share_cell(c, key) for key, _ in shares]
        strategies = str(c["strategies"]) + ("" if c["analysed"] else "*")
        head = [c["name"], str(c["images"]), percent(c["accuracy"]), strategies]
        rows.append([*head, *cells, "YES" if c["flagged"] else "no"])
    return rows


def flag_lines(overview: dict[str, Any]) -> list[str]:
    """One line per flag: the class, the cluster (or the whole class) and why."""
    return [
        f"{f['class']}, "
        + ("the whole class" if f["cluster"] is None else f"cluster {f['cluster']}")
        + f": {f['reason'].removeprefix(WHOLE_CLASS)}"
        for f in overview.get("flags") or []
    ]


def uniform_note(overview: dict[str, Any]) -> str:
    """What the share columns mean, with a uniform map's shares for comparison."""
    classes = overview.get("classes") or []
    uniform = classes[0]["uniform"] if classes else {}
    masked = any(c["share"].get("inside_object") is not None for c in classes)
    one_corner = any(c["share"].get("corner") is not None for c in classes)
    parts = [
        f"{name} {percent(uniform[k])}" for k, name in SHARES[:4] if uniform.get(k) is not None
    ]
    note = (
        f"Shares of each class's mean {overview.get('clustered')} map: centre, border and "
        "corners sum to 1"
        + ("; 'one corner' is the largest single corner" if one_corner else "")
        + (" (its mass off the object)" if one_corner and masked else "")
        + ("; 'inside object' is the mass on the object's mask (the mask's area, what a "
           "uniform map puts there, in brackets)" if masked else "")
        + ". A uniform map puts "
        + ", ".join(parts)
        + " there"
    )  # fmt: skip
    if any(not c["analysed"] for c in classes):
        note += "; * too few images for the spectral analysis: one group"
    return note + "."


def add_audit_summary(pdf: FPDF, overview: dict[str, Any]) -> None:
    """The per-class table, what its columns mean, then every flag's reason (or none)."""
    rows = summary_rows(overview)
    align = ["LEFT"] + ["RIGHT"] * (len(rows[0]) - 2) + ["LEFT"]
    add_table(pdf, rows, size=8.0, text_align=align)
    add_paragraph(pdf, uniform_note(overview))
    lines = flag_lines(overview)
    if lines:
        add_paragraph(pdf, "Flagged as suspected shortcuts:\n" + "\n".join(f"- {t}" for t in lines))
    else:
        add_paragraph(
            pdf,
            "No cluster was flagged: no group of images whose attribution sits away from the "
            "object while its accuracy differs from the rest of its class.",
        )


def audit_heading(overview: dict[str, Any]) -> str:
    """ "Every validation image: ...", the split named as audit.json does ("." : DATA itself)."""
    split = (overview.get("data") or {}).get("split")
    images = "image" if split in (None, ".") else f"{split} image"
    return f"Every {images}: per-class strategies (hw5.py audit)"


def add_audit_section(pdf: FPDF, overview: dict[str, Any]) -> None:
    """report.pdf's Q3 subsection on an audit of this checkpoint in the same output folder."""
    add_heading(pdf, audit_heading(overview), level=1)
    data = overview["data"]
    accuracy = overview.get("accuracy")
    add_paragraph(
        pdf,
        f"hw5.py audit ran this checkpoint over all {data['images']} images of "
        f"{data['name']}/{data['split']}"
        + (f" ({data['skipped']} unreadable, skipped)" if data["skipped"] else "")
        + (f", accuracy {percent(accuracy)}" if accuracy is not None else "")
        + f", and grouped each class's {overview.get('clustered')} maps into strategies (SpRAy, "
        "Lapuschkin et al. 2019). audit.pdf, in this folder, shows the strategies and typical "
        "images of each flagged class (of the lowest accuracies when none is).",
    )
    add_audit_summary(pdf, overview)
