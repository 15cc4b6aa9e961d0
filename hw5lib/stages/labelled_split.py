"""The labelled images the Q3 confusion matrix (``q3_confusion``) scores: how many it will
classify (for the budget) and their softmax probabilities, loaded and classified a chunk at a
time so a large split fits in memory. It defines no stage."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from hw5lib.config import RunConfig
from hw5lib.inputs.datasets import LABELLED_SPLITS, has_class, open_dataset
from hw5lib.inputs.images import load_usable
from hw5lib.methods import attributions, metrics
from hw5lib.stages.context import Run

CHUNK = 256  # images per load-and-classify step: bounds memory on a large split


def classify(run: Run, paths: list[Path], batch_size: int) -> tuple[Tensor, list[int]]:
    """Softmax probabilities [M,K] of the readable images, loaded a chunk at a time, and their
    positions in ``paths`` (an unreadable file is skipped, and noted in the run)."""
    probs, kept = [], []
    for s in attributions.chunks(len(paths), CHUNK):
        loaded = load_usable(paths[s], run.pre)
        run.skip_images(loaded.skipped)
        if not loaded.paths:
            continue
        x = loaded.x.to(run.device)
        probs.append(
            metrics.predict(run.inference, x, batch_size=batch_size, head=run.output.kind)[0].cpu()
        )
        kept += [s.start + i for i in loaded.kept]
    return (torch.cat(probs) if probs else torch.zeros(0, len(run.classes))), kept


def eval_count(run: Run, cfg: RunConfig) -> int:
    """Images the confusion matrix will classify (the labelled split, or --eval-limit)."""
    if cfg.data is None:
        return 0
    data = cfg.data
    total = run.memo.once(
        "labelled images",
        str(data),
        lambda: sum(
            has_class(lb, len(run.classes)) for lb in open_dataset(data, LABELLED_SPLITS).labels
        ),
    )
    return total if cfg.eval_limit is None else min(total, cfg.eval_limit)
