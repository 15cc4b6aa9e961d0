"""Which filters a Q2 layer shows and what its ascent decided there: the filters (replayed,
asked for, or the most active on the explained images), what they reached against the start
and the best explained image, and, by filter index, those redone because still climbing, as
the manifest records them and a replay makes them again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hw5lib.errors import UserError
from hw5lib.methods import filters


@dataclass(frozen=True)
class LayerDecision:
    """One Q2 layer as the run made it: its filters, and by filter index those redone because
    still climbing and those whose redo was kept."""

    layer: str
    filters: tuple[int, ...]
    redone: tuple[int, ...] = ()
    kept: tuple[int, ...] = ()

    def redo(self) -> filters.Redo:
        """The redone and kept filters by position, as ``filters.filter_ascent`` takes them."""
        at = {f: i for i, f in enumerate(self.filters)}
        return filters.Redo(tuple(at[f] for f in self.redone), tuple(at[f] for f in self.kept))

    @classmethod
    def made(cls, layer: str, idx: Sequence[int], redo: filters.Redo) -> LayerDecision:
        """What the ascent on ``layer`` decided (``redo`` by position), by filter index."""
        return cls(
            layer,
            tuple(idx),
            tuple(idx[r] for r in redo.rows),
            tuple(idx[r] for r in redo.kept),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerDecision:
        return cls(
            str(d["layer"]),
            tuple(map(int, d["filters"])),
            tuple(map(int, d["redone"])),
            tuple(map(int, d["kept"])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "filters": list(self.filters),
            "redone": list(self.redone),
            "kept": list(self.kept),
        }


def choose_filters(
    acts: Tensor,
    layer: str,
    decided: LayerDecision | None,
    requested: Sequence[int],
    count: int,
) -> list[int]:
    """The filters of ``layer`` to show: a replay's, else those asked for, else the ``count``
    most active on the explained images (``acts`` [N,F,h,w])."""
    idx = (
        list(decided.filters)
        if decided
        else list(requested) or filters.most_active_filters(acts, count)
    )
    bad = [f for f in idx if f >= acts.shape[1]]
    if bad:
        raise UserError(f"layer {layer} has {acts.shape[1]} filters; no filter {bad[0]}")
    return idx


def gains(result: filters.AscentResult, acts: Tensor, idx: list[int]) -> list[list[float]]:
    """Per filter: the mean activation reached, the start image's and the best explained
    image's (``acts`` [N,F,h,w])."""
    real = acts[:, idx].mean(dim=(2, 3)).amax(dim=0).cpu()
    return torch.stack([result.final.cpu(), result.activation[0].cpu(), real], dim=1).tolist()
