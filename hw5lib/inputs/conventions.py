"""The input conventions the input check compares: channel order, reader and scaling of a
candidate, and the candidates worth trying for a model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hw5lib.model.preprocess import READERS, Preprocess

ORDERS = ("bgr", "rgb")


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


DATASET = "dataset"  # the labelled images' own per-channel mean/std


# name -> (mean, std) after scaling to [0,1]; ImageNet's statistics only for colour models
SCALINGS: dict[str, tuple[tuple[float, ...] | None, tuple[float, ...] | None]] = {
    "[0,1]": (None, None),
    "[-1,1]": ((0.5,), (0.5,)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


@dataclass(frozen=True)
class Convention:
    """How pixels are read and scaled; ``channel_order`` is None for a 1-channel model."""

    channel_order: str | None
    reader: str
    scaling: str  # a SCALINGS name, or "custom" for other --mean/--std
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    function: str | None = None  # --preprocess file.py:function: it reads, nothing else applies

    @classmethod
    def of(cls, pre: Preprocess) -> Convention:
        order = pre.channel_order if pre.channels == 3 else None
        if pre.function is not None:
            spec = f"{pre.function.file}:{pre.function.name}"  # reads and scales: as it returns
            return cls(None, spec, "as returned", None, None, spec)
        name = scaling_name(pre)
        mean, std = SCALINGS[name] if name != "custom" else (pre.mean, pre.std)
        return cls(order, pre.reader, name, mean, std)

    def apply(self, pre: Preprocess) -> Preprocess:
        """``pre`` read this way (size and channels unchanged)."""
        order = self.channel_order or pre.channel_order
        return replace(pre, channel_order=order, reader=self.reader, mean=self.mean, std=self.std)

    def describe(self) -> str:
        """ "rgb, pil, [0,1]" (the scaling written out when it is custom)."""
        if self.function:
            return f"--preprocess {self.function}"
        scaling = self.scaling
        if scaling == DATASET:
            scaling = (
                f"the data's own mean {_numbers(self.mean or ())} std {_numbers(self.std or ())}"
            )
        elif scaling == "custom":
            scaling = f"mean {_numbers(self.mean or (0.0,))} std {_numbers(self.std or (1.0,))}"
        return ", ".join(p for p in (self.channel_order, self.reader, scaling) if p)

    def flags_from(self, other: Convention) -> str:
        """The command-line flags that turn ``other`` into this convention."""
        flags = []
        if self.channel_order != other.channel_order and self.channel_order:
            flags.append(f"--channel-order {self.channel_order}")
        if self.reader != other.reader:
            flags.append(f"--reader {self.reader}")
        if (self.mean, self.std) != (other.mean, other.std):
            flags.append(f"--mean {_numbers(self.mean or (0.0,))}")
            flags.append(f"--std {_numbers(self.std or (1.0,))}")
        return " ".join(flags)

    def distance(self, other: Convention) -> int:
        """How many of channel order, reader and scaling differ."""
        return sum((self.channel_order != other.channel_order, self.reader != other.reader)) + int(
            (self.mean, self.std) != (other.mean, other.std)
        )

    def to_dict(self) -> dict:
        d = {
            "channel_order": self.channel_order,
            "reader": self.reader,
            "scaling": self.scaling,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }
        return d | ({"preprocess": self.function} if self.function else {})


def _numbers(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def scaling_name(pre: Preprocess) -> str:
    """The SCALINGS name of ``pre``'s mean/std (one value stands for every channel)."""

    def per_channel(v: tuple[float, ...] | None, neutral: float) -> tuple[float, ...]:
        v = v or (neutral,)
        return v * pre.channels if len(v) == 1 else v

    mine = (per_channel(pre.mean, 0.0), per_channel(pre.std, 1.0))
    for name, (mean, std) in SCALINGS.items():
        if len(per_channel(mean, 0.0)) != pre.channels and mean is not None:
            continue
        theirs = (per_channel(mean, 0.0), per_channel(std, 1.0))
        if all(math.isclose(a, b) for a, b in zip(sum(mine, ()), sum(theirs, ()), strict=True)):
            return name
    return "custom"


def candidates(
    pre: Preprocess, data_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
) -> list[Convention]:
    """Every channel order x reader x scaling for ``pre``'s channels, the HW3 default first
    (``data_stats``: the labelled images' own RGB or gray mean/std, a scaling of its own), plus
    ``pre``'s own convention where it is none of them."""
    orders: Sequence[str | None] = ORDERS if pre.channels == 3 else (None,)
    scalings = {k: v for k, v in SCALINGS.items() if pre.channels == 3 or k != "imagenet"}
    out = []
    for order in orders:
        own = dict(scalings)
        if data_stats is not None:  # in the candidate's channel order
            mean, std = data_stats
            own[DATASET] = (mean[::-1], std[::-1]) if order == "bgr" else (mean, std)
        out += [Convention(order, r, name, *ms) for r in READERS for name, ms in own.items()]
    mine = Convention.of(pre)
    if all(mine.distance(c) for c in out):
        out.append(mine)
    return out
