"""The exact preprocessing a checkpoint was trained with (size, channel order, normalization),
and the class names of the datasets hw5 knows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from hw5lib.errors import UserError

# How files are decoded and resized: cv2.imread + cv2.resize with INTER_LINEAR (HW3), INTER_CUBIC
# or INTER_AREA; PIL's antialiased BILINEAR (HW5).
READERS = ("cv2", "cv2-cubic", "cv2-area", "pil")


@dataclass(frozen=True)
class UserReader:
    """--preprocess file.py:function: the student's own reading function, path -> the model's
    input (HWC array or CHW tensor); recorded by file name, sha256 and function name."""

    file: str
    sha256: str
    name: str
    function: Callable[[Any], Any] = field(compare=False, repr=False)
    display: str = ""  # how its inputs are shown as pixels (min-max, or --mean/--std)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "name": self.name,
            "display": self.display,
        }


@dataclass(frozen=True)
class Preprocess:
    """How pixels become the model's input: resize, scale to [0,1], order channels, normalize.

    ``channel_order`` matters: the HW3 sample code read images with cv2 (BGR), the HW5 sample code
    with PIL (RGB). A checkpoint explained in the wrong order still runs, but every map is wrong.
    ``reader`` too: cv2.resize (INTER_LINEAR, no antialiasing) and PIL's antialiased BILINEAR
    give different pixels from the same file.
    """

    size: tuple[int, int] = (128, 128)  # (H, W)
    channels: int = 3
    channel_order: str = "bgr"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    reader: str = "cv2"  # one of READERS: "cv2" (HW3) or "pil" (HW5), or a cv2 resize variant
    # --preprocess: the model input is what this returns; mean/std then only say how it is shown
    function: UserReader | None = None

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise UserError(f"channel order must be 'rgb' or 'bgr', not {self.channel_order!r}")
        if self.reader not in READERS:
            raise UserError(f"reader must be one of {', '.join(READERS)}, not {self.reader!r}")
        if self.channels not in (1, 3):
            raise UserError(f"input channels must be 1 or 3, not {self.channels}")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v is not None and len(v) not in (1, self.channels):
                raise UserError(f"--{name} needs 1 or {self.channels} values, got {len(v)}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise UserError("--std values must be positive")

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "size": list(self.size),
            "channels": self.channels,
            "channel_order": self.channel_order,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "reader": self.reader,
        }
        if self.function is not None:  # only then: earlier manifests stay byte-identical
            d["function"] = self.function.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        def tup(v: Sequence[float] | None) -> tuple[float, ...] | None:
            return None if v is None else tuple(float(a) for a in v)

        return cls(
            size=cast(tuple[int, int], tuple(int(a) for a in d.get("size", (128, 128)))),  # (H, W)
            channels=int(d.get("channels", 3)),
            channel_order=str(d.get("channel_order", "bgr")),
            mean=tup(d.get("mean")),
            std=tup(d.get("std")),
            # checkpoints written before the reader was recorded were trained on PIL's pixels
            reader=str(d.get("reader", "pil")),
        )

    def _stats(self) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean or (0.0,), dtype=torch.float32)
        std = torch.tensor(self.std or (1.0,), dtype=torch.float32)
        return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def normalize(self, pixels: Tensor) -> Tensor:
        """[N,C,H,W] display-order pixels in [0,1] (RGB or gray) -> model input."""
        mean, std = self._stats()
        return (self.swap_channels(pixels) - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Model input [N,C,H,W] -> pixels in display order (RGB or gray), clipped to [0,1]."""
        mean, std = self._stats()
        return self.swap_channels(x.detach().cpu() * std + mean).clamp(0, 1)

    def swap_channels(self, x: Tensor) -> Tensor:
        """[N,C,H,W] between display order (RGB or gray) and the model's (BGR for cv2-trained
        models), either way: a flip is its own inverse. Values are unchanged."""
        return x.flip(1) if self.channels == 3 and self.channel_order == "bgr" else x


def read_classes(text: str | None, count: int) -> list[str]:
    """Class names from a comma list; numbered names when none are given."""
    if not text:
        return [str(i) for i in range(count)]
    names = [c.strip() for c in text.split(",")]
    if len(names) != count:
        raise UserError(f"--classes names {len(names)} classes but the model has {count} outputs")
    return names


FOOD11_CLASSES = (
    "Bread",
    "Dairy product",
    "Dessert",
    "Egg",
    "Fried food",
    "Meat",
    "Noodles/Pasta",
    "Rice",
    "Seafood",
    "Soup",
    "Vegetable/Fruit",
)
FER2013_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
CLASS_PRESETS = {"food11": FOOD11_CLASSES, "fer2013": FER2013_CLASSES, "catdog": ("cat", "dog")}
