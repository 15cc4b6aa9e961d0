"""The NTU ML 2020 HW3 Food-11 classifier, exactly as the course's sample code defines it.

A checkpoint trained with the course code loads into ``Classifier()`` unchanged. ``widths`` and
``hidden`` shrink it for the bundled demo; the module names (``cnn.0`` ... ``cnn.19``,
``fc.0`` ... ``fc.4``) never change, so layer indices mean the same thing at every width.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

HW3_WIDTHS = (64, 128, 256, 512, 512)
HW3_HIDDEN = (1024, 512)


def conv_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    """Conv(3x3, stride 1, pad 1) -> BatchNorm -> ReLU -> MaxPool(2, 2, 0): halves H and W."""
    return [
        nn.Conv2d(in_ch, out_ch, 3, 1, 1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
        nn.MaxPool2d(2, 2, 0),
    ]


class Classifier(nn.Module):
    """Five conv blocks then three linear layers; input [N, 3, 128, 128] -> logits [N, 11]."""

    def __init__(
        self,
        widths: Sequence[int] = HW3_WIDTHS,
        hidden: Sequence[int] = HW3_HIDDEN,
        num_classes: int = 11,
        in_channels: int = 3,
        input_size: int = 128,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [in_channels, *widths]
        for c_in, c_out in pairwise(channels):
            layers += conv_block(c_in, c_out)
        self.cnn = nn.Sequential(*layers)
        side = input_size // 2 ** len(widths)  # 128 / 32 = 4
        dims = [widths[-1] * side * side, *hidden]  # 512 * 4 * 4 = 8192
        fc: list[nn.Module] = []
        for d_in, d_out in pairwise(dims):
            fc += [nn.Linear(d_in, d_out), nn.ReLU()]
        fc.append(nn.Linear(dims[-1], num_classes))
        self.fc = nn.Sequential(*fc)

    def forward(self, x: Tensor) -> Tensor:
        out = self.cnn(x)  # (N, C, 4, 4)
        return self.fc(out.flatten(1))
