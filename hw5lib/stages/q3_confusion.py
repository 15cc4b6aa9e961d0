"""Q3: accuracy on the labelled split, the confusion matrix, and per class the most confident
correct image and mistake."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.inputs.datasets import LABELLED_SPLITS, has_class, open_dataset
from hw5lib.inputs.images import load_inputs
from hw5lib.methods import metrics
from hw5lib.methods.subsets import stratified
from hw5lib.report import confusion_figures
from hw5lib.stages.context import Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.labelled_split import classify, eval_count
from hw5lib.stages.protocol import FigureRecord, StageResult
from hw5lib.stages.record import number, write_png
from hw5lib.stages.stage import Stage

NAME = "Q3 confusion matrix"
SECTION = "Q3"


@dataclass
class ConfusionResult(StageResult):
    accuracy: dict | None = None  # overall, evaluated, subset, per_class (None: no labels)
    top_confusions: list[dict] = field(default_factory=list)

    def manifest_entries(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "top_confusions": self.top_confusions}


def examples_record(run: Run, paths: list[Path], labels: Tensor, probs: Tensor) -> FigureRecord:
    """Per class the most confident correct image and mistake, tied to their matrix cells."""
    preds = probs.argmax(1)
    examples = metrics.select_examples(labels, preds, probs)
    tiles, titles = [], []
    h, w = run.pre.size
    blank = np.full((h, w, run.pre.channels), np.nan, dtype=np.float32)
    chosen = []
    for c in range(len(run.classes)):
        for kind in ("correct", "mistake"):
            ex = examples[c][kind]
            if ex is None:
                tiles.append(blank)
                titles.append(f"{run.classes[c]}\nno {kind}")
                continue
            chosen.append(paths[ex["index"]])
            t, p = ex["cell"]
            tiles.append(None)
            titles.append(
                f"{kind}: {run.classes[t]}\n-> {run.classes[p]} {number(ex['prob'], '.0%')} "
                f"cell({t},{p})"
            )
    pix = (
        run.pre.denormalize(load_inputs(chosen, run.pre)).permute(0, 2, 3, 1).numpy()
        if chosen
        else []
    )
    it = iter(pix)
    tiles = [next(it) if t is None else t for t in tiles]
    fig = confusion_figures.example_grid(
        np.stack(tiles), titles, 6, "Most confident correct image and mistake per class"
    )
    write_png(run, "q3_examples.png", fig)
    return FigureRecord(
        "q3_examples",
        SECTION,
        "Most confident correct image and mistake per class",
        "For each true class, the image the model got right with the highest confidence and "
        "the wrong prediction it made with the highest confidence; cell(t,p) names the confusion "
        "matrix cell each one illustrates.",
        "q3_examples.png",
        None,
        {"files": [p.name for p in chosen]},
    )


def stage_confusion(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> ConfusionResult:
    if cfg.data is None:
        return ConfusionResult()
    split = open_dataset(cfg.data, LABELLED_SPLITS)
    pairs = [
        (p, lb)
        for p, lb in zip(split.paths, split.labels, strict=True)
        if has_class(lb, len(run.classes))
    ]
    bar.update()
    if not pairs:
        return ConfusionResult()
    idx = stratified([lb for _, lb in pairs], cfg.eval_limit)
    planned = len(idx)
    probs, kept = classify(run, [pairs[i][0] for i in idx], cfg.batch_size)
    if not kept:
        return ConfusionResult()
    idx = [idx[k] for k in kept]
    paths = [pairs[i][0] for i in idx]
    labels = torch.tensor([pairs[i][1] for i in idx])
    preds = probs.argmax(1)
    cm = metrics.confusion_matrix(labels, preds, len(run.classes))
    acc = metrics.per_class_accuracy(cm)
    overall = float(np.trace(cm) / cm.sum())
    subset = (
        "all of " + split.root.name
        if planned == len(pairs)
        else (f"a stratified subset of {planned} of {len(pairs)} images in {split.root.name}")
    )
    if len(idx) < planned:
        subset += f" less {planned - len(idx)} unreadable"
    empty = [run.classes[c] for c in np.flatnonzero(cm.sum(axis=1) == 0)]
    conf = metrics.top_confusions(cm, 5)
    fig = confusion_figures.confusion_figure(
        cm, run.classes, f"Confusion matrix ({subset}), accuracy {overall:.1%}"
    )
    write_png(run, "q3_confusion.png", fig)
    run.write_npz(
        "q3_confusion.npz",
        confusion=cm,
        # a class with no image has no accuracy: 0 here, and 0 images in per_class_images
        per_class_accuracy=np.nan_to_num(acc, nan=0.0),
        per_class_images=cm.sum(axis=1),
        labels=labels.numpy(),
        preds=preds.numpy(),
    )
    best = int(np.nanargmax(acc)) if not np.isnan(acc).all() else 0
    worst = int(np.nanargmin(acc)) if not np.isnan(acc).all() else 0
    confusions = (
        "; ".join(f"{run.classes[t]} -> {run.classes[p]}: {n}" for t, p, n in conf) or "none"
    )
    matrix = FigureRecord(
        "q3_confusion",
        SECTION,
        "Confusion matrix",
        f"Predictions on {subset} (rows: true class, columns: predicted; color is the row "
        f"share, numbers are counts). Overall accuracy {overall:.1%}; best class {run.classes[best]} "
        f"({acc[best]:.0%}), worst {run.classes[worst]} ({acc[worst]:.0%}). Top confusions: {confusions}."
        + (f" No image of {', '.join(empty)}: no accuracy for them." if empty else "")
        + (
            f" The model's outputs were not finite for {broken} of the images; argmax counts "
            f"them as {run.classes[0]}."
            if (broken := int((~probs.isfinite().all(dim=1)).sum()))
            else ""
        ),
        "q3_confusion.png",
        "q3_confusion.npz",
        {"evaluated": len(idx)},
    )
    return ConfusionResult(
        [matrix, examples_record(run, paths, labels, probs)],
        accuracy={
            "overall": round(overall, 6),
            "evaluated": len(idx),
            "subset": subset,
            "per_class": [None if np.isnan(a) else round(float(a), 6) for a in acc],
        },
        top_confusions=[
            {"true": run.classes[t], "pred": run.classes[p], "count": n} for t, p, n in conf
        ],
    )


def confusion_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    n = eval_count(run, cfg)
    return Work(forward=n, seconds=0.004 * n + 2 * FIGURE_SECONDS)


STAGE = Stage(
    NAME,
    SECTION,
    stage_confusion,
    confusion_cost,
    cuts=(
        Cut(NAME, "accuracy on a stratified subset of 500 images", {"eval_limit": 500}, rank=2),
        Cut(NAME, "accuracy on a stratified subset of 100 images", {"eval_limit": 100}, rank=9),
    ),
    options=("eval_limit", "batch_size"),
    figures=lambda run: ("q3_confusion", "q3_examples"),
    absent={"accuracy": None, "top_confusions": []},
)
