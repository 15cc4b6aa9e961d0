"""Local stand-ins for torchvision's AlexNet, VGG and ResNet, so their whole-model pickles load
without torchvision and without running code from the file.

A stand-in is built only by unpickling: ``torch.load(weights_only=True)`` creates it with
``__new__`` and hands it the pickled ``__dict__`` (its ``_modules``, ``_parameters``, ...), so the
layers and their sizes come from the file and only ``forward`` comes from here. Each forward is
torchvision's, with the same module names, so layer names like ``features.10`` or
``layer4.1.conv2`` mean what they mean in torchvision.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class StandIn(nn.Module):
    """A module whose layers come from a pickle; ``PARTS`` are the attributes ``forward`` uses."""

    PARTS: ClassVar[tuple[str, ...]] = ()

    def missing_parts(self) -> list[str]:
        """The parts ``forward`` needs that the unpickled state does not hold as modules
        (``downsample`` may also be None)."""
        gone = [n for n in self.PARTS if not isinstance(getattr(self, n, None), nn.Module)]
        return [n for n in gone if not (n == "downsample" and getattr(self, n, 0) is None)]


class AlexNet(StandIn):
    """torchvision.models.alexnet.AlexNet (Krizhevsky et al., 2012)."""

    PARTS = ("features", "avgpool", "classifier")

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))  # (N, 256, 6, 6)
        return self.classifier(torch.flatten(x, 1))


class VGG(StandIn):
    """torchvision.models.vgg.VGG (Simonyan & Zisserman, 2015): the same forward as AlexNet."""

    PARTS = ("features", "avgpool", "classifier")

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))  # (N, 512, 7, 7)
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(StandIn):
    """torchvision.models.resnet.BasicBlock: two 3x3 convs plus the identity (He et al., 2016)."""

    PARTS = ("conv1", "bn1", "relu", "conv2", "bn2", "downsample")
    expansion: int = 1

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        # Not torchvision's in-place ``out += identity``: the same sum, but a hook that kept
        # bn2's output (feature maps, CAMs) would otherwise see it overwritten.
        return self.relu(out + identity)


class Bottleneck(StandIn):
    """torchvision.models.resnet.Bottleneck: 1x1, 3x3, 1x1 convs plus the identity."""

    PARTS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample")
    expansion: int = 4

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)  # out of place, as in BasicBlock


class ResNet(StandIn):
    """torchvision.models.resnet.ResNet (He et al., 2016)."""

    PARTS = (
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    )

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)  # (N, C, 1, 1)
        return self.fc(torch.flatten(x, 1))


# The names torchvision's classes are pickled under -> the stand-in for each.
TORCHVISION: dict[str, type[StandIn]] = {
    "torchvision.models.alexnet.AlexNet": AlexNet,
    "torchvision.models.vgg.VGG": VGG,
    "torchvision.models.resnet.ResNet": ResNet,
    "torchvision.models.resnet.BasicBlock": BasicBlock,
    "torchvision.models.resnet.Bottleneck": Bottleneck,
}
