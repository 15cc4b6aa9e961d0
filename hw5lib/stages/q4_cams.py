"""Q4: Grad-CAM and LayerCAM at one layer, for the chosen target classes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.errors import UserError
from hw5lib.methods import attributions, cam
from hw5lib.model.layers import resolve_layer, same_activation_model
from hw5lib.report import attribution_figures
from hw5lib.stages.context import Explain, Method, Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.protocol import FigureRecord, StageResult
from hw5lib.stages.record import (
    explained,
    mask_caption,
    unexplained,
    unexplained_caption,
    write_png,
)
from hw5lib.stages.stage import Stage

NAME = "Q4 Grad-CAM, LayerCAM"
CAMS = {  # method -> (function, what it weighs: the paper)
    "Grad-CAM": (cam.grad_cam, "Selvaraju et al., 2017: channel weights are the mean gradient"),
    "LayerCAM": (
        cam.layer_cam,
        "Jiang et al., 2021: every element weighted by its positive gradient",
    ),
}


@dataclass
class CamsResult(StageResult):
    layer_rows: list[dict] = field(default_factory=list)  # pointing at each candidate layer

    def trust_rows(self) -> list[dict]:
        return self.layer_rows


def cam_figure_id(method: str) -> str:
    return "q4_" + method.lower().replace("-", "_")  # Grad-CAM -> q4_grad_cam


def cam_layer_name(run: Run) -> str:
    """--cam-layer, else the automatic choice; found once per run (the choice costs a probe
    forward pass, and several stages ask)."""
    return run.memo.once(
        "CAM layer",
        "",
        lambda: (
            resolve_layer(run.model, run.cfg.cam_layer)[0]
            if run.cfg.cam_layer
            else cam.default_cam_layer(run.model, (run.pre.channels, *run.pre.size))
        ),
    )


def validate_cam_targets(spec: str, num_classes: int) -> list[int]:
    """``pred``, ``label``, ``all`` or class indices; returns the indices (empty for the words)."""
    if spec in ("pred", "label", "all"):
        return []
    try:
        wanted = [int(v) for v in spec.split(",")]
    except ValueError:
        raise UserError(
            f"--cam-targets must be pred, label, all or class indices, not {spec!r}"
        ) from None
    if any(not 0 <= v < num_classes for v in wanted):
        raise UserError(f"--cam-targets: class indices must be in 0..{num_classes - 1}")
    return wanted


def cam_target_columns(run: Run, cfg: RunConfig) -> tuple[Tensor, list[list[str]]]:
    """Targets [N,T] for the CAM figures: the prediction, every class, or a list of classes."""
    s, k = run.subject, len(run.classes)
    spec = cfg.cam_targets
    if spec == "pred":
        t = s.pred.view(-1, 1)
    elif spec == "label":
        t = s.target.cpu().view(-1, 1)
    elif spec == "all":
        t = torch.arange(k).repeat(len(s.paths), 1)
    else:
        t = torch.tensor(validate_cam_targets(spec, k)).repeat(len(s.paths), 1)
    names = [[run.classes[int(c)] for c in row] for row in t]
    return t, names


def explainer(method: str) -> Callable[[Run, RunConfig, Deadline], Explain]:
    """The trust table's explain() of one CAM method at the run's CAM layer."""
    fn = CAMS[method][0]

    def build(run: Run, cfg: RunConfig, deadline: Deadline) -> Explain:
        layer = cam_layer_name(run)
        return lambda m, x, t: fn(m, x, t, layer, batch_size=cfg.batch_size)

    return build


def stage_cams(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> StageResult:
    s = run.subject
    layer = cam_layer_name(run)
    model = same_activation_model(run.model, run.grad, layer)  # faster, same map
    targets, names = cam_target_columns(run, cfg)
    n, t = targets.shape
    xs = s.x.repeat_interleave(t, dim=0)
    flat = targets.reshape(-1).to(run.device)
    out = CamsResult()
    for method, (fn, paper) in CAMS.items():
        maps = (
            fn(model, xs, flat, layer, batch_size=cfg.batch_size)
            .cpu()
            .reshape(n, t, *s.x.shape[-2:])
        )
        bar.update()
        # The trust table scores the map of the explained target, as for the other methods.
        out.maps[method] = fn(model, s.x, s.target, layer, batch_size=cfg.batch_size).cpu()
        fid = cam_figure_id(method)
        reasons = attributions.why_unexplained(maps)
        fig = attribution_figures.cam_grid(
            s.pixels,
            maps.numpy(),
            s.titles(run.classes),
            [[f"{method}: {c}" for c in row] for row in names],
            f"{method} at {layer}",
            notes=reasons,
        )
        missing = unexplained(run, reasons)
        write_png(run, f"{fid}.png", fig)
        run.write_npz(
            f"{fid}.npz", input=s.x.cpu().numpy(), target=targets.numpy(), attribution=maps.numpy()
        )
        out.figures.append(
            FigureRecord(
                fid,
                STAGE.section,
                f"{method} at {layer}",
                f"{method} ({paper}) at layer {layer}, upsampled bilinearly and overlaid on the "
                f"image, for target(s) '{cfg.cam_targets}'."
                + unexplained_caption(missing)
                + mask_caption(run, out.maps[method].numpy()),
                f"{fid}.png",
                f"{fid}.npz",
                {"layer": layer, "targets": cfg.cam_targets}
                | ({"unexplained": missing} if missing else {}),
            )
        )
    if s.masks is not None and cfg.trust:
        out.layer_rows = cam.layer_localization(
            run.model,
            run.grad,
            s.x,
            s.target,
            torch.from_numpy(s.masks),
            cam_layer_name(run),
            cfg.batch_size,
        )
    return out


def cam_columns(run: Run, cfg: RunConfig) -> int:
    """Targets per image in the CAM figures."""
    if cfg.cam_targets == "all":
        return len(run.classes)
    return 1 if cfg.cam_targets in ("pred", "label") else len(cfg.cam_targets.split(","))


def cams_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    layers = 4 if run.subject.masks is not None and cfg.trust else 0  # cam.layer_localization
    return Work(
        backward=explained(run) * (2 * (1 + cam_columns(run, cfg)) + layers),
        seconds=2 * FIGURE_SECONDS,
    )


STAGE = Stage(
    NAME,
    "Q4",
    stage_cams,
    cams_cost,
    units=lambda run, cfg: len(CAMS),
    cuts=(Cut(NAME, "Grad-CAM and LayerCAM not run", {"skip": True}, rank=16),),
    options=("cam_layer", "cam_targets", "batch_size"),
    methods=tuple(Method(m, explainer(m)) for m in CAMS),
    hooks=True,
    figures=lambda run: tuple(cam_figure_id(m) for m in CAMS),
)
