"""The course's definitions (``--conventions course``): saliency, LIME and filter visualization
exactly as the ML2020 HW5 sample code computes them, so a student's report matches the
definitions the assignment was graded against.

They differ from the defaults on purpose, and the report says which a figure follows:
- Saliency is |d CE-loss(label) / d x| per channel, min-max scaled over each whole image (the
  default: |d logit / d x|, max over channels).
- LIME is stock ``lime``: 1000 independent samples from one ``np.random`` stream seeded with 16
  and shared by the images in turn, the model's raw logits, the course SLIC on the model input
  itself (the default: foldover Hadamard samples until converged, softmax probabilities, SLIC on
  the display image).
- Filter visualization is Adam (lr 0.1, 100 steps) on the input image itself, climbing the
  filter's summed activation, with no regularizer or clipping (the default: a regularized
  Fourier image from gray).

One fix is kept: SLIC numbers superpixels from 0 as scikit-image did in 2020 (0.16). From 0.19 it
starts at 1, and lime's mask loop would then never hide one superpixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from lime import lime_image
from skimage.segmentation import slic
from torch import Tensor, nn

from hw5lib.methods.attributions import chunks
from hw5lib.methods.filters import AscentResult
from hw5lib.methods.lime_adapter import LimeResult, as_rgb, weights_vector
from hw5lib.model.hooks import eval_mode, forward_until, frozen_params

LIME_SEED = 16  # np.random.seed(16) before the sample code's LIME loop
LIME_SAMPLES = 1000  # lime_image's default num_samples
SLIC_ARGS = {"n_segments": 100, "compactness": 1, "sigma": 1, "start_label": 0}
SLIC_TEXT = "SLIC (n_segments=100, compactness=1, sigma=1) on the model input"
ASCENT_STEPS = 100
ASCENT_LR = 0.1


def min_max(x: Tensor) -> Tensor:
    """Each [C,H,W] item of x [N,C,H,W] scaled to [0,1] over all its values (constant -> 0)."""
    flat = x.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    span = (hi - lo).where(hi > lo, torch.ones_like(hi))
    return ((flat - lo[:, None]) / span[:, None]).view_as(x)


def loss_saliency(model: nn.Module, x: Tensor, target: Tensor, *, batch_size: int = 64) -> Tensor:
    """|d CE(model(x), target) / d x| per channel, min-max scaled per image: [N,C,H,W] in [0,1].

    The sample code averages the loss over its batch; the mean only scales each image's gradient,
    and the min-max scaling removes the scale, so any batching gives the same maps."""
    grads = torch.empty_like(x)
    with eval_mode(model), frozen_params(model), torch.enable_grad():
        for s in chunks(len(x), batch_size):
            xi = x[s].detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(xi), target[s], reduction="sum")
            (grads[s],) = torch.autograd.grad(loss, xi)
    return min_max(grads.abs())


def segment(image: np.ndarray) -> np.ndarray:
    """The sample code's ``segmentation``: SLIC of an [H,W,C] image, numbered from 0."""
    return slic(image, **SLIC_ARGS)


def as_lime_image(x: Tensor) -> np.ndarray:
    """One model input [C,H,W] as the sample code hands it to lime: [H,W,C] float64, a gray
    input repeated to 3 channels (``as_rgb``)."""
    return as_rgb(x.detach().cpu().permute(1, 2, 0).double().numpy())


def logits_fn(
    model: nn.Module, channels: int, device: torch.device
) -> Callable[[np.ndarray], np.ndarray]:
    """The sample code's ``predict``: an [B,H,W,3] batch of model inputs -> [B,K] logits."""

    def predict(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 3, 1, 2)
        if channels == 1:
            x = x[:, :1]
        with eval_mode(model), torch.inference_mode():
            return model(x.to(device)).cpu().double().numpy()

    return predict


