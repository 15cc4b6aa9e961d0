"""The images a run explains, chosen before any stage runs: the first readable ones of each
class, then the preset's picks and --images; their labels (a label naming no class counts as
none), where their object masks are, and the class each per-image method explains."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from hw5lib.config import RunConfig
from hw5lib.errors import UserError
from hw5lib.inputs.datasets import (
    LABELLED_SPLITS,
    TRAIN_SPLITS,
    ImageSet,
    has_class,
    label_of,
    open_dataset,
    out_of_range,
)
from hw5lib.inputs.images import Skipped, load_usable, skipped_warning
from hw5lib.model.preprocess import Preprocess

log = logging.getLogger(__name__)


def candidates_per_class(
    labels: Sequence[int | None], per_class: int, num_classes: int
) -> list[tuple[list[int], int]]:
    """(indices in sorted file order, how many to take) per class; a folder without labels is
    one group of which ``num_classes`` files are taken."""
    if all(label is None for label in labels):
        return [(list(range(len(labels))), num_classes)]
    return [([i for i, lb in enumerate(labels) if lb == c], per_class) for c in range(num_classes)]


def first_readable(
    paths: Sequence[Path], count: int, pre: Preprocess, skipped: list[Skipped]
) -> tuple[list[Path], list[Tensor]]:
    """The first ``count`` of ``paths`` that can be read, with their inputs; the unreadable ones
    met on the way go to ``skipped``."""
    found: list[Path] = []
    inputs: list[Tensor] = []
    for p in paths:
        if len(found) == count:
            break
        loaded = load_usable([p], pre)
        skipped.extend(loaded.skipped)
        if loaded.paths:
            found.append(p)
            inputs.append(loaded.x)
    return found, inputs


def named_images(cfg: RunConfig) -> list[Path]:
    """The preset's named images (``dog.jpg``...) found in the data folder, in the given order."""
    root = cfg.data if cfg.data and cfg.data.is_dir() else None
    return [root / n for n in cfg.named_images if root and (root / n).is_file()]


def training_picks(cfg: RunConfig) -> list[Path]:
    """Images picked by index into the sorted training split, as the course's sample code does."""
    if not cfg.training_indices or cfg.data is None:
        return []
    train = open_dataset(cfg.data, TRAIN_SPLITS)
    missing = [i for i in cfg.training_indices if i >= len(train)]
    if missing:
        log.warning("training split has %d images; skipping indices %s", len(train), missing)
    return [train.paths[i] for i in cfg.training_indices if i < len(train)]


def explained_inputs(
    cfg: RunConfig, split: ImageSet | None, num_outputs: int, pre: Preprocess
) -> tuple[list[Path], list[int | None], Tensor, list[Skipped]]:
    """The images to explain (the first ``--per-class`` readable ones of each class, then the
    picks and --images), their labels (None where unknown or out of range), their inputs, and
    the unreadable files passed over."""
    skipped: list[Skipped] = []
    paths: list[Path] = []
    labels: list[int | None] = []
    inputs: list[Tensor] = []
    if split is not None and cfg.per_class > 0:
        label = dict(zip(split.paths, split.labels, strict=True))
        for idx, take in candidates_per_class(split.labels, cfg.per_class, num_outputs):
            found, x = first_readable([split.paths[i] for i in idx], take, pre, skipped)
            paths += found
            labels += [label[p] for p in found]
            inputs += x
    for p in [*training_picks(cfg), *named_images(cfg), *sorted(cfg.images)]:
        found, x = first_readable([p], 1, pre, skipped)
        paths += found
        labels += [label_of(p)] * len(found)
        inputs += x
    if not paths:
        unreadable = f" ({skipped_warning(skipped)})" if skipped else ""
        raise UserError(f"nothing to explain: give a data folder or --images{unreadable}")
    labels = [lb if has_class(lb, num_outputs) else None for lb in labels]
    return paths, labels, torch.cat(inputs), skipped


def labels_out_of_range(
    cfg: RunConfig, split: ImageSet | None, num_classes: int
) -> list[tuple[Path, int]]:
    """(file, label) of every file the run reads whose label names no class of the model, by
    path: in the explained split, the labelled split the confusion matrix reads, the picks and
    --images. They all count as unlabelled (datasets.OUT_OF_RANGE_FATE)."""
    found = out_of_range(split, num_classes) if split is not None else []
    if cfg.data is not None:
        found += out_of_range(open_dataset(cfg.data, LABELLED_SPLITS), num_classes)
    for p in [*training_picks(cfg), *named_images(cfg), *cfg.images]:
        label = label_of(p)
        if label is not None and not has_class(label, num_classes):
            found.append((p, label))
    return sorted(dict(found).items())


def mask_root(data: Path | None) -> Path | None:
    if data is None:
        return None
    return data.parent if data.suffix.lower() == ".csv" else data


def explained_targets(
    spec: str, labels: list[int | None], pred: Tensor, num_classes: int
) -> Tensor:
    """The class each per-image method explains: the label (the prediction where there is
    none), the prediction, or one fixed class index."""
    if spec == "label":
        return torch.tensor(
            [lb if lb is not None else int(p) for lb, p in zip(labels, pred, strict=True)]
        )
    if spec == "pred":
        return pred.clone()
    if spec.isdigit() and int(spec) < num_classes:
        return torch.full((len(labels),), int(spec))
    raise UserError(
        f"--targets must be label, pred or a class index below {num_classes}, not {spec!r}"
    )
