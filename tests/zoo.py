"""Small models of the shapes students bring: AlexNet's layout, and a nested residual net with
in-place ReLUs. Importable as ``tests.zoo`` so a pickled instance loads in a subprocess too."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AlexNetLike(nn.Module):
    """AlexNet's ``features`` / ``avgpool`` / ``classifier`` layout with in-place ReLUs, narrow."""

    def __init__(self, num_classes: int = 2, width: int = 8) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(w, 2 * w, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(4 * w * 36, 32),
            nn.ReLU(inplace=True),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class Residual(nn.Module):
    """conv-bn-relu-conv-bn plus the input, then ReLU: every ReLU in place."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + x)


class ResidualNet(nn.Module):
    """Nested modules and a residual block, for --model tests/zoo.py:ResidualNet."""

    def __init__(self, num_classes: int = 11, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.stage = nn.Sequential(nn.MaxPool2d(2), Residual(width))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage(self.stem(x)))


def seeded_(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter and BatchNorm running stat from a seeded generator (He-scaled
    weights, non-trivial running stats), leaving the training flag as it was."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # BatchNorm weight
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


class SlowNet(nn.Module):
    """The tiny HW3 Classifier (32x32 input) whose every forward costs ``delay`` seconds per
    image on ``tests.fake_clock.CLOCK``; after ``slow_after`` images it gets ``slowdown`` times
    slower (an estimate the planner cannot foresee). Tracing is refused, so no optimized copy
    skips the clock."""

    def __init__(self, delay: float = 0.05, slow_after: int = 10**9, slowdown: float = 1.0):
        super().__init__()
        from model import Classifier

        self.net = Classifier((4, 8, 8, 8, 8), (16, 16), input_size=32)
        self.delay, self.slow_after, self.slowdown = delay, slow_after, slowdown
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            raise RuntimeError("SlowNet cannot be traced")
        from tests.fake_clock import CLOCK

        self.images += len(x)
        factor = self.slowdown if self.images > self.slow_after else 1.0
        CLOCK.advance(self.delay * factor * len(x))
        return self.net(x)


class Seed001Classifier(nn.Module):
    """The HW3 architecture of seed report 001, layer for layer: two convs per block, Dropout2d
    after each pool, ``Linear(32768, 1024)`` and BatchNorm1d in the head (11 classes, 128 x 128).
    Its report picks the conv layers 3, 11, 19 and 27 of ``cnn``."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, drop in ((3, 64, 0.1), (64, 128, 0.1), (128, 256, 0.1), (256, 512, 0.5)):
            for a, b in ((c_in, c_out), (c_out, c_out)):
                layers += [nn.Conv2d(a, b, 3, 1, 1), nn.BatchNorm2d(b), nn.ReLU()]
            layers += [nn.MaxPool2d(2), nn.Dropout2d(drop)]
        self.cnn = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(32768, 1024),
            nn.BatchNorm1d(1024),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(1024, 11),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.cnn(x).flatten(1))
