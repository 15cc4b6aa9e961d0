"""What one report run knows: its config, the explained images, the stages' typed results and
the files it wrote."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from hw5lib.config import RunConfig
from hw5lib.inputs.images import Skipped
from hw5lib.inputs.input_check import InputCheck
from hw5lib.inputs.preprocess import Preprocess
from hw5lib.methods.filters import Canvas
from hw5lib.model.loading import LoadedModel
from hw5lib.model.probe import OutputHead
from hw5lib.report import figures
from hw5lib.report.outputs import atomic_write_bytes, npz_bytes, sha256_bytes
from hw5lib.run.budget import Deadline

if TYPE_CHECKING:
    from hw5lib.report.notes import Notes
    from hw5lib.run.replay import Replay
    from hw5lib.run.subject import Subject
    from hw5lib.stages.record import Stage, StageResult

R = TypeVar("R", bound="StageResult")


@dataclass(frozen=True)
class Failure:
    """A stage that raised: the run went on without it."""

    stage: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"stage": self.stage, "message": self.message}


@dataclass
class Run:
    cfg: RunConfig
    loaded: LoadedModel
    model: nn.Module
    pre: Preprocess
    classes: list[str]
    subject: Subject
    device: torch.device
    infer: nn.Module | None = None  # a faster copy of the model for forward-only work
    grad: nn.Module | None = None  # BatchNorm folded: a faster copy for input gradients
    cam_layer: str | None = None  # Grad-CAM's layer, found once (stages.cams.cam_layer_name)
    canvases: dict[str, Canvas] = field(default_factory=dict)  # Q2's ascent canvas per layer,
    # found once (stages.filters.layer_canvas): the plan prices it, the stage climbs on it
    registry: Sequence[Stage] = ()  # the stages this run runs, in order
    results: dict[str, StageResult] = field(default_factory=dict)  # by stage name, run order
    outputs: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # stages this model cannot run
    cuts: list[str] = field(default_factory=list)  # what the budget cut, and why
    failures: list[Failure] = field(default_factory=list)
    deadline: Deadline = field(default_factory=lambda: Deadline(None))
    labelled_images: int | None = None  # size of the labelled split, counted once
    skipped_images: list[Skipped] = field(default_factory=list)  # unreadable files passed over
    out_of_range: list[tuple[Path, int]] = field(default_factory=list)  # labels naming no class
    interrupted: str | None = None  # the signal that stopped the run
    notes: Notes | None = None  # --notes, parsed and checked against the planned figures
    input_check: InputCheck | None = None  # which input convention the model scores best with
    replay: Replay | None = None  # --replay: the decisions to make again
    replay_cut: str | None = None  # why the replay was cut to fit --budget (None: it was not)
    stage_config: dict[str, dict] = field(default_factory=dict)  # settings the budget cut, by stage
    cut_stages: list[str] = field(default_factory=list)  # stages the budget or deadline cut
    fast_paths: dict[str, str] = field(default_factory=dict)  # speed trick -> on / off: why
    input_size: dict = field(default_factory=dict)  # {"side", "source"}: how it was chosen
    output: OutputHead = field(default_factory=OutputHead)  # logits, or the probability head

    @property
    def inference(self) -> nn.Module:
        return self.infer if self.infer is not None else self.model

    @property
    def gradients(self) -> nn.Module:
        return self.grad if self.grad is not None else self.model

    @property
    def scripted(self) -> bool:
        return isinstance(self.model, torch.jit.ScriptModule)

    def generator(self, stream: int) -> torch.Generator:
        """An independent, seeded random stream per stage: stages never share RNG state."""
        return torch.Generator().manual_seed(self.cfg.seed * 1000 + stream)

    def replayed(self, method: str, key: str, cap: int) -> list[int] | None:
        """A replay's recorded per-image ``key`` of ``method`` (None without them); a replay
        cut to fit the budget spends no more than the planned ``cap``."""
        recorded = self.replay.counts(method, key) if self.replay else None
        if recorded is None:
            return None
        return [min(n, cap) for n in recorded] if self.replay_cut else list(recorded)

    def find(self, kind: type[R]) -> R | None:
        """The result of the stage that produced a ``kind``, if it ran."""
        return next((r for r in self.results.values() if isinstance(r, kind)), None)

    def maps(self) -> dict[str, Tensor]:
        """Every method's [N,H,W] map of the explained images, by method name."""
        return {name: m for r in self.results.values() for name, m in r.maps.items()}

    def skip_images(self, skipped: Sequence[Skipped]) -> None:
        """Note unreadable files (once each): the run goes on without them."""
        seen = {s.path for s in self.skipped_images}
        for s in skipped:
            if s.path not in seen:
                seen.add(s.path)
                self.skipped_images.append(s)

    def write(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.cfg.out / name, data)
        self.outputs[name] = sha256_bytes(data)

    def write_png(self, name: str, fig: figures.Figure) -> None:
        data = figures.save_png(fig, self.cfg.out / name)
        self.outputs[name] = sha256_bytes(data)

    def write_npz(self, name: str, **arrays: np.ndarray) -> None:
        self.write(name, npz_bytes(arrays))

    def to_input(self, pixels: Tensor) -> Tensor:
        return self.pre.normalize(pixels.cpu()).to(self.device)
