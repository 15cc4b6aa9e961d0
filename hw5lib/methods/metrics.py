"""How good is the classifier, and where do its maps point? Batched metrics, no plotting.

Classifier: confusion matrix, per-class accuracy, the examples worth explaining. Maps: the pointing
game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016) and the share of
attribution inside the object mask; stability of sampled methods across seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hw5lib.model.hooks import eval_mode


def _numpy(a: np.ndarray | Tensor | Sequence[Any]) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy array."""
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """Device of the model's first parameter (``fallback`` for a parameterless model)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else fallback


# ---------------------------------------------------------------------------------------------
# Classifier quality
# ---------------------------------------------------------------------------------------------


def confusion_matrix(
    labels: np.ndarray | Tensor | Sequence[int],
    preds: np.ndarray | Tensor | Sequence[int],
    num_classes: int,
) -> np.ndarray:
    """Counts [K,K] int64: row = true class, column = predicted class."""
    y, p = _numpy(labels).astype(np.int64).ravel(), _numpy(preds).astype(np.int64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and preds {p.shape} differ in length")
    for name, v in (("labels", y), ("preds", p)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    flat = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall per true class [K] = diagonal / row sum; nan for a class with no samples."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1)
    diag = np.diag(cm).astype(np.float64)
    return np.divide(diag, rows, out=np.full(rows.shape, np.nan), where=rows > 0)


def top_confusions(cm: np.ndarray, k: int = 5) -> list[tuple[int, int, int]]:
    """The ``k`` largest nonzero off-diagonal cells as (true, pred, count).

    Sorted by count descending, then true class, then predicted class (deterministic).
    """
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    true, pred = np.nonzero(off > 0)
    counts = off[true, pred]
    order = np.lexsort((pred, true, -counts))[:k]  # last key is the primary one
    return [(int(true[i]), int(pred[i]), int(counts[i])) for i in order]


def probabilities(logits: Tensor, head: str = "softmax") -> Tensor:
    """The model's own probabilities [N,K] from its logits: a Sigmoid head's sigmoid (a 0.99
    output is 99%), else the softmax (a Softmax head's output, a LogSoftmax head's exp)."""
    return logits.float().sigmoid() if head == "sigmoid" else logits.float().softmax(dim=1)


def predict(
    model: nn.Module, x: Tensor, *, batch_size: int = 64, head: str = "softmax"
) -> tuple[Tensor, Tensor]:
    """Probabilities [N,K] (``probabilities`` of the ``head`` kind) and argmax predictions
    [N], in chunks of ``batch_size``.

    Runs under ``torch.inference_mode`` and eval mode (the caller's mode is restored); results
    come back on ``x``'s device.
    """
    device = model_device(model, x.device)
    chunks = []
    with torch.inference_mode(), eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start : start + batch_size].to(device))  # (B, K)
            chunks.append(probabilities(logits, head).to(x.device))
    if not chunks:
        raise ValueError("predict needs at least one image")
    probs = torch.cat(chunks)  # (N, K)
    return probs, probs.argmax(dim=1)


def select_examples(
    labels: np.ndarray | Tensor,
    preds: np.ndarray | Tensor,
    probs: np.ndarray | Tensor,
) -> dict[int, dict[str, dict[str, Any] | None]]:
    """Per class c, the images worth explaining.

    ``correct``: label c, predicted c, highest probability of c. ``mistake``: label c, predicted
    something else, highest probability of that wrong prediction. Each is
    ``{"index", "cell": (true, pred), "prob"}`` or None when no image qualifies; ties go to the
    lowest index. Keys are all classes 0..K-1 (K = ``probs.shape[1]``).
    """
    y = torch.as_tensor(_numpy(labels)).long().ravel()  # (N,)
    p = torch.as_tensor(_numpy(preds)).long().ravel()  # (N,)
    pr = torch.as_tensor(_numpy(probs)).double()  # (N, K)
    num_classes = pr.shape[1]
    conf = pr.gather(1, p[:, None]).squeeze(1)  # (N,) probability of the predicted class
    classes = torch.arange(num_classes)[:, None]  # (K, 1)
    is_class = y[None, :] == classes  # (K, N)
    hit = p == y  # (N,)
    out: dict[int, dict[str, dict[str, Any] | None]] = {c: {} for c in range(num_classes)}
    for kind, ok in (("correct", is_class & hit), ("mistake", is_class & ~hit)):
        scores = torch.where(ok, conf[None, :], torch.full_like(conf, -math.inf)[None, :])
        best = scores.argmax(dim=1)  # (K,) first maximum = lowest index
        found = ok.any(dim=1)  # (K,)
        for c in range(num_classes):
            i = int(best[c])
            out[c][kind] = (
                {"index": i, "cell": (int(y[i]), int(p[i])), "prob": float(conf[i])}
                if found[c]
                else None
            )
    return out


# ---------------------------------------------------------------------------------------------
# Localization against object masks
# ---------------------------------------------------------------------------------------------


def _dilate(masks: Tensor, radius: int) -> Tensor:
    """Grow bool masks [N,H,W] by a Euclidean disc of ``radius`` pixels."""
    if radius <= 0:
        return masks
    t = torch.arange(-radius, radius + 1, device=masks.device, dtype=torch.float32)
    disc = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).float()  # (2r+1, 2r+1)
    grown = F.conv2d(masks.float()[:, None], disc[None, None], padding=radius)
    return grown[:, 0] > 0


def pointing_game(maps: Tensor, masks: Tensor, *, tolerance: int = 0) -> Tensor:
    """Hit [N] bool: the map's maximum lies inside the object mask (Zhang et al., ECCV 2016).

    ``tolerance`` grows the mask by a disc of that many pixels (the paper uses 15 at 224 px).
    Ties for the maximum go to the lowest pixel index; an empty mask is a miss.
    """
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ")
    grown = _dilate(masks.bool().to(maps.device), tolerance).flatten(1)  # (N, HW)
    peak = maps.detach().flatten(1).argmax(dim=1)  # (N,)
    return grown.gather(1, peak[:, None]).squeeze(1)


def mass_inside(maps: Tensor, masks: Tensor) -> Tensor:
    """Share [N] of the positive attribution that falls inside the mask; 0 for a map with none."""
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ")
    pos = maps.detach().clamp(min=0)  # (N, H, W)
    inside = (pos * masks.to(pos.device)).sum(dim=(1, 2))
    total = pos.sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(pos.dtype).tiny), 0.0)


def mask_fraction(masks: Tensor) -> Tensor:
    """Fraction [N] of the image the mask covers: the chance level of ``mass_inside``."""
    return masks.float().mean(dim=(1, 2))


# ---------------------------------------------------------------------------------------------
# Stability of sampled methods (LIME, SmoothGrad): compare two runs with different seeds
# ---------------------------------------------------------------------------------------------
