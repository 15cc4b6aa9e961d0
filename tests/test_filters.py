"""Filter ascent climbs each filter's own activation, keeps images valid, is repeatable, leaves the
model untouched and runs it only up to the layer; the filter choice follows the data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from hw5lib.methods import ascent_score
from hw5lib.methods import filters as filters_module
from hw5lib.methods.ascent_canvas import Canvas, ascent_canvas, receptive_field
from hw5lib.methods.ascent_score import redirected_relu
from hw5lib.methods.filters import (
    CLIMB_WINDOW,
    CLIMBING,
    RECORD_EVERY,
    AscentResult,
    filter_ascent,
    layer_activations,
    most_active_filters,
    still_climbing,
)
from hw5lib.methods.fourier_image import spectrum_to_pixels
from hw5lib.model.hooks import forward_until, hook_count
from hw5lib.model.layers import gradient_copy
from model import Classifier
from tests.zoo import ResidualNet, seeded_

SIDE = 32
SHAPE = (3, SIDE, SIDE)
FILTERS = [2, 3, 5, 7]
STEPS = 25


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads; on a busy machine those spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_classifier() -> Classifier:
    """He-scaled seeded weights, so that deep channels still depend on the image."""
    model = Classifier(widths=(4, 8, 8, 8, 8), hidden=(16, 16), input_size=SIDE)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:  # conv and linear weights
                p.copy_(torch.randn(p.shape, generator=g) * (2 / p[0].numel()) ** 0.5)
            elif name.startswith("cnn") and name.endswith("weight"):  # BatchNorm scale
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def to_input(pixels: Tensor) -> Tensor:
    return (pixels - 0.5) / 0.25


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ascend(model: nn.Module, k: int, filters: list[int] = FILTERS, seed: int = 0, **kw: object):
    return filter_ascent(
        model,
        model.cnn[k],
        filters,
        shape=SHAPE,
        to_input=to_input,
        steps=STEPS,
        generator=gen(seed),
        **kw,
    )


def mean_activation(model: nn.Module, k: int, pixels: Tensor) -> Tensor:
    """[N, K]: each image's mean activation of every channel of model.cnn[k]."""
    return layer_activations(model, model.cnn[k], to_input(pixels)).mean(dim=(2, 3))


@pytest.mark.parametrize("k", [6, 14])
def test_ascent_raises_each_filters_activation_far_above_the_start(k: int) -> None:
    model = tiny_classifier()
    result = ascend(model, k)
    start, end = result.activation[0], result.final
    ends = result.steps.tolist()
    assert result.recorded.tolist() == sorted({*range(0, max(ends) + 1, 10), *ends})
    assert result.activation.shape == (len(result.recorded), len(FILTERS))
    assert (end >= 3 * start).all() and (end - start >= 0.5).all(), (start, end)


def test_recorded_activation_is_that_of_the_untransformed_image() -> None:
    model, rows = tiny_classifier(), torch.arange(len(FILTERS))
    result = ascend(model, 10, redo_climbing=False)
    start = filter_ascent(
        model, model.cnn[10], FILTERS, shape=SHAPE, to_input=to_input, steps=0, generator=gen(0)
    )
    for pixels, recorded in (
        (result.pixels, result.final),
        (start.pixels, start.activation[0]),
    ):
        direct = mean_activation(model, 10, pixels)[rows, FILTERS]
        torch.testing.assert_close(recorded, direct, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.activation[0], start.activation[0])


def test_still_climbing_compares_the_last_window_of_recorded_intervals_with_the_threshold() -> None:
    start = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0])
    rise = torch.tensor([1.0, 1 + 2 * CLIMBING, 1 + CLIMBING / 2, 1.0, 1 + 2 * CLIMBING])
    rows = torch.stack([start] * 3 + [start * rise])
    rows[-2, 4] = rows[-1, 4]  # all of its rise came before the window: it has settled
    rows[-CLIMB_WINDOW - 1, 4] = start[4]
    assert still_climbing(rows).tolist() == [False, True, False, False, True]
    rows[-CLIMB_WINDOW - 1, 4] = rows[-1, 4]  # risen before the window only
    assert still_climbing(rows).tolist() == [False, True, False, False, False]
    assert still_climbing(rows[-2:]).tolist() == [False, True, False, False, False]


