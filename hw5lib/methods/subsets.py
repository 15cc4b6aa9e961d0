"""Which images to score when not all of them: a deterministic subset spread evenly over the
classes (the confusion matrix under --eval-limit)."""

from __future__ import annotations

import numpy as np


def stratified(labels: list[int], limit: int | None) -> list[int]:
    """All indices, or ``limit`` of them spread evenly over each class (deterministic)."""
    if limit is None or limit >= len(labels):
        return list(range(len(labels)))
    classes = sorted(set(labels))
    per = max(1, limit // len(classes))
    out = []
    for c in classes:
        idx = [i for i, lb in enumerate(labels) if lb == c]
        picks = np.linspace(0, len(idx) - 1, min(per, len(idx))).round().astype(int)
        out += [idx[i] for i in np.unique(picks)]
    return sorted(out)
