"""What the Q4 SHAP stage runs on: each image's superpixels (LIME's, or made as LIME makes
them) and the model, stopping between batches at the deadline. It defines no stage."""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from hw5lib.methods import lime_adapter
from hw5lib.stages.context import Run
from hw5lib.stages.costs import Deadline
from hw5lib.stages.lime_result import LimeStageResult


class UntilDeadline(nn.Module):
    """The model, raising ``OutOfTime`` before a batch once ``deadline`` has passed: SHAP stops
    between model batches, as LIME does (an image's permutations are hundreds of images)."""

    def __init__(self, model: nn.Module, deadline: Deadline) -> None:
        super().__init__()
        self.model, self.deadline = model, deadline

    def forward(self, x: Tensor) -> Tensor:
        if self.deadline.passed():
            raise lime_adapter.OutOfTime
        return self.model(x)


def superpixels(run: Run) -> list[np.ndarray]:
    """Each explained image's superpixels: LIME's where it explained the image, else made as
    LIME makes them (the same SLIC, the same fallbacks)."""
    lime = run.find(LimeStageResult)
    made = [r.segments for r in lime.results] if lime is not None else []
    s = run.subject
    rest = [
        lime_adapter.segment_with_fallback(lime_adapter.as_rgb(s.pixels[i]))[0]
        for i in range(len(made), len(s.paths))
    ]
    return [np.asarray(seg, dtype=np.int64) for seg in made + rest]
