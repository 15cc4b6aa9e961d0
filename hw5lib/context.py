"""What one report run knows: its frozen config, the explained images, and what it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import figures
from .budget import Deadline
from .data import (
    Preprocess,
)
from .models import LoadedModel
from .outputs import atomic_write_bytes, npz_bytes, sha256_bytes


@dataclass(frozen=True)
class RunConfig:
    """Everything a report run depends on; recorded in the manifest."""

    data: Path | None
    out: Path
    checkpoint: Path
    model: str | None = None
    model_args: dict | None = None
    channels: int | None = None
    targets: str = "label"
    training_indices: tuple[int, ...] = ()
    named_images: tuple[str, ...] = ()
    seed: int = 0
    trust_pickle: bool = False
    size: int | None = None
    channel_order: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: str | None = None
    images: tuple[Path, ...] = ()
    per_class: int = 1
    filter_layers: tuple[str, ...] = ()
    filters: tuple[int, ...] = ()
    filters_per_layer: int = 4
    filter_layer_count: int = 4  # layers picked when filter_layers is empty
    filter_steps: int = 80
    activation_images: int = 4
    lime_samples: int = 1000
    adaptive: bool = True  # stop sampled/iterated methods once converged (caps below)
    smooth_samples: int = 50
    smooth_sigma: float = 0.15
    ig_steps: int = 32
    ig_baseline: str = "black"
    cam_layer: str | None = None
    cam_targets: str = "pred"
    feature_layer: str | None = None
    dream_layer: str | None = None
    dream_images: int = 3
    eval_limit: int | None = None
    trust: bool = True
    deletion_steps: int = 16
    randomize_top: int = 5
    randomize_sampled: bool = True  # also re-run SmoothGrad and IG on the randomized model
    budget: float | None = None  # seconds; None plans nothing
    skip_stages: tuple[str, ...] = ()  # stages the budget planner cut
    batch_size: int = 64
    device: str = "auto"
    command: str = ""


@dataclass
class Subject:
    """The images being explained and what the model makes of them."""

    paths: list[Path]
    x: Tensor  # (N, C, H, W) model input
    pixels: np.ndarray  # (N, H, W, C) what the model saw, in [0,1], display channel order
    labels: list[int | None]
    target: Tensor  # (N,) the label where known, else the prediction
    pred: Tensor  # (N,)
    prob: Tensor  # (N, K)
    masks: np.ndarray | None  # (N, H, W) bool object masks, for generated sample sets

    def titles(self, classes: list[str]) -> list[str]:
        out = []
        for i, p in enumerate(self.paths):
            label = self.labels[i]
            head = classes[label] if label is not None else p.name
            out.append(f"{head}\npred {classes[self.pred[i]]} {float(self.prob[i].max()):.0%}")
        return out


@dataclass
class Run:
    cfg: RunConfig
    loaded: LoadedModel
    model: nn.Module
    pre: Preprocess
    classes: list[str]
    subject: Subject
    device: torch.device
    figures: list[dict] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    maps: dict[str, Tensor] = field(default_factory=dict)  # method -> [N,H,W], for the trust table
    extra: dict[str, object] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # stages this model cannot run
    cuts: list[str] = field(default_factory=list)  # what the budget cut, and why
    deadline: Deadline = field(default_factory=lambda: Deadline(None))
    infer: nn.Module | None = None  # a faster copy of the model for forward-only work
    grad: nn.Module | None = None  # BatchNorm folded: a faster copy for input gradients
    convergence: dict[str, object] = field(default_factory=dict)  # per method, for the appendix

    @property
    def inference(self) -> nn.Module:
        return self.infer if self.infer is not None else self.model

    @property
    def gradients(self) -> nn.Module:
        return self.grad if self.grad is not None else self.model

    def generator(self, stream: int) -> torch.Generator:
        """An independent, seeded random stream per stage: stages never share RNG state."""
        return torch.Generator().manual_seed(self.cfg.seed * 1000 + stream)

    def write(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.cfg.out / name, data)
        self.outputs[name] = sha256_bytes(data)

    def write_png(self, name: str, fig: object) -> None:
        data = figures.save_png(fig, self.cfg.out / name)  # type: ignore[arg-type]
        self.outputs[name] = sha256_bytes(data)

    def write_npz(self, name: str, **arrays: np.ndarray) -> None:
        self.write(name, npz_bytes(arrays))

    def add_figure(self, **record: object) -> None:
        self.figures.append(record)

    def to_input(self, pixels: Tensor) -> Tensor:
        return self.pre.normalize(pixels.cpu()).to(self.device)
