"""audit.pdf's figures, drawn from audit.json's numbers alone (and the audited images, read as
the user's files are, when they are still there): a class's strategies (its mean map, each
cluster's mean map and typical images), its spectral embedding, every class's mean map."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, UnidentifiedImageError

from hw5lib.report.audit_tables import is_flagged, percent
from hw5lib.report.panels import finish, grid, show_note, unit_range

MAP_CMAP = "inferno"  # as the report's positive maps
FLAG_COLOR = "tab:red"
THUMBNAIL = 160  # pixels on the long side: enough for a 1.6-inch panel, small in the PDF
OVERVIEW_COLS = 6
TILE = 1.6  # inches per panel


def map_array(mean_map: Sequence[Sequence[float]]) -> np.ndarray:
    """An [S,S] mean map from audit.json, scaled to [0,1] for the colormap."""
    return unit_range(np.asarray(mean_map, dtype=np.float64)[None])[0]


def show_map(ax: plt.Axes, mean_map: Sequence[Sequence[float]]) -> None:
    ax.imshow(map_array(mean_map), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()


def thumbnail(split_root: Path | None, image_id: str) -> np.ndarray | None:
    """The audited file as the user has it (RGB, [H,W,3] in [0,1], at most THUMBNAIL px on
    its long side); None when there is no folder or the file is gone or unreadable."""
    if split_root is None:
        return None
    try:
        with Image.open(split_root / image_id) as im:
            rgb = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    rgb.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.float64) / 255.0


def cluster_title(cluster: dict) -> str:
    flag = ", FLAGGED" if cluster.get("flagged") else ""
    accuracy = percent(cluster.get("accuracy"))
    return f"cluster {cluster['index']}: {cluster['size']} images\naccuracy {accuracy}{flag}"


def location_note(location: dict) -> str:
    """Where the class's attribution sits, each share next to a uniform map's."""
    share, uniform = location.get("share") or {}, location.get("uniform") or {}
    parts = [
        f"{name} {percent(share[key])} (uniform {percent(uniform.get(key))})"
        for key, name in (
            ("centre", "centre"),
            ("border", "border"),
            ("corners", "corners"),
            ("corner", "one corner"),
            ("inside_object", "inside the object"),
        )
        if share.get(key) is not None
    ]
    return "Share of the class's attribution:\n" + "\n".join(parts)


def class_figure(cls: dict, split_root: Path | None, typical: int = 4) -> Figure:
    """Row 0: the class's mean map and where it sits; then one row per cluster: its mean map
    (flagged in red) and its typical images (a note where an image cannot be read)."""
    clusters = cls.get("clusters") or []
    cols = 1 + max([typical, *(len(c.get("typical_ids") or []) for c in clusters)])
    fig, axes = grid(1 + len(clusters), cols, tile=TILE)
    show_map(axes[0, 0], cls["mean_map"])
    axes[0, 0].set_title("the whole class", fontsize=8)
    note = axes[0, 1].text(
        0.0, 0.5, location_note(cls.get("location") or {}), fontsize=8, va="center",
        transform=axes[0, 1].transAxes, clip_on=False,
    )  # fmt: skip
    note.set_in_layout(False)  # it runs over the empty panels to its right
    for r, cluster in enumerate(clusters, start=1):
        show_map(axes[r, 0], cluster["mean_map"])
        color = FLAG_COLOR if cluster.get("flagged") else "black"
        axes[r, 0].set_title(cluster_title(cluster), fontsize=7, color=color)
        for c, image_id in enumerate((cluster.get("typical_ids") or [])[: cols - 1], start=1):
            image = thumbnail(split_root, image_id)
            if image is None:
                show_note(axes[r, c], f"{image_id}: not found", (THUMBNAIL, THUMBNAIL))
            else:
                axes[r, c].imshow(image)
            axes[r, c].set_title(Path(image_id).name, fontsize=6)
    finish(fig, f"Class {cls['name']}: its strategies (mean maps) and typical images")
    return fig


def correct_of(cls: dict, labelled: bool) -> np.ndarray:
    """Per image of the class: predicted as the class (always True when grouped by prediction)."""
    predicted = np.asarray(cls.get("predicted") or [], dtype=int)
    return predicted == cls["class"] if labelled else np.ones(len(predicted), dtype=bool)


def embedding_figure(cls: dict, labelled: bool = True) -> Figure:
    """The class's 2-D spectral embedding: a point per image, coloured by cluster, a cross
    where the model got it wrong."""
    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    points = np.asarray(cls.get("embedding") or [], dtype=np.float64).reshape(-1, 2)
    correct = correct_of(cls, labelled)
    cluster = np.zeros(len(points), dtype=int)
    for c in cls.get("clusters") or []:
        cluster[np.asarray(c["members"], dtype=int)] = c["index"]
    if cls.get("eigengap") is None or not len(points):
        ax.text(0.5, 0.5, "too few images for a spectral embedding: one group", ha="center",
                va="center", fontsize=9, transform=ax.transAxes)  # fmt: skip
        ax.set_axis_off()
    else:
        colors = plt.get_cmap("tab10")(cluster % 10)
        for ok, marker in ((True, "o"), (False, "x")):
            sel = correct == ok
            ax.scatter(points[sel, 0], points[sel, 1], c=colors[sel], marker=marker, s=22,
                       linewidths=1.2)  # fmt: skip
        handles = [
            Line2D(
                [],
                [],
                color=plt.get_cmap("tab10")(c["index"] % 10),
                marker="o",
                ls="",
                label=f"cluster {c['index']} ({c['size']})",
            )
            for c in cls.get("clusters") or []
        ]
        handles += [
            Line2D([], [], color="0.3", marker="o", ls="", label="right"),
            Line2D([], [], color="0.3", marker="x", ls="", label="wrong"),
        ]
        ax.legend(handles=handles, fontsize=7, loc="best", frameon=False)
        ax.set_xlabel("spectral coordinate 1", fontsize=8)
        ax.set_ylabel("spectral coordinate 2", fontsize=8)
        ax.tick_params(labelsize=7)
    k = (cls.get("eigengap") or {}).get("k", 1)
    ax.set_title(f"{cls['name']}: {len(points)} images, {k} strateg{'y' if k == 1 else 'ies'}",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def overview_figure(classes: Sequence[dict]) -> Figure:
    """Every class's mean map, small multiples; a flagged class's title in red."""
    cols = min(OVERVIEW_COLS, max(len(classes), 1))
    fig, axes = grid(max(math.ceil(len(classes) / cols), 1), cols, tile=1.2)
    for i, cls in enumerate(classes):
        ax = axes[i // cols, i % cols]
        show_map(ax, cls["mean_map"])
        title = f"{cls['name']}\n{cls['size']} img, acc {percent(cls.get('accuracy'))}"
        ax.set_title(title, fontsize=6, color=FLAG_COLOR if is_flagged(cls) else "black")
    finish(fig, "Mean map of every class")
    return fig
