"""Q4: every channel of one layer for the first explained image."""

from __future__ import annotations

from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.methods import cam
from hw5lib.model.layers import resolve_layer
from hw5lib.report import feature_figures
from hw5lib.stages.context import Run
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.protocol import FigureRecord, StageResult
from hw5lib.stages.q4_cams import cam_layer_name
from hw5lib.stages.record import write_png
from hw5lib.stages.stage import Stage

NAME = "Q4 feature maps"


def stage_feature_grid(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> StageResult:
    s = run.subject
    layer = (
        resolve_layer(run.model, cfg.feature_layer)[0] if cfg.feature_layer else cam_layer_name(run)
    )
    acts = cam.feature_maps(run.model, s.x[:1], layer)[0].cpu().numpy()
    bar.update()
    fig = feature_figures.feature_grid(
        acts, f"All {len(acts)} channels of {layer} for {s.paths[0].name} (ReLU'd)"
    )
    write_png(run, "q4_feature_maps.png", fig)
    run.write_npz("q4_feature_maps.npz", input=s.x[:1].cpu().numpy(), activation=acts)
    active = int((acts.reshape(len(acts), -1).max(1) > 0).sum())
    record = FigureRecord(
        "q4_feature_maps",
        STAGE.section,
        f"Feature maps of {layer}",
        f"Every channel of {layer} for {s.paths[0].name} (class {run.classes[int(s.target[0])]}), "
        f"16 per row, each on its own color scale; {active} of {len(acts)} channels are non-zero anywhere.",
        "q4_feature_maps.png",
        "q4_feature_maps.npz",
        {"layer": layer},
    )
    return StageResult([record])


STAGE = Stage(
    NAME,
    "Q4",
    stage_feature_grid,
    lambda run, cfg, shares: Work(forward=1, seconds=FIGURE_SECONDS),
    cuts=(Cut(NAME, "feature-map grid not drawn", {"skip": True}, rank=15),),
    options=("feature_layer", "cam_layer"),
    hooks=True,
    figures=lambda run: ("q4_feature_maps",),
)