def lime_explain(
    explainer: lime_image.LimeImageExplainer,
    model: nn.Module,
    x: Tensor,
    label: int,
    *,
    samples: int = LIME_SAMPLES,
    batch_size: int = 64,
) -> LimeResult:
    """Stock lime on one model input x [C,H,W]. ``explainer`` carries the random stream the
    images share, in the order explained. The label is asked for by name (``labels``): the
    sample code's ``top_labels=5`` fails on an image whose label is not among its top 5, and
    lime fits each label on the same samples, so the label's weights are those any wide enough
    ``top_labels`` gives (and R^2 is its own)."""
    image = as_lime_image(x)
    segments = segment(image)
    try:
        explanation = explainer.explain_instance(
            image,
            logits_fn(model, x.shape[0], x.device),
            labels=(label,),
            top_labels=None,
            num_samples=samples,
            batch_size=batch_size,
            segmentation_fn=lambda _: segments,
        )
    except ValueError as err:  # sklearn's ridge refuses non-finite logits
        why = f"lime's fit failed: {err}".partition("\n")[0]
        weights = np.zeros(int(segments.max()) + 1)
        return LimeResult(
            segments, weights, 0.0, label, samples, segmentation=SLIC_TEXT, failure=why
        )
    weights = weights_vector(explanation.local_exp[label], int(segments.max()) + 1)
    return LimeResult(
        segments, weights, float(explanation.score), label, samples, segmentation=SLIC_TEXT
    )


class QuietExplainer(lime_image.LimeImageExplainer):
    """Stock lime without its per-image progress bar: lime 0.2.0.1 wraps its sampling loop in
    tqdm unconditionally, so the loop runs with tqdm swapped for a pass-through meanwhile."""

    def data_labels(self, *args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        with mock.patch.object(lime_image, "tqdm", lambda rows, **_: rows):
            return super().data_labels(*args, **kwargs)


def lime_explainer(seed: int = 0) -> lime_image.LimeImageExplainer:
    """One explainer for all of a run's images: the course seeds np.random once, before its loop
    (``seed`` shifts that stream, as --seed does everything else)."""
    return QuietExplainer(random_state=np.random.RandomState(LIME_SEED + seed))


def filter_ascent(
    model: nn.Module,
    layer: nn.Module,
    filters: Sequence[int],
    start: Tensor,
    *,
    steps: int = ASCENT_STEPS,
    lr: float = ASCENT_LR,
) -> tuple[Tensor, Tensor]:
    """The sample code's ``filter_explaination``: Adam on a copy of the model input ``start``
    [C,H,W] per filter, maximizing the sum of that filter's activation on ``layer``. Returns the
    images [F,C,H,W] in model-input space and each filter's mean activation [2,F] at the start and
    the end. All filters climb in one batch: Adam is elementwise and each image's objective is
    its own, so this equals one run per filter."""
    idx = torch.as_tensor(list(filters), dtype=torch.long)
    rows = torch.arange(len(idx))
    x = start.detach().unsqueeze(0).repeat(len(idx), 1, 1, 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)

    def activation(images: Tensor) -> Tensor:
        return forward_until(model, layer, images)[rows, idx]  # (F, h, w)

    with eval_mode(model), frozen_params(model), torch.enable_grad():
        with torch.no_grad():
            before = activation(x).mean(dim=(1, 2))
        for _ in range(steps):
            opt.zero_grad()
            (-activation(x).sum()).backward()
            opt.step()
        with torch.no_grad():
            after = activation(x).mean(dim=(1, 2))
    return x.detach(), torch.stack([before, after])


def ascent_result(
    model: nn.Module,
    layer: nn.Module,
    filters: Sequence[int],
    start: Tensor,
    swap_channels: Callable[[Tensor], Tensor],
) -> AscentResult:
    """``filter_ascent`` from ``start`` [C,H,W] as an ``AscentResult``: each image min-max
    scaled over its values for display (after ``swap_channels`` to display order), as the
    sample code shows it."""
    images, (before, after) = filter_ascent(model, layer, filters, start)
    return AscentResult(
        min_max(swap_channels(images.cpu())),
        torch.stack([before, after]).cpu(),
        torch.tensor([0, ASCENT_STEPS]),
        torch.full((len(filters),), ASCENT_STEPS),
        work=len(filters) * ASCENT_STEPS,
    )
