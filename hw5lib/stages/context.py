"""What one report run knows: the command's settings, the model and its faster copies, the
explained images, the map methods its stages offer, the stages' typed results and what it
wrote, cut and skipped. A stage gets its planned settings and deadline as arguments; the run's
state here is shared by all of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from hw5lib.config import RunConfig
from hw5lib.inputs.explained import Subject
from hw5lib.inputs.images import Skipped
from hw5lib.inputs.input_verdict import InputCheck
from hw5lib.inputs.replay import Replay
from hw5lib.methods.faithfulness import Explain
from hw5lib.methods.shared_gradient import FromGradient
from hw5lib.model.loading import LoadedModel
from hw5lib.model.preprocess import Preprocess
from hw5lib.model.probe import OutputHead
from hw5lib.report.notes import Notes
from hw5lib.report.outputs import atomic_write_bytes, npz_bytes, sha256_bytes
from hw5lib.stages.costs import Deadline, Work
from hw5lib.stages.protocol import StageResult

R = TypeVar("R", bound=StageResult)
T = TypeVar("T")

# What the budget planner uses to price a stage: share is the expected share of its cap an
# adaptive method spends (measured in this run once it ran, else ``Share.expected``).
Shares = dict[str, float]


@dataclass(frozen=True)
class Method:
    """A map method the trust table scores: ``explain`` builds its explain(model, x, target)
    with the planned settings, for the randomization check (None: no rerun, e.g. LIME)."""

    name: str
    explain: Callable[[Run, RunConfig, Deadline], Explain] | None = None
    sampled: bool = False  # costly to rerun: the budget drops its randomization check first
    # Where the map is a function of the input gradient (as ``explain`` computes it), the
    # trust table computes that gradient once for all such methods.
    from_gradient: Callable[[RunConfig], FromGradient | None] | None = None
    # How the randomized model's map is made where that differs from the trained one's (the
    # trust table's notes), and what that rerun costs the planner beyond one gradient.
    rerun_note: str = ""
    rerun_cost: Callable[[Run, RunConfig, Shares], Work] | None = None


@dataclass(frozen=True)
class Failure:
    """A stage that raised: the run went on without it."""

    stage: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"stage": self.stage, "message": self.message}


@dataclass
class Memo:
    """Facts found once per run by whoever asks first (a layer choice, a tile, a count): the
    planner prices with them before the stage that uses them runs."""

    found: dict[tuple[str, str], Any] = field(default_factory=dict)

    def once(self, kind: str, key: str, find: Callable[[], T]) -> T:
        if (kind, key) not in self.found:
            self.found[kind, key] = find()
        return self.found[kind, key]

    def all(self, kind: str) -> dict[str, Any]:
        """Everything found of ``kind``, by key, in the order found."""
        return {k: v for (c, k), v in self.found.items() if c == kind}


@dataclass
class Run:
    # set-up: what the command asked, the model, the images (subject.prepare)
    cfg: RunConfig  # the command's settings; a stage reads its planned ones from its arguments
    loaded: LoadedModel
    model: nn.Module
    pre: Preprocess
    classes: list[str]
    subject: Subject
    device: torch.device
    infer: nn.Module | None = None  # a faster copy of the model for forward-only work
    grad: nn.Module | None = None  # BatchNorm folded: a faster copy for input gradients
    input_check: InputCheck | None = None  # which input convention the model scores best with
    fast_paths: dict[str, str] = field(default_factory=dict)  # speed trick -> on / off: why
    input_size: dict = field(default_factory=dict)  # {"side", "source"}: how it was chosen
    output: OutputHead = field(default_factory=OutputHead)  # logits, or the probability head
    out_of_range: list[tuple[Path, int]] = field(default_factory=list)  # labels naming no class
    skipped_images: list[Skipped] = field(default_factory=list)  # unreadable files passed over
    notes: Notes | None = None  # --notes, parsed and checked against the planned figures
    replay: Replay | None = None  # --replay: the decisions to make again
    replay_cut: str | None = None  # why the replay was cut to fit --budget (None: it was not)
    methods: tuple[Method, ...] = ()  # the map methods of the stages this model can run
    memo: Memo = field(default_factory=Memo)
    # what the run did: results by stage name in run order, files written, cuts, failures
    results: dict[str, StageResult] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # stages this model cannot run
    cuts: list[str] = field(default_factory=list)  # what the budget cut, and why
    cut_stages: list[str] = field(default_factory=list)  # stages the budget or deadline cut
    stage_config: dict[str, dict] = field(default_factory=dict)  # settings the budget cut, by stage
    failures: list[Failure] = field(default_factory=list)
    interrupted: str | None = None  # the signal that stopped the run

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

    def write_npz(self, name: str, **arrays: np.ndarray) -> None:
        self.write(name, npz_bytes(arrays))

    def to_input(self, pixels: Tensor) -> Tensor:
        return self.pre.normalize(pixels.cpu()).to(self.device)