def check_redo(model: nn.Module, seed: int) -> tuple[bool, bool]:
    """The redo rule on one start; returns (a redo was kept, a redo was dropped)."""
    once = ascend(model, 10, seed=seed, redo_climbing=False)
    twice = ascend(model, 10, seed=seed)
    climbing = still_climbing(once.activation)
    assert twice.redone == int(climbing.sum())
    assert twice.work == STEPS * len(FILTERS) + 2 * STEPS * twice.redone
    replaced = twice.steps == 2 * STEPS
    assert not (replaced & ~climbing).any()  # only filters that were climbing
    assert (twice.final[replaced] > once.final[replaced]).all()
    kept = ~replaced
    assert torch.equal(twice.pixels[kept], once.pixels[kept])
    assert torch.equal(twice.final[kept], once.final[kept])
    later = twice.recorded > STEPS
    assert twice.activation[later][:, kept].isnan().all()  # their schedule had ended
    if twice.redone:
        on_their_schedule = (twice.recorded % 10 == 0) | (twice.recorded == 2 * STEPS)
        assert not twice.activation[on_their_schedule][:, replaced].isnan().any()
        assert twice.recorded[-1] == 2 * STEPS
    direct = mean_activation(model, 10, twice.pixels)[torch.arange(len(FILTERS)), FILTERS]
    torch.testing.assert_close(twice.final, direct, rtol=1e-4, atol=1e-5)
    return bool(replaced.any()), bool((climbing & ~replaced).any())


def scripted_ascent(
    monkeypatch: pytest.MonkeyPatch, first: Tensor, redo_final: Tensor
) -> list[tuple[list[int], int]]:
    """Replace the climb itself (``_ascend``) by two scripted schedules: the first records the
    activation rows ``first`` [T, F] every RECORD_EVERY steps, the redo ends at ``redo_final``
    [R]. Each filter's pixels are filled with its own marker (first: the filter index, redo:
    100 + it). Returns the (filters, steps) each call was asked for."""
    calls: list[tuple[list[int], int]] = []

    def fake(_model, _layer, idx, steps, _how, _generator, _stop) -> AscentResult:
        calls.append((idx.tolist(), steps))
        n = len(idx)
        recorded = torch.arange(0, steps + 1, RECORD_EVERY)
        redo = len(calls) > 1
        if redo:  # a straight climb to its final value
            activation = torch.linspace(0, 1, len(recorded))[:, None] * redo_final[None, :]
        else:
            activation = first
        marker = idx.float() + (100 if redo else 0)
        pixels = marker.view(n, 1, 1, 1).expand(n, *SHAPE).clone()
        done = torch.full((n,), steps, dtype=torch.long)
        return AscentResult(pixels, activation, recorded, done, work=n * steps)

    monkeypatch.setattr(filters_module, "_ascend", fake)
    return calls


def test_filters_still_climbing_are_redone_and_kept_only_where_they_climbed_higher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Constructed outcomes, no float rounding: filters 0, 1 and 2 still climb at the end of the
    # first schedule and 3 has settled; the redo climbs higher than the first for 0 only (1
    # ends lower, 2 exactly level: not higher).
    steps = 3 * RECORD_EVERY
    first = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 2.0], [2.0, 2.0, 2.0, 2.0], [3.0, 3.0, 3.0, 2.0]]
    )  # [T=4, F=4] at steps 0, 10, 20, 30
    assert still_climbing(first).tolist() == [True, True, True, False]
    calls = scripted_ascent(monkeypatch, first, redo_final=torch.tensor([5.0, 1.0, 3.0]))
    result = filter_ascent(
        nn.Identity(), nn.Identity(), FILTERS, shape=SHAPE, to_input=to_input, steps=steps
    )
    # Only the climbing filters are redone, together, on a doubled schedule.
    assert calls == [(FILTERS, steps), ([FILTERS[0], FILTERS[1], FILTERS[2]], 2 * steps)]
    assert result.redo.rows == (0, 1, 2) and result.redo.kept == (0,)
    assert result.redone == 3
    assert result.work == steps * 4 + 2 * steps * 3  # the dropped redos count as work too
    # Filter 0 takes its redo; 1, 2 (not higher) and 3 (settled) keep the first schedule.
    assert result.steps.tolist() == [2 * steps, steps, steps, steps]
    assert result.pixels[:, 0, 0, 0].tolist() == [100 + FILTERS[0], *map(float, FILTERS[1:])]
    assert result.final.tolist() == [5.0, 3.0, 3.0, 2.0]
    later = result.recorded > steps
    assert result.activation[later][:, 1:].isnan().all()  # their schedule had ended
    assert not result.activation[:, 0].isnan().any()  # the redo records on its own schedule
    assert result.recorded[-1] == 2 * steps


