"""LIME (Ribeiro et al., 2016, "Why Should I Trust You?") through the ``lime`` package.

Two things the course code gets wrong are fixed here: scikit-image >= 0.19 numbers SLIC segments
from 1, and lime's mask loop (``for z in zeros: mask[segments == z]``) then never hides one
superpixel, so segments are numbered from 0; and ``labels=[target]`` with ``top_labels=None`` makes
lime explain the requested label rather than whichever class it ranks first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from lime import lime_image
from skimage.segmentation import slic
from torch import Tensor, nn

from .hooks import eval_mode

SLIC_ARGS = {"n_segments": 100, "compactness": 1, "sigma": 1, "start_label": 0}


@dataclass(frozen=True)
class LimeResult:
    segments: np.ndarray  # [H,W] int, superpixel id per pixel, ids 0..S-1
    weights: np.ndarray  # [S] float, the linear model's weight of each superpixel for the label
    score: float  # R^2 of lime's local linear model
    label: int


def segment(image: np.ndarray) -> np.ndarray:
    """SLIC superpixels of an [H,W,3] float image in [0,1], numbered from 0 (see module doc)."""
    return slic(image.astype(np.float64), **SLIC_ARGS)


def classifier_fn(
    model: nn.Module, to_input: Callable[[Tensor], Tensor], channels: int
) -> Callable[[np.ndarray], np.ndarray]:
    """lime's ``classifier_fn``: an [B,H,W,3] batch of display pixels -> [B,K] probabilities."""

    def predict(batch: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        pixels = pixels.permute(0, 3, 1, 2)
        if channels == 1:
            pixels = pixels.mean(dim=1, keepdim=True)
        with eval_mode(model), torch.inference_mode():
            return torch.softmax(model(to_input(pixels)), dim=1).numpy().astype(np.float64)

    return predict


class BatchedLimeImageExplainer(lime_image.LimeImageExplainer):
    """lime's explainer with ``data_labels`` vectorized: the same random on/off matrix from the
    same ``random_state`` and the same perturbed images, built a batch at a time with one
    fancy-index instead of a Python loop over samples and superpixels (lime 0.2.0.1 spends most
    of its time there, not in the model)."""

    def data_labels(
        self,
        image: np.ndarray,
        fudged_image: np.ndarray,
        segments: np.ndarray,
        classifier_fn: Callable[[np.ndarray], np.ndarray],
        num_samples: int,
        batch_size: int = 10,
        progress_bar: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        n_features = np.unique(segments).shape[0]
        data = self.random_state.randint(0, 2, num_samples * n_features).reshape(
            (num_samples, n_features)
        )
        data[0, :] = 1
        # float32 once: the model takes float32 anyway, and half the bytes per batch.
        image, fudged_image = image.astype(np.float32), fudged_image.astype(np.float32)
        labels = []
        for start in range(0, num_samples, batch_size):
            keep = data[start : start + batch_size][:, segments].astype(bool)  # (B, H, W)
            batch = np.where(keep[..., None], image[None], fudged_image[None])
            labels.append(classifier_fn(batch))
        return data, np.concatenate(labels)


def explain(
    model: nn.Module,
    image: np.ndarray,
    label: int,
    *,
    to_input: Callable[[Tensor], Tensor],
    channels: int = 3,
    samples: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
) -> LimeResult:
    """Explain ``label`` for one [H,W,3] display image in [0,1]; seeded, so reruns match."""
    explainer = BatchedLimeImageExplainer(random_state=seed)
    exp = explainer.explain_instance(
        image.astype(np.float64),
        classifier_fn(model, to_input, channels),
        labels=(label,),
        top_labels=None,
        num_samples=samples,
        batch_size=batch_size,
        segmentation_fn=segment,
        random_seed=seed,
    )
    weights = np.zeros(int(exp.segments.max()) + 1)
    for seg_id, w in exp.local_exp[label]:
        weights[seg_id] = w
    return LimeResult(exp.segments, weights, float(exp.score), label)
