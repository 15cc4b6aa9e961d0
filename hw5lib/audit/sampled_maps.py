"""The audit's sampled maps: LIME and SHAP of each image over LIME's superpixels, at the report's
default caps and stopping rules, each image drawn from its own stream seeded alike (so a shard
of 4 or of 64, in any worker, gives the same map), with the samples each image drew."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from hw5lib.config import RunConfig
from hw5lib.methods import lime_adapter, shap_values
from hw5lib.model.preprocess import Preprocess

# The report's caps (RunConfig's defaults): an audit's LIME and SHAP are the report's.
CAPS = {"lime": RunConfig.lime_samples, "shap": RunConfig.shap_evaluations}


def display_pixels(pre: Preprocess, x: Tensor) -> list[np.ndarray]:
    """Model inputs [N,C,H,W] -> the [H,W,3] images in [0,1] LIME segments and perturbs."""
    shown = pre.denormalize(x.cpu()).permute(0, 2, 3, 1).numpy()
    return [lime_adapter.as_rgb(p) for p in shown]


def lime_maps(
    model: nn.Module, x: Tensor, target: Tensor, pre: Preprocess, head: str, seed: int
) -> tuple[Tensor, np.ndarray]:
    """Each image's LIME weights painted on its superpixels (positive part: evidence for the
    class), and the samples LIME's rule drew."""
    maps, counts = [], []
    for pixels, label in zip(display_pixels(pre, x), target.tolist(), strict=True):
        found = lime_adapter.explain(
            model,
            pixels,
            int(label),
            to_input=lambda p: pre.normalize(p.cpu()).to(x.device),
            channels=pre.channels,
            samples=CAPS["lime"],
            seed=seed,
            head=head,
        )
        maps.append(torch.from_numpy(found.weights[found.segments]).float())
        counts.append(found.samples)
    return torch.stack(maps).clamp(min=0), np.array(counts, dtype=np.int64)


def shap_maps(
    model: nn.Module, x: Tensor, target: Tensor, pre: Preprocess, head: str, seed: int
) -> tuple[Tensor, np.ndarray]:
    """Each image's Shapley values of LIME's superpixels for the target's logit (positive
    part), and the permutations the top-five rule drew."""
    segments = [lime_adapter.segment_with_fallback(p)[0] for p in display_pixels(pre, x)]
    seg = torch.from_numpy(np.stack(segments)).long().to(x.device)
    found = shap_values.shapley_values(
        model, x, target, seg, shap_values.segment_means(x, seg), seed=seed,
        max_evaluations=CAPS["shap"],
    )  # fmt: skip
    return found.maps.clamp(min=0), np.array(found.permutations, dtype=np.int64)


SampledMap = Callable[[nn.Module, Tensor, Tensor, Preprocess, str, int], tuple[Tensor, np.ndarray]]
SAMPLED_METHODS: dict[str, SampledMap] = {"lime": lime_maps, "shap": shap_maps}