def test_no_filter_is_redone_when_none_is_still_climbing(monkeypatch: pytest.MonkeyPatch) -> None:
    first = torch.tensor([[0.0] * 4, [2.0] * 4, [2.0] * 4, [2.0] * 4])  # all settled
    calls = scripted_ascent(monkeypatch, first, redo_final=torch.zeros(0))
    result = filter_ascent(
        nn.Identity(), nn.Identity(), FILTERS, shape=SHAPE, to_input=to_input, steps=30
    )
    assert len(calls) == 1 and result.redone == 0 and result.steps.tolist() == [30] * 4


def test_redo_on_a_real_model_obeys_the_rule_whichever_filters_it_lifts() -> None:
    # The real climb: which filters a redo lifts higher may differ between machines, so this
    # checks only what holds either way (check_redo's invariants).
    check_redo(tiny_classifier(), 0)


def test_each_image_excites_its_own_filter_most() -> None:
    model = tiny_classifier()
    result = ascend(model, 10)
    acts = mean_activation(model, 10, result.pixels)[:, FILTERS]  # [image, filter]
    own = acts.diagonal()
    others = acts.masked_fill(torch.eye(len(FILTERS), dtype=torch.bool), float("-inf"))
    assert (own > others.amax(dim=0)).all(), acts


def test_ascent_revives_a_filter_that_is_dead_on_the_start_image() -> None:
    model = tiny_classifier()
    with torch.no_grad():
        model.cnn[4].bias[3] -= 3.0  # BatchNorm shift: channel 3 is negative on near-gray input
    result = ascend(model, 6, filters=[3])
    assert result.activation[0, 0] == 0
    assert result.final[0] > 0.5


def test_pixels_stay_in_unit_range_and_keep_the_shape() -> None:
    model = tiny_classifier()
    pixels = ascend(model, 6, lr=0.5, weight_decay=0.0).pixels
    assert pixels.shape == (len(FILTERS), *SHAPE)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert pixels.std() > 0.05  # it moved away from the gray start


