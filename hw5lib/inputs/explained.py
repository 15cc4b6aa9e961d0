"""The images a report explains and what the model makes of them."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torch import Tensor


@dataclass
class Subject:
    """The images being explained and what the model makes of them."""

    paths: list[Path]
    x: Tensor  # (N, C, H, W) model input
    pixels: np.ndarray  # (N, H, W, C) what the model saw, in [0,1], display channel order
    labels: list[int | None]
    target: Tensor  # (N,) the label where known, else the prediction
    pred: Tensor  # (N,)
    prob: Tensor  # (N, K)
    masks: np.ndarray | None  # (N, H, W) bool object masks, for generated sample sets

    def titles(self, classes: list[str]) -> list[str]:
        out = []
        for i, p in enumerate(self.paths):
            label = self.labels[i]
            head = classes[label] if label is not None else p.name
            confidence = float(self.prob[i].max())
            if math.isfinite(confidence):
                out.append(f"{head}\npred {classes[self.pred[i]]} {confidence:.0%}")
            else:  # a NaN model predicts nothing; argmax would name class 0
                out.append(f"{head}\npred n/a (outputs not finite)")
        return out

    def first(self, n: int) -> Subject:
        """The first ``n`` explained images (a stage the deadline stopped part-way)."""
        return replace(
            self, paths=self.paths[:n], x=self.x[:n], target=self.target[:n], pixels=self.pixels[:n]
        )
