"""The trust table's deletion/insertion columns: each named method's mean AUC over the same
images, all methods scored in one pass (``faithfulness.deletion_insertion_rows``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from hw5lib.methods import faithfulness


def auc_rows(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    maps: Mapping[str, Tensor],
    names: list[str],
    *,
    steps: int,
    batch_size: int,
    head: str,
    device: torch.device,
) -> list[dict]:
    """One row per name: its method, mean deletion AUC (pixels set to zero) and mean insertion
    AUC (revealed on a blurred copy); the curves' ends, shared by every method, are scored once."""
    di = faithfulness.deletion_insertion_rows(
        model,
        x,
        target,
        torch.stack([maps[name] for name in names]).to(device),  # (R, N, H, W)
        steps=steps,
        baseline="zero",
        insertion_baseline="blur",
        batch_size=batch_size,
        head=head,
    )
    return [
        {"method": name, "deletion": float(d.mean()), "insertion": float(i.mean())}
        for name, d, i in zip(names, di["deletion"], di["insertion"], strict=True)
    ]
