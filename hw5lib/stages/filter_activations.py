"""Q2's activation-maps figures, one per layer: the maps of the filters whose ascent the Q2
stage shows, on the first explained images, with the ascent's image and curve in its NPZ."""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from hw5lib.config import RunConfig
from hw5lib.methods import filters
from hw5lib.report import feature_figures
from hw5lib.stages.context import Run
from hw5lib.stages.filter_layers import SECTION
from hw5lib.stages.protocol import FigureRecord
from hw5lib.stages.record import number, write_png


def activation_id(layer: str) -> str:
    return f"q2_activations_{layer.replace('.', '_')}"  # cnn.2 -> q2_activations_cnn_2


def activation_record(
    run: Run,
    cfg: RunConfig,
    name: str,
    layer: nn.Module,
    acts: Tensor,
    idx: list[int],
    ascent: np.ndarray,
    result: filters.AscentResult,
) -> FigureRecord:
    """The activation maps of one layer's chosen filters on the first explained images."""
    s = run.subject
    rows = min(cfg.activation_images, len(s.paths))
    fid = activation_id(name)
    fig = feature_figures.activation_grid(
        s.pixels[:rows],
        acts[:rows, idx].relu().cpu().numpy(),
        idx,
        s.titles(run.classes)[:rows],
        f"Activation maps of {name} filters {idx} on real images",
    )
    write_png(run, f"{fid}.png", fig)
    run.write_npz(
        f"{fid}.npz",
        input=s.x[:rows].cpu().numpy(),
        filters=np.array(idx),
        activation=acts[:rows, idx].cpu().numpy(),
        ascent_image=ascent,
        ascent_curve=result.activation.cpu().numpy(),
        ascent_steps=result.recorded.numpy(),
    )
    means = ", ".join(number(v, ".3f") for v in acts[:, idx].mean(dim=(0, 2, 3)).tolist())
    return FigureRecord(
        fid,
        SECTION,
        f"Activation maps of layer {name}",
        f"Output channels {idx} of {name} ({type(layer).__name__}) on {rows} images; each "
        f"filter's maps share one color scale. Mean activation per filter over the explained "
        f"images: {means}.",
        f"{fid}.png",
        f"{fid}.npz",
        {"layer": name, "filters": idx},
    )
