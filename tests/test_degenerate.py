"""Images the methods cannot explain: texture SLIC merges into one superpixel, a uniform image,
pure noise, a saturated or NaN model, a zero gradient; and figures of all-zero, constant and NaN
maps. Each gives a finite result that says why, and no figure raises or warns."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn

from hw5lib.methods import attributions, integrated_gradients, lime_adapter
from hw5lib.methods.lime_adapter import (
    COURSE_SLIC,
    MIN_SEGMENTS,
    AntitheticLimeExplainer,
    LimeResult,
    explain,
    grid_segments,
    resampled_agreement,
    segment,
    segment_with_fallback,
)
from hw5lib.methods.lime_stopping import MIN_SAMPLES, SEPARATION_SETTLED, top_separation
from hw5lib.report import attribution_figures, confusion_figures, feature_figures, figures
from hw5lib.report.outputs import atomic_write_bytes
from model import Classifier

SIDE = 128  # the pipeline's display size


def as_pipeline_pixels(gray: np.ndarray) -> np.ndarray:
    """A uint8 photo as the pipeline reads it: RGB, bilinear to SIDE x SIDE, float32 in [0,1]."""
    image = Image.fromarray(gray).convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def grass() -> np.ndarray:
    return as_pipeline_pixels(skimage.data.grass())  # low contrast, fine texture


def noise() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (SIDE, SIDE, 3)).astype(np.float32)


def uniform() -> np.ndarray:
    return np.full((SIDE, SIDE, 3), 0.4, dtype=np.float32)


def tiny_model(fill: float | None = None) -> Classifier:
    """A random-weight Classifier for 32x32 input; every parameter set to ``fill`` if given."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Classifier(widths=(4, 8, 8, 8, 8), hidden=(16, 16), input_size=32)
    if fill is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(fill)
    return model.eval()


def to_input(pixels: Tensor) -> Tensor:
    """Display pixels -> the tiny model's input: 32x32, normalized to [-1,1]."""
    return F.interpolate(pixels, size=(32, 32), mode="bilinear", antialias=True) * 2 - 1


def numbers_of(result: LimeResult) -> list[float]:
    """Every number a LimeResult carries to a manifest or caption."""
    trace = [v for row in result.trace for v in row]
    extra = [] if result.stability is None else [result.stability]
    return [*result.weights.tolist(), result.score, *trace, *extra]


def assert_finite(result: LimeResult) -> None:
    assert all(math.isfinite(v) for v in numbers_of(result))
    json.dumps(numbers_of(result), allow_nan=False)  # what killed the run before


# --- LIME: segmentation fallback --------------------------------------------------------------


@pytest.mark.parametrize("image", [grass, noise], ids=["grass", "noise"])
def test_texture_and_noise_fall_back_to_a_named_segmentation(image) -> None:
    img = image()
    assert segment(img).max() + 1 < MIN_SEGMENTS  # the failure: the course SLIC merges it all
    r = explain(tiny_model(), img, 0, to_input=to_input, samples=200, stability_rounds=2)
    assert r.failure is None
    assert r.segmentation.startswith(COURSE_SLIC) and "fallback: SLIC" in r.segmentation
    assert len(r.weights) >= MIN_SEGMENTS
    np.testing.assert_array_equal(np.unique(r.segments), np.arange(len(r.weights)))
    assert r.stability is not None and 0.0 <= r.stability <= 1.0
    assert_finite(r)


def test_a_well_segmented_image_keeps_the_course_slic() -> None:
    img = as_pipeline_pixels(skimage.data.camera())
    segments, how = segment_with_fallback(img)
    assert how == COURSE_SLIC
    np.testing.assert_array_equal(segments, segment(img))


def test_the_last_fallback_is_a_grid_of_squares(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lime_adapter, "FALLBACK_COMPACTNESS", ())  # as if SLIC never recovered
    segments, how = segment_with_fallback(noise())
    assert how.endswith("fallback: a grid of 100 squares")
    sizes = np.bincount(segments.ravel())
    assert len(sizes) == 100 and sizes.min() >= 12 * 12 and sizes.max() <= 13 * 13


