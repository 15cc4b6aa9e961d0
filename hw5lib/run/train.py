"""Train the HW3 ``Classifier`` (or a narrower one for the demo) on a Food-11-layout folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hw5lib.errors import UserError
from hw5lib.inputs.datasets import TRAIN_SPLITS, ImageSet, open_dataset
from hw5lib.inputs.images import load_inputs
from hw5lib.model.hooks import eval_mode
from hw5lib.model.loading import save_checkpoint
from hw5lib.model.preprocess import Preprocess
from model import Classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    hidden: tuple[int, ...] = (1024, 512)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    # the HW5 sample code's PIL pipeline; the checkpoint records it, so reports read alike
    preprocess: Preprocess = field(
        default_factory=lambda: Preprocess(channel_order="rgb", reader="pil")
    )


def labelled(split: ImageSet, pre: Preprocess) -> tuple[Tensor, Tensor]:
    if any(label is None for label in split.labels):
        raise UserError(
            f"every image in {split.root} needs a label (<label>_<n>.jpg, a class folder, "
            "or a CSV label column) to train on it"
        )
    return load_inputs(split.paths, pre), torch.tensor(split.labels)


def validation_split(root: Path, train: ImageSet) -> ImageSet | None:
    """The held-out split beside the training one, if the layout has one."""
    try:
        val = open_dataset(root, ("validation", "val"))
    except UserError:
        return None
    return None if val.root == train.root and val.paths == train.paths else val


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with eval_mode(model), torch.inference_mode():
        return float((model(x).argmax(1) == y).float().mean())


def train(cfg: TrainConfig, classes: list[str] | None = None) -> dict:
    """Adam with random flips and shifts; returns the final accuracies. Seeded end to end."""
    root = Path(cfg.data)
    split = open_dataset(root, TRAIN_SPLITS)
    x, y = labelled(split, cfg.preprocess)
    val = validation_split(root, split)
    has_val = val is not None
    xv, yv = labelled(val, cfg.preprocess) if val is not None else (x[:0], y[:0])
    classes = classes or (list(split.classes) if split.classes else None)
    num_classes = int(y.max()) + 1 if classes is None else len(classes)
    arch = {
        "widths": list(cfg.widths),
        "hidden": list(cfg.hidden),
        "num_classes": num_classes,
        "in_channels": cfg.preprocess.channels,
        "input_size": cfg.preprocess.size[0],
    }
    with torch.random.fork_rng():  # module init draws from the global RNG; keep it contained
        torch.manual_seed(cfg.seed)
        model = Classifier(**arch)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, cfg.lr, total_steps=cfg.epochs * -(-len(x) // cfg.batch_size)
    )
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("epoch %d loss %.3f", epoch, loss.item())
    model.eval()
    names = classes or [str(i) for i in range(num_classes)]
    save_checkpoint(cfg.out, model, arch, cfg.preprocess, names)
    return {
        "train_accuracy": accuracy(model, x, y),
        "val_accuracy": accuracy(model, xv, yv) if has_val else None,
    }


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal flips and shifts of up to 1/8 of the side (wrap-around roll)."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    limit = x.shape[-1] // 8
    dy, dx = torch.randint(-limit, limit + 1, (2,), generator=gen).tolist()
    return x.roll((dy, dx), dims=(2, 3))
