"""A heavier student model for the benchmark: the HW3 Classifier with two 3x3 convs per block
(VGG-style), about 3x its compute at the same widths."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn


class VGGClassifier(nn.Module):
    """[N, 3, 128, 128] -> [N, 11]; each block is (conv, BN, ReLU) x 2 then a 2x2 max-pool."""

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512, 512), num_classes: int = 11):
        super().__init__()
        self.widths = tuple(widths)
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise([3, *widths]):
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
            layers += [nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
            layers.append(nn.MaxPool2d(2, 2, 0))
        self.cnn = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(widths[-1] * 4 * 4, 1024),
            nn.ReLU(),
            nn.Linear(1024, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.cnn(x).flatten(1))