def test_a_grid_on_a_tiny_image_has_no_empty_cell() -> None:
    segments = grid_segments((3, 5, 3))
    np.testing.assert_array_equal(segments, np.arange(15).reshape(3, 5))


# --- LIME: results that say why ---------------------------------------------------------------


class Forbidden(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise AssertionError("the model should not be asked")


def test_a_uniform_image_is_not_sampled_and_says_why() -> None:
    r = explain(Forbidden(), uniform(), 0, to_input=to_input, samples=200, stability_rounds=2)
    assert r.failure == lime_adapter.NOTHING_HIDDEN
    assert r.segmentation == COURSE_SLIC and len(r.weights) >= MIN_SEGMENTS
    assert (r.weights == 0).all() and r.samples == 0 and r.stability is None
    assert_finite(r)


class Saturated(nn.Module):
    """Logits so far apart that softmax gives exactly one-hot probabilities, whatever the input."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.mean(dim=(1, 2, 3))[:, None] + 1e4, torch.zeros(len(x), 10)], dim=1)


def test_a_saturated_model_says_why_and_keeps_a_finite_trace() -> None:
    r = explain(Saturated(), noise(), 0, to_input=to_input, samples=600, stability_rounds=2)
    assert r.failure == lime_adapter.NO_RESPONSE
    assert r.trace and (r.weights == 0).all() and r.stability is None
    assert_finite(r)


def test_a_random_model_on_normalized_grass_gives_a_finite_trace() -> None:
    # The reported run: one superpixel, no rival below the top 5, an infinite separation.
    r = explain(tiny_model(), grass(), 3, to_input=to_input, samples=600, stability_rounds=2)
    assert r.failure is None and r.samples >= MIN_SAMPLES and r.trace
    assert_finite(r)


def test_separation_is_finite_without_noise_or_rivals() -> None:
    weights = np.array([3.0, 2.0, 1.0])
    assert top_separation(weights, None) == SEPARATION_SETTLED
    assert top_separation(weights, np.eye(3)) == SEPARATION_SETTLED  # 3 superpixels, top 5


def test_fewer_superpixels_than_top_k_are_sampled_with_a_finite_trace() -> None:
    image = noise()
    quadrant = np.arange(SIDE) * 2 // SIDE
    segments = grid_segments((2, 2))[quadrant[:, None], quadrant[None, :]]  # four superpixels
    rng = np.random.default_rng(1)

    def fn(batch: np.ndarray) -> np.ndarray:  # brightness plus noise: the fit has sampling noise
        score = 4 * batch.mean(axis=(1, 2, 3)) + rng.normal(size=len(batch))
        p = 1 / (1 + np.exp(-score))
        return np.stack([p, 1 - p], axis=1)

    explainer = AntitheticLimeExplainer(random_state=0)
    data, outputs = explainer.data_labels(image, np.zeros_like(image), segments, fn, 600)
    assert explainer.trace and all(row[2] == SEPARATION_SETTLED for row in explainer.trace)
    stability = resampled_agreement(explainer.base, data, outputs, 0, rounds=2, k=5)
    assert stability == 1.0  # k = 4: every superpixel is in the top k


def test_a_nan_model_gives_placeholder_weights_and_says_why() -> None:
    img = as_pipeline_pixels(skimage.data.camera())
    r = explain(tiny_model(float("nan")), img, 0, to_input=to_input, samples=200)
    assert r.failure == lime_adapter.NOT_FINITE
    assert len(r.weights) == r.segments.max() + 1 and (r.weights == 0).all()
    assert r.score == 0.0 and r.stability is None
    assert_finite(r)


# --- gradient methods ------------------------------------------------------------------------


def gradient_maps(model: nn.Module, x: Tensor, target: Tensor) -> Iterator[Tensor]:
    yield attributions.saliency(model, x, target)
    yield attributions.smoothgrad(attributions.saliency, model, x, target, samples=2)
    yield integrated_gradients.integrated_gradients(model, x, target, baseline=x * 0, steps=2)


def test_gradient_methods_on_a_nan_model_return_maps_the_helper_flags() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1])
    for maps in gradient_maps(tiny_model(float("nan")), x, target):
        assert attributions.why_unexplained(maps) == [attributions.NOT_FINITE] * 2


def test_gradient_methods_with_a_zero_gradient_return_maps_the_helper_flags() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1])
    for maps in gradient_maps(tiny_model(0.0), x, target):
        assert attributions.why_unexplained(maps) == [attributions.ZERO_EVERYWHERE] * 2


def test_why_unexplained_passes_a_usable_map_and_names_each_image() -> None:
    maps = np.stack([np.ones((4, 4)), np.zeros((4, 4)), np.full((4, 4), np.inf)])
    assert attributions.why_unexplained(maps) == [
        None,
        attributions.ZERO_EVERYWHERE,
        attributions.NOT_FINITE,
    ]


# --- figures ---------------------------------------------------------------------------------

N, H = 4, 16
IMAGES = np.random.default_rng(0).uniform(0, 1, (N, H, H, 3))
TITLES = ["a", "b", "c", "d"]
# One degenerate map per image: all zero, constant, all NaN, inf on the diagonal.
DEGENERATE = np.stack(
    [
        np.zeros((H, H)),
        np.full((H, H), 2.5),
        np.full((H, H), np.nan),
        np.where(np.eye(H, dtype=bool), np.inf, 1.0),
    ]
)
NOTES = [None, "the map is not finite", None, None]


def drawn(make: Callable[[], Figure], path: Path) -> bytes:
    """The PNG of ``make()``, failing on any warning while it is built or rendered."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = figures.png_bytes(make())
    atomic_write_bytes(path, data)  # as Run.write writes a figure
    assert path.read_bytes() == data and data.startswith(b"\x89PNG")
    return data


def test_map_figures_draw_degenerate_maps(tmp_path: Path) -> None:
    maps, cols = DEGENERATE, [["x", "y"]] * N
    segments = np.zeros((N, H, H), int)  # one superpixel, weight 0, 2.5, NaN, 1
    makers = {
        "pairs": lambda: attribution_figures.image_map_pairs(IMAGES, maps, TITLES, "t"),
        "signed": lambda: attribution_figures.image_map_pairs(
            IMAGES, maps, TITLES, "t", signed=True
        ),
        "cam": lambda: attribution_figures.cam_grid(
            IMAGES, maps[:, None], TITLES, [["x"]] * N, "t"
        ),
        "cams": lambda: attribution_figures.cam_grid(
            IMAGES, np.stack([maps, -maps], 1), TITLES, cols, "t"
        ),
        "activations": lambda: feature_figures.activation_grid(
            IMAGES, np.stack([maps, -maps], 1), [0, 1], TITLES, "t"
        ),
        "features": lambda: feature_figures.feature_grid(maps, "t", per_row=2),
        "lime": lambda: attribution_figures.lime_figure(
            IMAGES, segments, maps[:, 0, :1], TITLES, "t"
        ),
    }
    for name, make in makers.items():
        drawn(make, tmp_path / f"{name}.png")


def test_shared_scale_figures_draw_all_nan_maps(tmp_path: Path) -> None:
    nan = np.full((2, 3, H, H), np.nan)  # [N,F,h,w]: no finite value to scale by
    drawn(
        lambda: feature_figures.activation_grid(IMAGES[:2], nan, [0, 1, 2], TITLES[:2], "t"),
        tmp_path / "a.png",
    )
    drawn(lambda: feature_figures.feature_grid(nan[0], "t", per_row=2), tmp_path / "f.png")


def test_lime_figure_colours_fewer_superpixels_than_top_k(tmp_path: Path) -> None:
    segments = np.stack([grid_segments((H, H)) % 3] * 3)  # three superpixels
    weights = [np.array([1.0, -1.0, 0.5]), np.zeros(3), np.full(3, np.nan)]
    drawn(
        lambda: attribution_figures.lime_figure(IMAGES[:3], segments, weights, TITLES, "t"),
        tmp_path / "l.png",
    )
    overlay = attribution_figures.lime_overlay(IMAGES[0], segments[0], weights[0])
    green, red = overlay[segments[0] != 1], overlay[segments[0] == 1]
    assert (green[:, 1] >= 0.45 * 0.9).all() and (red[:, 0] >= 0.45 * 0.95).all()


@pytest.mark.parametrize("kind", ["maps", "lime", "cam", "cams"])
def test_a_note_replaces_the_map_panel(kind: str, tmp_path: Path) -> None:
    maps, titles = np.random.default_rng(1).uniform(0, 1, (N, H, H)), TITLES
    segments = np.stack([grid_segments((H, H))] * N)
    make = {
        "maps": lambda notes: attribution_figures.image_map_pairs(
            IMAGES, maps, titles, "t", notes=notes
        ),
        "lime": lambda notes: attribution_figures.lime_figure(
            IMAGES, segments, [np.linspace(-1, 1, 100)] * N, titles, "t", notes=notes
        ),
        "cam": lambda notes: attribution_figures.cam_grid(
            IMAGES, maps[:, None], titles, [["x"]] * N, "t", notes=notes
        ),
        "cams": lambda notes: attribution_figures.cam_grid(
            IMAGES, np.stack([maps, maps], 1), titles, [["x", "y"]] * N, "t", notes=notes
        ),
    }[kind]
    plain = drawn(lambda: make(None), tmp_path / "plain.png")
    assert drawn(lambda: make([None] * N), tmp_path / "none.png") == plain
    noted = drawn(lambda: make(NOTES), tmp_path / "noted.png")
    assert noted != plain


def test_confusion_figure_draws_empty_and_constant_matrices(tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    for i, cm in enumerate([np.zeros((3, 3), int), np.ones((3, 3), int), np.eye(3, dtype=int)]):
        drawn(
            lambda cm=cm: confusion_figures.confusion_figure(cm, classes, "t"),
            tmp_path / f"{i}.png",
        )


def counts(trace: list[list[float]] | None) -> list[list[int]] | None:
    """IG's gradients per round and image for a ``trace``: 5, 7, 9, ..."""
    return None if trace is None else [[5 + 2 * r] * len(row) for r, row in enumerate(trace)]


@pytest.mark.parametrize(
    "lime, smooth, ig, ascent",
    [
        ([], [], [], []),  # nothing ran
        (None, None, None, [(np.array([], int), np.array([]))]),  # raised IndexError before
        (
            [0, 0],
            [[math.nan, math.nan]] * 2,
            [[math.nan, math.nan], [math.inf, 0.1]],
            [(np.array([0, 10]), np.array([math.nan, math.nan]))],
        ),  # a NaN checkpoint
        (None, None, None, [(np.array([0, 10, 20]), np.array([0.0, 0.0, 0.0]))]),
    ],
    ids=["empty", "empty-curve", "nan", "zero-curve"],
)
def test_convergence_figure_draws_empty_and_nan_traces(lime, smooth, ig, ascent, tmp_path):
    from types import SimpleNamespace

    from hw5lib.report.convergence_plot import convergence_figure
    from hw5lib.stages.q2_filters import FiltersResult
    from hw5lib.stages.q3_lime import LimeStageResult
    from hw5lib.stages.q4_integrated_gradients import IntegratedGradientsResult
    from hw5lib.stages.q4_smoothgrad import SmoothGradResult

    results = [
        LimeStageResult(results=[SimpleNamespace(samples=n) for n in lime or []], cap=1000),
        SmoothGradResult(trace=smooth or []),
        IntegratedGradientsResult(trace=ig or [], counts=counts(ig) or []),
        FiltersResult(curves=ascent),
    ]
    panels = [p for r in results if (p := r.convergence_panel()) is not None]
    drawn(lambda: convergence_figure(panels, "t"), tmp_path / "c.png")
