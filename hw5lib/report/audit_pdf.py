"""audit.pdf from audit.json: what was audited and a per-class summary on page 1, every class's
mean map, then a page per flagged class (the worst classes by accuracy when none is) with its
strategies, its spectral embedding and each flag's reason, and how to read it.

Laid out with report.pdf's primitives (pdf_layout); the bytes depend on audit.json and the
audited images alone (fixed date, content-derived /ID, PNGs without metadata)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from hw5lib import __version__
from hw5lib.report.audit_figures import class_figure, embedding_figure, overview_figure
from hw5lib.report.audit_tables import (
    WHOLE_CLASS,
    add_audit_summary,
    audit_overview,
    is_flagged,
    percent,
)
from hw5lib.report.figures import png_bytes
from hw5lib.report.pdf import FIXED_DATE
from hw5lib.report.pdf_layout import ReportPDF, add_heading, add_paragraph, add_picture, latin1

WORST = 3  # classes shown when none is flagged: the lowest accuracies
SHA_PREFIX = 12
EMBEDDING_MM = 95.0  # the embedding plot's width on the page
HOW_TO_READ = (
    'SpRAy (spectral relevance analysis; Lapuschkin et al., "Unmasking Clever Hans predictors '
    'and assessing what machines really learn", Nature Communications 2019) groups the '
    "explanation maps of one class by similarity: a k-nearest-neighbour graph between the "
    "maps, the eigengap of its normalised Laplacian for the number of groups, k-means on the "
    "spectral embedding. Each group is a strategy the model uses for that class; its mean map "
    "shows where it looks, its typical images are those nearest the group's centre. A cluster "
    "is flagged when its attribution sits away from the object (in a corner, the corners, on "
    "the border, or off the object's mask) and its accuracy differs significantly from the rest "
    "of its class (Fisher's exact test); a whole class is flagged when its attribution sits "
    "away from the object compared with the other classes. A flag is a suspected shortcut, a "
    "place to look: a watermark, a frame or a background that predicts the label. It is not a "
    "proof: a flagged group may be a legitimate strategy (an object at the image's edge), and "
    "no flag does not prove the model sound (a shortcut on the object itself, or one every "
    "image of a class shares, leaves no contrast to find). Look at the typical images."
)


def _new_pdf(audit: dict) -> ReportPDF:
    """A document with fixed metadata (no varying dates), as report.pdf's."""
    pdf = ReportPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_margins(left=15, top=15, right=15)
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_creator(f"hw5 {__version__}")
    pdf.set_producer(f"hw5 {__version__}")
    data = audit.get("data") or {}
    pdf.set_title(latin1(f"hw5 audit: {data.get('name')}/{data.get('split')}"))
    return pdf


def _picture(pdf: ReportPDF, png: bytes, title: str, caption: str = "", **kw: float) -> None:
    with Image.open(io.BytesIO(png)) as im:
        add_picture(pdf, im, title, caption, **kw)


def what_was_audited(audit: dict) -> str:
    """The data, the model, the maps and how the images were grouped, in one paragraph."""
    data, model, settings = audit["data"], audit["model"], audit.get("settings") or {}
    skipped = [s["id"] for s in data.get("skipped") or []]
    split = data["split"] if data["split"] != "." else "(the folder itself)"
    named = f" ({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''})" if skipped else ""
    spec = f" ({model['model']})" if model.get("model") else ""
    side = settings.get("side")
    sentences = [
        f"Data: {data['name']}, split {split}: {data['images']} images audited, "
        f"{len(skipped)} unreadable image(s) skipped{named}.",
        f"Model: {model.get('checkpoint')}{spec}, sha256 {str(model.get('sha256'))[:SHA_PREFIX]}, "
        f"{len(model.get('classes') or [])} classes, CAM layer {model.get('cam_layer')}.",
        f"Maps: {', '.join(settings.get('maps') or [])} at {side} x {side} pixels; clustered: "
        f"{audit['clustered']}.",
        f"Images grouped by {audit['grouped_by']}"
        + ("" if audit["grouped_by"] == "label" else " (no labels: no accuracy)")
        + f"; object masks: {'yes' if audit.get('object_masks') else 'no'}.",
    ]
    if audit.get("accuracy") is not None:
        sentences.append(f"Overall accuracy: {percent(audit['accuracy'])}.")
    return " ".join(sentences)


