"""The audit's per-class summary: SpRAy (``spray``) over every image's maps of one method,
grouped by true label (by prediction where the data has no labels), and the whole as
audit.json records it: every number, no path of this machine, no backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hw5lib.audit.maps import ShardRecords
from hw5lib.audit.regions import DECIMALS
from hw5lib.audit.spray import ClassOutlier, ClassStrategies, class_outliers, class_strategies
from hw5lib.inputs.masks import load_mask

AUDIT_VERSION = 1


@dataclass(frozen=True)
class ClassAudit:
    """One class's images (in image order: the strategies' member indices point here), what
    the model predicted for each, and its strategies."""

    index: int
    name: str
    ids: tuple[str, ...]
    predicted: tuple[int, ...]
    strategies: ClassStrategies
    outlier: ClassOutlier
    labelled: bool

    def to_json(self) -> dict:
        found = self.strategies.to_json()
        for cluster in found["clusters"]:
            cluster["typical_ids"] = [self.ids[i] for i in cluster["typical"]]
            if not self.labelled:  # grouped by prediction: nothing to be right or wrong about
                cluster["accuracy"] = None
        if not self.labelled:
            found["accuracy"] = None
        return {
            "class": self.index,
            "name": self.name,
            **found,
            "whole_class": {"flagged": self.outlier.flagged, "reason": self.outlier.reason},
            "ids": list(self.ids),
            "predicted": list(self.predicted),
        }


@dataclass(frozen=True)
class Flag:
    """A suspected shortcut: a cluster of a class (``cluster`` None: the whole class)."""

    name: str
    cluster: int | None
    reason: str

    def to_json(self) -> dict:
        return {"class": self.name, "cluster": self.cluster, "reason": self.reason}


@dataclass(frozen=True)
class AuditSummary:
    method: str  # the maps SpRAy clustered
    labelled: bool  # grouped by label (else by prediction)
    accuracy: float | None
    classes: tuple[ClassAudit, ...]
    masks: bool  # object masks were found for every image

    @property
    def flags(self) -> list[Flag]:
        out = []
        for c in self.classes:
            out += [Flag(c.name, k.index, k.reason or "") for k in c.strategies.flagged]
            if c.outlier.flagged:
                out.append(Flag(c.name, None, c.outlier.reason or ""))
        return out

    def to_json(self) -> dict:
        return {
            "clustered": self.method,
            "grouped_by": "label" if self.labelled else "prediction",
            "object_masks": self.masks,
            "accuracy": None if self.accuracy is None else round(self.accuracy, DECIMALS),
            "flagged": [f.to_json() for f in self.flags],
            "classes": [c.to_json() for c in self.classes],
        }


def audit_masks(root: Path | None, paths: Sequence[Path], side: int) -> np.ndarray | None:
    """Every image's object mask at ``side`` x ``side`` (a pixel is inside when most of its
    area is); None unless every image has one."""
    if root is None:
        return None
    out = np.zeros((len(paths), side, side), dtype=bool)
    for i, path in enumerate(paths):
        mask = load_mask(root, path)
        if mask is None:
            return None
        area = Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.BOX)
        out[i] = np.asarray(area) > 127
    return out


def summarize(
    records: ShardRecords,
    class_names: Sequence[str],
    method: str,
    masks: np.ndarray | None,
    seed: int,
) -> AuditSummary:
    """SpRAy per class over ``records.maps[method]``: by label where the images have labels,
    else by prediction (then no accuracy and no accuracy contrast: location flags only)."""
    pred, labels = records.pred, records.labels
    labelled = bool((labels >= 0).any())
    group = labels if labelled else pred
    correct = pred == labels if labelled else np.ones(len(pred), dtype=bool)
    maps = records.maps[method]
    classes: list[tuple[int, np.ndarray, ClassStrategies]] = []
    for k in range(len(class_names)):
        idx = np.flatnonzero(group == k)
        if not len(idx):
            continue
        found = class_strategies(
            maps[idx], correct[idx], None if masks is None else masks[idx], seed
        )
        classes.append((k, idx, found))
    outliers = class_outliers([c for _, _, c in classes])
    scored = correct[group >= 0] if labelled else np.zeros(0, dtype=bool)
    return AuditSummary(
        method=method,
        labelled=labelled,
        accuracy=float(scored.mean()) if len(scored) else None,
        classes=tuple(
            ClassAudit(
                k,
                class_names[k],
                tuple(records.ids[i] for i in idx),
                tuple(int(p) for p in pred[idx]),
                found,
                outlier,
                labelled,
            )
            for (k, idx, found), outlier in zip(classes, outliers, strict=True)
        ),
        masks=masks is not None,
    )
