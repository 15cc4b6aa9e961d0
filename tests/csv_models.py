"""A student's small expression network whose first Linear fixes the input side: a run that
resizes CSV rows to any other side fails in its forward. Importable for ``--model``."""

from __future__ import annotations

from torch import Tensor, nn


class TinyExpressionNet(nn.Module):
    """Two conv blocks (each halves the side) and a Linear sized for ``side`` x ``side`` gray
    inputs, 7 expressions."""

    def __init__(self, side: int = 48, num_classes: int = 7) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(8 * (side // 4) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.cnn(x).flatten(1))