def classes_shown(audit: dict) -> tuple[list[dict], str]:
    """The flagged classes, else the WORST classes by accuracy; and why they are shown."""
    classes = audit.get("classes") or []
    flagged = [c for c in classes if is_flagged(c)]
    if flagged:
        return flagged, "flagged"
    ranked = sorted(classes, key=lambda c: (c.get("accuracy") is None, c.get("accuracy") or 0.0))
    return ranked[:WORST], "none flagged: a lowest accuracy"


def class_reasons(audit: dict, cls: dict) -> list[str]:
    """Each flag of ``cls``: its cluster (or the whole class) and why."""
    lines = [
        f"Cluster {c['index']} ({c['size']} images, accuracy {percent(c.get('accuracy'))}): "
        f"{c.get('reason') or 'flagged'}"
        for c in cls.get("clusters") or []
        if c.get("flagged")
    ]
    whole = cls.get("whole_class") or {}
    if whole.get("flagged"):
        reason = (whole.get("reason") or "flagged").removeprefix(WHOLE_CLASS)
        lines.append(f"The whole class: {reason}")
    return lines


def _found_by(eigengap: dict | None) -> str:
    """How the number of strategies was chosen, when not by the eigengap."""
    if eigengap is None:
        return " (too few images for the spectral analysis)"
    if eigengap.get("found_by", "eigengap") != "eigengap":
        return (
            f", found by the {eigengap['found_by']} (the number the eigengap chose held no "
            "flagged cluster; this one does)"
        )
    return ""


def add_class_page(
    pdf: ReportPDF, audit: dict, cls: dict, why: str, split_root: Path | None
) -> None:
    pdf.add_page()
    add_heading(pdf, f"Class {cls['name']} ({why})")
    k = len(cls.get("clusters") or [])
    add_paragraph(
        pdf,
        f"{cls['size']} images, accuracy {percent(cls.get('accuracy'))}, {k} "
        f"strateg{'y' if k == 1 else 'ies'}" + _found_by(cls.get("eigengap")) + ".",
    )
    for line in class_reasons(audit, cls):
        add_paragraph(pdf, line)
    labelled = audit.get("grouped_by") == "label"
    _picture(
        pdf, png_bytes(class_figure(cls, split_root)), f"{cls['name']}: strategies",
        "Left: the mean map of the class, then of each cluster (title in red: flagged). "
        "Right of each cluster: its typical images, the files as audited.",
    )  # fmt: skip
    _picture(
        pdf, png_bytes(embedding_figure(cls, labelled)), f"{cls['name']}: spectral embedding",
        "One point per image, coloured by cluster; a cross: the model got it wrong.",
        width=EMBEDDING_MM,
    )  # fmt: skip


def audit_pdf_bytes(audit: dict, split_root: Path | None) -> bytes:
    """The whole of audit.pdf (deterministic for equal inputs). ``split_root``: the audited
    split's folder (DATA/<split>) for the typical images; None or missing files draw maps
    only."""
    pdf = _new_pdf(audit)
    pdf.add_page()
    data = audit["data"]
    add_heading(pdf, f"Audit of {data['name']}/{data['split']}: per-class strategies (SpRAy)")
    add_paragraph(pdf, what_was_audited(audit))
    add_heading(pdf, "Every class", level=1)
    add_audit_summary(pdf, audit_overview(audit))
    classes: Sequence[dict] = audit.get("classes") or []
    if classes:
        _picture(
            pdf, png_bytes(overview_figure(classes)), "Mean map of every class",
            "Title in red: a flagged class.",
        )  # fmt: skip
    shown, why = classes_shown(audit)
    for cls in shown:
        add_class_page(pdf, audit, cls, why, split_root)
    pdf.add_page()
    add_heading(pdf, "How to read this audit")
    add_paragraph(pdf, HOW_TO_READ)
    return bytes(pdf.output())