def test_spectrum_maps_to_gray_at_zero_and_to_unit_range_anywhere() -> None:
    scale = torch.ones(SIDE, SIDE // 2 + 1)
    gray = spectrum_to_pixels(torch.zeros(2, 3, SIDE, SIDE // 2 + 1, 2), scale, (SIDE, SIDE))
    torch.testing.assert_close(gray, torch.full((2, 3, SIDE, SIDE), 0.5))
    wild = spectrum_to_pixels(100 * torch.randn(2, 3, SIDE, SIDE // 2 + 1, 2), scale, (SIDE, SIDE))
    assert wild.min() >= 0 and wild.max() <= 1


def test_ascent_is_deterministic_for_a_seeded_generator() -> None:
    model = tiny_classifier()
    first, again, other = ascend(model, 6), ascend(model, 6), ascend(model, 6, seed=1)
    assert torch.equal(first.pixels, again.pixels)
    torch.testing.assert_close(first.activation, again.activation, rtol=0, atol=0, equal_nan=True)
    assert not torch.allclose(first.pixels, other.pixels)


def test_ascent_leaves_no_hooks_no_grads_and_restores_training_mode() -> None:
    model = tiny_classifier().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ascend(model, 6)
    assert hook_count(model) == 0
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats untouched


def test_ascent_removes_its_hooks_when_the_layer_is_never_reached() -> None:
    model = tiny_classifier()
    model.spare = nn.ReLU()  # a module of the model that its forward never calls
    with pytest.raises(RuntimeError, match="not reached"):
        filter_ascent(model, model.spare, [0], shape=SHAPE, to_input=to_input, steps=2)
    assert hook_count(model) == 0


def test_redirected_relu_changes_gradients_not_values() -> None:
    model = tiny_classifier()
    x = torch.randn(2, *SHAPE, generator=gen(3))
    plain = model(x)
    with redirected_relu(model.cnn[6]):
        assert hook_count(model) == 1
        torch.testing.assert_close(model(x), plain)
    assert hook_count(model) == 0


class _Explodes(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise AssertionError("ran past the visualized layer")


def test_ascent_runs_the_model_only_up_to_the_layer() -> None:
    model = tiny_classifier()
    model.cnn[10] = _Explodes()
    model.fc = _Explodes()  # type: ignore[assignment]
    result = ascend(model, 6)
    assert torch.isfinite(result.final).all()


def test_most_active_filters_picks_top_mean_channels_in_channel_order() -> None:
    acts = torch.zeros(3, 6, 2, 2)
    for channel, level in {0: 0.1, 1: 5.0, 2: -1.0, 3: 2.0, 4: 9.0, 5: 0.0}.items():
        acts[:, channel] = level
    acts[0, 5] = 30.0  # one strong image lifts channel 5's mean to 7.5
    assert most_active_filters(acts, 3) == [1, 4, 5]
    assert most_active_filters(acts, 10) == [0, 1, 2, 3, 4, 5]


def analytic_receptive_field(model: Classifier, k: int) -> tuple[int, int]:
    """(window, stride) of model.cnn[k] from its convs' and pools' kernels and strides."""
    window, stride = 1, 1
    for m in model.cnn[: k + 1]:
        if isinstance(m, nn.Conv2d | nn.MaxPool2d):
            kernel = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            step = m.stride if isinstance(m.stride, int) else m.stride[0]
            window += (kernel - 1) * stride
            stride *= step
    return window, stride


@pytest.mark.parametrize("k", [2, 6, 10])
def test_receptive_field_by_gradient_matches_the_kernels_and_strides(k: int) -> None:
    model = tiny_classifier()
    window, stride = analytic_receptive_field(model, k)
    assert receptive_field(model, model.cnn[k], SHAPE, to_input) == ((window,) * 2, (stride,) * 2)


def test_a_receptive_field_reaching_the_border_climbs_the_whole_image() -> None:
    model = tiny_classifier()  # cnn.14 sees 38 px: more than the 32 px image
    assert receptive_field(model, model.cnn[14], SHAPE, to_input) is None
    assert ascent_canvas(model, model.cnn[14], SHAPE, to_input) == Canvas.whole((SIDE, SIDE))


def test_a_small_receptive_field_climbs_a_seamless_tile_measured_at_full_size() -> None:
    model, k = tiny_classifier(), 6
    canvas = ascent_canvas(model, model.cnn[k], SHAPE, to_input)
    window, stride = analytic_receptive_field(model, k)  # 8 px, stride 2
    period = -(-max(window, SIDE // 4) // stride) * stride  # rounded up to the stride
    view = -(-(period + window) // stride) * stride
    assert canvas == Canvas((period,) * 2, (view,) * 2, (SIDE, SIDE)), canvas
    tiled = ascend(model, k, canvas=canvas)
    again = ascend(model, k, canvas=canvas)
    assert torch.equal(tiled.pixels, again.pixels)  # deterministic
    assert tiled.pixels.shape == (len(FILTERS), *SHAPE)
    px = tiled.pixels  # one tile repeated: shifting by the period changes nothing
    torch.testing.assert_close(px[..., period:, :], px[..., :-period, :], rtol=0, atol=0)
    torch.testing.assert_close(px[..., :, period:], px[..., :, :-period], rtol=0, atol=0)
    # ``final`` is the figure's image measured at full size, not the smaller view's.
    direct = mean_activation(model, k, px)[torch.arange(len(FILTERS)), FILTERS]
    torch.testing.assert_close(tiled.final, direct, rtol=1e-4, atol=1e-5)
    # ... and it climbs about as high there as an ascent on the whole image.
    whole = ascend(model, k)
    assert (tiled.final >= 0.9 * whole.final).all(), (tiled.final, whole.final)


def scorer_and_slicing(
    monkeypatch: pytest.MonkeyPatch, model: nn.Module, layer: nn.Module, shape: tuple
) -> tuple[object, list[int]]:
    """``filter_scorer`` on ``model``'s ``layer`` for FILTERS, and a list that grows by one each time
    it runs the model only to the conv's input (the sliced path)."""
    into: list[int] = []
    real = ascent_score.forward_into

    def counted(*args: object) -> Tensor:
        into.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ascent_score, "forward_into", counted)
    probe = torch.rand(len(FILTERS), *shape, generator=gen(5))
    score = ascent_score.filter_scorer(model, layer, torch.tensor(FILTERS), to_input, probe)
    return score, into


def full_score(model: nn.Module, layer: nn.Module, pixels: Tensor) -> Tensor:
    act = forward_until(model, layer, to_input(pixels))
    return act[torch.arange(len(FILTERS)), FILTERS].mean(dim=(1, 2))


def test_only_the_chosen_filters_of_the_last_conv_run_and_give_the_layers_own_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The folded copy: cnn.8 conv (BatchNorm folded in), cnn.9 Identity, cnn.10 ReLU.
    model = gradient_copy(tiny_classifier(), torch.rand(2, *SHAPE, generator=gen(1)))
    score, into = scorer_and_slicing(monkeypatch, model, model.cnn[10], SHAPE)
    assert len(into) == 1  # the check on the probe ran the sliced path
    pixels = torch.rand(len(FILTERS), *SHAPE, generator=gen(6)).requires_grad_(True)
    sliced = score(pixels)
    assert len(into) == 2  # ... and so does the climb
    (grad,) = torch.autograd.grad(sliced.sum(), pixels)
    full = full_score(model, model.cnn[10], pixels)
    (full_grad,) = torch.autograd.grad(full.sum(), pixels)
    torch.testing.assert_close(sliced, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, full_grad, rtol=1e-4, atol=1e-6)


def test_a_residual_sum_after_the_last_conv_keeps_the_whole_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # stage.1.act is ReLU(body(x) + x): the modules run conv, Identity, ReLU, but the sum is
    # functional; the check on the probe finds the sliced path wrong.
    model = seeded_(ResidualNet(width=8), 0).eval()
    model = gradient_copy(model, torch.rand(2, *SHAPE, generator=gen(1)))
    layer = model.stage[1].act
    assert ascent_score.sliced_head(model, layer, torch.rand(1, *SHAPE)) is not None
    score, into = scorer_and_slicing(monkeypatch, model, layer, SHAPE)
    pixels = torch.rand(len(FILTERS), *SHAPE, generator=gen(6))
    calls = len(into)
    torch.testing.assert_close(score(pixels), full_score(model, layer, pixels))
    assert len(into) == calls  # the climb runs the model to the layer


def test_the_plan_prices_each_layer_at_its_canvas_and_finds_each_canvas_once() -> None:
    from types import SimpleNamespace

    from hw5lib.config import RunConfig
    from hw5lib.stages import q2_filters as stage
    from hw5lib.stages.context import Memo
    from hw5lib.stages.filter_layers import CANVAS, STEP_OVERHEAD

    model = tiny_classifier()
    cfg = RunConfig(data=None, out=Path("o"), checkpoint=Path("c"), filter_layers=("2", "14"))
    run = SimpleNamespace(
        model=model,
        grad=None,
        pre=SimpleNamespace(channels=3, size=(SIDE, SIDE)),
        to_input=to_input,
        memo=Memo(),
        replay=None,
        subject=SimpleNamespace(paths=[Path("a.png")]),
    )
    work = stage.filters_cost(run, cfg, {stage.NAME: 1 / 3})  # type: ignore[arg-type]
    small, whole = run.memo.all(CANVAS)["cnn.2"], run.memo.all(CANVAS)["cnn.14"]
    assert small.tiled and not whole.tiled
    # cnn.2 on a view of (8 + 3)^2 of 32^2 pixels, plus the fixed share; cnn.14 whole.
    per_step = (11 * 11 / SIDE**2 + STEP_OVERHEAD) + 1.0
    per_layer = cfg.filters_per_layer
    assert work.backward == pytest.approx(0.5 * per_step * per_layer * cfg.filter_steps)
    found = dict(run.memo.found)
    stage.filters_cost(run, cfg, {stage.NAME: 1 / 3})  # type: ignore[arg-type]
    assert run.memo.found == found  # not measured again
    assert run.memo.all(CANVAS)["cnn.2"] is small
