"""Gradient attributions against closed forms, against Captum, and for side effects."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import Tensor, nn

from hw5lib.methods.attributions import (
    grad_x_input,
    input_gradient,
    saliency,
    smoothgrad,
    smoothgrad_until_converged,
    split_half_agreement,
)
from hw5lib.methods.faithfulness import gaussian_blur as blurred
from hw5lib.methods.integrated_gradients import (
    cell_errors,
    cell_nodes,
    cell_weights,
    cells_to_split,
    completeness_error,
    integrated_gradients,
    integrated_gradients_until_converged,
    logits_of,
)
from hw5lib.model.hooks import hook_count
from model import Classifier
from tests.zoo import seeded_

SIDE = 32
C, H, W, K = 3, 6, 5, 4  # closed-form models: small, non-square


def tiny_classifier(seed: int = 0) -> Classifier:
    return seeded_(
        Classifier(widths=(4, 8, 8, 8, 8), hidden=(16, 16), input_size=SIDE), seed
    ).eval()


def images(n: int = 3, seed: int = 1, shape: tuple[int, ...] = (3, SIDE, SIDE)) -> Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def linear_model(seed: int = 0) -> nn.Sequential:
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, K))
    return seeded_(model, seed).eval()


class Quadratic(nn.Module):
    """logit_k(x) = sum_i A[k, i] * x_i^2, so d logit_k / d x_i = 2 * A[k, i] * x_i."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(K, C * H * W, generator=g))

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1) ** 2) @ self.A.T


def targets(n: int, k: int = K) -> Tensor:
    return torch.arange(n) % k  # a different class for neighbouring images


# Closed forms


def test_input_gradient_of_linear_model_is_the_target_row_of_the_weight():
    model, x = linear_model(), images(5, shape=(C, H, W))
    t = targets(5)
    expected = model[1].weight[t].detach().view(5, C, H, W)
    torch.testing.assert_close(input_gradient(model, x, t), expected, atol=1e-6, rtol=0)


def test_saliency_of_linear_model_is_abs_weight_max_over_channels():
    model, x = linear_model(), images(5, shape=(C, H, W))
    t = targets(5)
    expected = model[1].weight[t].detach().abs().view(5, C, H, W).amax(dim=1)
    out = saliency(model, x, t)
    assert out.shape == (5, H, W)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_saliency_of_quadratic_model_is_abs_of_twice_weight_times_input():
    model, x = Quadratic(), images(5, shape=(C, H, W))
    t = targets(5)
    expected = (2 * model.A[t].detach().view(5, C, H, W) * x).abs().amax(dim=1)
    torch.testing.assert_close(saliency(model, x, t), expected, atol=1e-6, rtol=0)


def test_ig_of_linear_model_is_weight_times_input_minus_baseline():
    model, x = linear_model(), images(4, shape=(C, H, W))
    base, t = images(4, seed=7, shape=(C, H, W)), targets(4)
    expected = model[1].weight[t].detach().view(4, C, H, W) * (x - base)
    out = integrated_gradients(model, x, t, baseline=base, steps=3)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_ig_of_quadratic_model_is_weight_times_difference_of_squares():
    # IG_i = (x_i - b_i) * int_0^1 2 A_i (b_i + a (x_i - b_i)) da = A_i (x_i^2 - b_i^2)
    model, x = Quadratic(), images(4, shape=(C, H, W))
    base, t = images(4, seed=7, shape=(C, H, W)), targets(4)
    expected = model.A[t].detach().view(4, C, H, W) * (x**2 - base**2)
    out = integrated_gradients(model, x, t, baseline=base, steps=2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# Definitions and Captum


def test_grad_x_input_is_input_gradient_times_input_and_matches_captum():
    model, x = tiny_classifier(), images(3)
    t = torch.tensor([0, 5, 10])
    out = grad_x_input(model, x, t)
    torch.testing.assert_close(out, input_gradient(model, x, t) * x, atol=0, rtol=0)
    ref = InputXGradient(model).attribute(x.clone().requires_grad_(), target=t)
    torch.testing.assert_close(out, ref.detach(), atol=1e-6, rtol=1e-5)


def test_saliency_matches_captum_abs_saliency_max_over_channels():
    model, x = tiny_classifier(), images(3)
    t = torch.tensor([2, 3, 7])
    ref = Saliency(model).attribute(x.clone().requires_grad_(), target=t, abs=True).amax(dim=1)
    torch.testing.assert_close(saliency(model, x, t), ref.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("baseline_kind", ["black", "blurred"])
def test_ig_sums_to_logit_difference(baseline_kind):
    model, x = tiny_classifier(), images(3)
    t = torch.tensor([1, 4, 9])
    base = torch.zeros_like(x) if baseline_kind == "black" else blurred(x)
    attr = integrated_gradients(model, x, t, baseline=base, steps=64)
    gap = logits_of(model, x, t) - logits_of(model, base, t)
    assert (gap.abs() > 1e-3).all()  # the check is not vacuous
    err = completeness_error(model, x, t, base, attr)
    assert err.shape == (3,)
    assert (err < 0.01).all(), err
    # completeness_error itself is the relative gap, computed independently here
    torch.testing.assert_close(err, (attr.sum(dim=(1, 2, 3)) - gap).abs() / gap.abs())


def test_ig_matches_captum_gauss_legendre_with_same_steps():
    model, x = tiny_classifier(), images(3)
    t, steps = torch.tensor([0, 6, 3]), 16
    base = blurred(x)
    ours = integrated_gradients(model, x, t, baseline=base, steps=steps)
    ref = IntegratedGradients(model).attribute(
        x.clone(), baselines=base, target=t, n_steps=steps, method="gausslegendre"
    )
    torch.testing.assert_close(ours, ref.detach(), atol=1e-5, rtol=1e-4)


def test_blurred_keeps_shape_and_constant_images_and_smooths_noise():
    x = images(2, shape=(3, 24, 16))
    b = blurred(x)
    assert b.shape == x.shape
    flat = torch.full((1, 3, 24, 16), 0.3)
    torch.testing.assert_close(blurred(flat), flat)  # replicate padding: no dark border
    assert b.std() < 0.5 * x.std()
    torch.testing.assert_close(b.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.15, rtol=0)


# SmoothGrad


def test_smoothgrad_with_zero_sigma_equals_the_wrapped_method():
    model, x = tiny_classifier(), images(2)
    t = torch.tensor([3, 8])
    g = torch.Generator().manual_seed(0)
    for method in (saliency, grad_x_input):
        out = smoothgrad(method, model, x, t, samples=3, sigma=0.0, generator=g)
        torch.testing.assert_close(out, method(model, x, t), atol=1e-6, rtol=1e-5)


def test_smoothgrad_is_deterministic_for_a_seeded_generator_and_differs_across_seeds():
    model, x = tiny_classifier(), images(2)
    t = torch.tensor([3, 8])

    def run(seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return smoothgrad(saliency, model, x, t, samples=4, sigma=0.2, generator=g)

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)


def test_smoothgrad_is_mean_of_method_over_explicit_noise_scaled_by_each_image_range():
    model, samples, sigma, seed = tiny_classifier(), 3, 0.15, 11
    x = images(2) * torch.tensor([0.5, 3.0]).view(2, 1, 1, 1)  # different value ranges
    t = torch.tensor([1, 2])
    out = smoothgrad(
        grad_x_input,
        model,
        x,
        t,
        samples=samples,
        sigma=sigma,
        generator=torch.Generator().manual_seed(seed),
    )
    noise = torch.randn((samples, *x.shape), generator=torch.Generator().manual_seed(seed))
    expected = torch.zeros_like(x)
    for i in range(len(x)):
        spread = x[i].max() - x[i].min()
        for s in range(samples):
            xi = (x[i] + noise[s, i] * sigma * spread)[None]
            expected[i] += grad_x_input(model, xi, t[i : i + 1])[0] / samples
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-4)


# Batching and side effects


@pytest.mark.parametrize("method", ["saliency", "grad_x_input", "ig", "smoothgrad"])
def test_results_do_not_depend_on_batch_size(method):
    model, x = tiny_classifier(), images(5)
    t = targets(5, 11)

    def run(bs: int) -> Tensor:
        if method == "saliency":
            return saliency(model, x, t, batch_size=bs)
        if method == "grad_x_input":
            return grad_x_input(model, x, t, batch_size=bs)
        if method == "ig":
            return integrated_gradients(model, x, t, baseline=blurred(x), steps=4, batch_size=bs)
        g = torch.Generator().manual_seed(3)
        return smoothgrad(saliency, model, x, t, samples=3, generator=g, batch_size=bs)

    small, large = run(1), run(1000)
    # not bit-identical: CPU convolutions round differently for batch 1 and 5 (~1 ulp)
    torch.testing.assert_close(small, large, atol=1e-6, rtol=1e-5)


def _call_every_method(model: nn.Module, x: Tensor, t: Tensor) -> list[Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        input_gradient(model, x, t, batch_size=2),
        saliency(model, x, t, batch_size=2),
        grad_x_input(model, x, t, batch_size=2),
        smoothgrad(saliency, model, x, t, samples=2, generator=g, batch_size=2),
        integrated_gradients(model, x, t, baseline=torch.zeros_like(x), steps=3, batch_size=2),
        logits_of(model, x, t, batch_size=2),
    ]


def test_methods_leave_model_and_input_untouched():
    model = tiny_classifier().train()  # a model in train mode stays in train mode
    model.fc[0].weight.requires_grad_(False)  # the caller's own flags come back as they were
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = {n: b.clone() for n, b in model.named_buffers()}
    x = images(3)
    x_before = x.clone()
    t = torch.tensor([0, 1, 2])

    outs = _call_every_method(model, x, t)

    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    assert all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    for n, b in model.named_buffers():  # BatchNorm ran in eval mode: running stats untouched
        assert torch.equal(b, stats[n]), n
    assert hook_count(model) == 0
    assert all(not o.requires_grad and o.grad_fn is None for o in outs)


def test_methods_score_train_mode_models_in_eval_mode():
    x, t = images(3), torch.tensor([4, 5, 6])
    in_train = _call_every_method(tiny_classifier().train(), x, t)
    in_eval = _call_every_method(tiny_classifier().eval(), x, t)
    for a, b in zip(in_train, in_eval, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.lin = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("boom")


def test_mode_and_requires_grad_are_restored_when_forward_raises():
    model = Exploding().train()
    with pytest.raises(RuntimeError, match="boom"):
        saliency(model, images(1, shape=(3, 4, 4)), torch.tensor([0]))
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------ stopping once converged


def test_converging_smoothgrad_with_one_full_round_is_plain_smoothgrad():
    model, x = tiny_classifier(), images()
    t = targets(len(x))
    plain = smoothgrad(saliency, model, x, t, samples=8, generator=torch.Generator().manual_seed(3))
    rounds = smoothgrad_until_converged(
        saliency, model, x, t, max_samples=8, min_samples=8, round_samples=8,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    torch.testing.assert_close(rounds.value, plain, rtol=1e-5, atol=1e-7)
    assert rounds.used.tolist() == [8] * len(x)


def test_split_half_agreement_predicts_the_correlation_with_the_noise_free_map():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(6, 192, 192, generator=g)
    a = truth + 1.5 * torch.randn(truth.shape, generator=g)
    b = truth + 1.5 * torch.randn(truth.shape, generator=g)
    predicted = split_half_agreement(a, b)
    mean, t = ((a + b) / 2).flatten(1), truth.flatten(1)
    mean, t = mean - mean.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    actual = (mean * t).sum(1) / (mean.norm(dim=1) * t.norm(dim=1))
    torch.testing.assert_close(predicted, actual, atol=0.01, rtol=0)
    assert split_half_agreement(a, a).allclose(torch.ones(6))


def test_smoothgrad_of_a_linear_model_stops_after_the_first_round():
    # Saliency of a linear model ignores the noise: the halves agree at once.
    model, x = linear_model(), images(shape=(C, H, W))
    result = smoothgrad_until_converged(
        saliency, model, x, targets(len(x)), max_samples=50, min_samples=10, round_samples=10,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert result.used.tolist() == [10] * len(x)
    assert (result.quality > 0.999).all()


def test_noisy_smoothgrad_runs_longer_than_a_smooth_one_and_stops_at_the_cap():
    model, x = tiny_classifier(), images()
    result = smoothgrad_until_converged(
        saliency, model, x, targets(len(x)), max_samples=30, agreement=0.9999,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert result.used.tolist() == [30] * len(x)
    assert len(result.trace) == 3


def test_converging_ig_stops_after_the_first_round_for_a_linear_model():
    model, x = linear_model(), images(shape=(C, H, W))
    base = torch.zeros_like(x)
    result = integrated_gradients_until_converged(
        model, x, targets(len(x)), baseline=base, cells=4, max_steps=32
    )
    assert result.used.tolist() == [5] * len(x)  # 3 inner edges and 2 end-cell midpoints
    assert result.splits == [[]] * len(x)
    assert (result.quality < 1e-4).all()


class Cubic(nn.Module):
    """logit_k(x) = sum_i A[k, i] x_i^3: IG_i = A_i (x_i^3 - b_i^3), and the integrand along
    the path is quadratic in alpha, which neither the trapezoid nor the midpoint rule
    integrates exactly: the subdivision has to refine."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(K, C * H * W, generator=g, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1) ** 3) @ self.A.T


def test_quadratic_integrands_are_exact_and_cubic_ones_converge_to_the_closed_form():
    x = images(4, shape=(C, H, W)).double()
    base, t = images(4, seed=7, shape=(C, H, W)).double(), targets(4)
    model = Quadratic().double()
    result = integrated_gradients_until_converged(model, x, t, baseline=base)
    expected = model.A[t].detach().view(4, C, H, W) * (x**2 - base**2)
    torch.testing.assert_close(result.value, expected, atol=1e-10, rtol=1e-10)
    assert result.used.tolist() == [5] * 4  # linear integrand: exact at once

    cubic = Cubic()
    result = integrated_gradients_until_converged(cubic, x, t, baseline=base, tolerance=1e-4,
                                                  max_steps=200)  # fmt: skip
    exact = cubic.A[t].detach().view(4, C, H, W) * (x**3 - base**3)
    gap = exact.sum(dim=(1, 2, 3))
    assert (result.used > 5).all()  # it did refine
    assert ((result.value.sum(dim=(1, 2, 3)) - gap).abs() / gap.abs() <= 1e-4).all()
    # the whole map, not only its sum, approaches the closed form
    rel = (result.value - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)
    assert (rel < 0.02).all(), rel


def riemann_reference(model: nn.Module, x: Tensor, t: Tensor, base: Tensor, steps: int) -> Tensor:
    """IG by the midpoint Riemann sum with ``steps`` points, one image at a time."""
    total = torch.zeros_like(x)
    for k in range(steps):
        a = (k + 0.5) / steps
        total += input_gradient(model, base + a * (x - base), t, batch_size=len(x))
    return (x - base) * total / steps


def test_converged_ig_of_a_relu_net_agrees_with_a_2000_step_riemann_sum_in_float64():
    model, x = tiny_classifier().double(), images(3).double()
    t, base = torch.tensor([1, 4, 9]), torch.zeros_like(x)
    result = integrated_gradients_until_converged(model, x, t, baseline=base, tolerance=1e-3,
                                                  max_steps=400)  # fmt: skip
    reference = riemann_reference(model, x, t, base, 2000)
    gap = logits_of(model, x, t) - logits_of(model, base, t)
    ref_err = (reference.sum(dim=(1, 2, 3)) - gap).abs() / gap.abs()
    assert (result.quality <= 1e-3).all() and (ref_err < 1e-3).all()
    assert (result.used < 400).all()
    rel = (result.value - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)
    assert (rel < 0.05).all(), rel


def test_reported_completeness_error_is_an_independent_recomputation_of_the_estimate():
    model, x = tiny_classifier(), images()
    t, base = targets(len(x), 11), blurred(x)
    result = integrated_gradients_until_converged(model, x, t, baseline=base, tolerance=1e-3)
    with torch.no_grad():
        gap = model(x).gather(1, t[:, None]) - model(base).gather(1, t[:, None])
    gap = gap.squeeze(1).double()
    err = (result.value.double().sum(dim=(1, 2, 3)) - gap).abs() / gap.abs()
    torch.testing.assert_close(result.quality.double(), err, rtol=1e-3, atol=1e-6)
    # the last round's error (from the per-cell errors) is the error of the map returned
    torch.testing.assert_close(torch.tensor(result.trace[-1], dtype=torch.float64), err,
                               rtol=1e-3, atol=1e-5)  # fmt: skip


def test_the_estimate_is_the_rule_on_its_final_subdivision_recomputed_independently():
    model, x = tiny_classifier(), images()
    t, base = targets(len(x), 11), torch.zeros_like(x)
    result = integrated_gradients_until_converged(model, x, t, baseline=base, tolerance=1e-3,
                                                  max_steps=40)  # fmt: skip
    for i in range(len(x)):
        edges = sorted({0.0, 0.25, 0.5, 0.75, 1.0}.union(*result.splits[i]))
        # trapezoid inside, midpoint on the end cells, written out point by point
        points: dict[float, float] = {}
        for j, (a, b) in enumerate(pairwise(edges)):
            if j in (0, len(edges) - 2):
                points[(a + b) / 2] = points.get((a + b) / 2, 0.0) + (b - a)
            else:
                points[a] = points.get(a, 0.0) + (b - a) / 2
                points[b] = points.get(b, 0.0) + (b - a) / 2
        assert 0.0 not in points and 1.0 not in points  # neither end of the path is sampled
        assert result.used[i] == len(points) <= 40  # every gradient evaluated is in the rule
        xi, ti, bi = x[i : i + 1], t[i : i + 1], base[i : i + 1]
        expected = sum(w * input_gradient(model, bi + a * (xi - bi), ti) for a, w in points.items())
        torch.testing.assert_close(result.value[i : i + 1], (xi - bi) * expected,
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
    assert [row for row in result.counts] == sorted(result.counts)  # rounds only add gradients


def test_cell_errors_are_each_cells_exact_error_and_sum_to_the_rules_error():
    # f(a) = a^3 along the path: g = 3 a^2; the rule's error is sum(w g) - 1 exactly
    edges = [0.0, 0.125, 0.25, 0.5, 0.75, 1.0]
    nodes = cell_nodes(edges)
    assert nodes == [0.0625, 0.125, 0.25, 0.5, 0.75, 0.875]
    f = {a: a**3 for a in [*edges, *nodes]}
    g = {a: 3 * a**2 for a in nodes}
    errors = cell_errors(edges, f, g)
    assert errors[0] == pytest.approx(0.125 * 3 * 0.0625**2 - 0.125**3)  # midpoint end cell
    assert errors[2] == pytest.approx(0.25 * (g[0.25] + g[0.5]) / 2 - (0.5**3 - 0.25**3))
    weights = cell_weights(edges, nodes)
    assert sum(weights) == pytest.approx(1.0)
    rule = sum(w * g[a] for a, w in zip(nodes, weights, strict=True))
    assert sum(errors) == pytest.approx(rule - 1.0)
    # the worse half of the cells is split, largest error first, within the room
    split = cells_to_split(edges, errors, room=10)
    worst = sorted(range(5), key=lambda j: -abs(errors[j]))[:3]
    assert split == sorted((edges[j] + edges[j + 1]) / 2 for j in worst)
    assert len(cells_to_split(edges, errors, room=1)) == 1


def test_a_replay_of_the_splits_reproduces_the_estimate_where_the_rule_decides_otherwise():
    model, x = tiny_classifier(), images()
    t, base = targets(len(x), 11), torch.zeros_like(x)
    first = integrated_gradients_until_converged(model, x, t, baseline=base, tolerance=1e-3)
    assert any(first.splits)  # the run did refine
    again = integrated_gradients_until_converged(
        model, x, t, baseline=base, tolerance=math.inf, splits_per_image=first.splits
    )
    assert torch.equal(again.value, first.value)  # same rounds, same batches: same bytes
    assert again.used.tolist() == first.used.tolist() and again.splits == first.splits
    assert again.trace == first.trace
    fresh = integrated_gradients_until_converged(model, x, t, baseline=base, tolerance=math.inf)
    assert fresh.used.tolist() == [5] * len(x)  # without the replay it stops at once
    # a replay under a lower cap keeps the recorded rounds that fit it
    cut = integrated_gradients_until_converged(
        model, x, t, baseline=base, max_steps=10, splits_per_image=first.splits
    )
    assert (cut.used <= 10).all() and all(
        s == f[: len(s)] for s, f in zip(cut.splits, first.splits, strict=True)
    )


def test_conditioning_is_the_scores_variation_along_the_path_over_its_net_change():
    x, t = images(2, shape=(C, H, W)).double(), targets(2)
    linear = linear_model().double()
    monotone = integrated_gradients_until_converged(linear, x, t, baseline=torch.zeros_like(x))
    torch.testing.assert_close(monotone.conditioning, torch.ones(2, dtype=torch.float64))
    # from -x/2 to x: f(a) = c (1.5 a - 0.5)^2 falls to a = 1/3, then rises; on the first
    # round's edges 0, 1/4, ..., 1 it varies by 1.21875 c against a net change of 0.75 c
    quadratic = integrated_gradients_until_converged(Quadratic().double(), x, t, baseline=-x / 2)
    assert quadratic.used.tolist() == [5, 5]  # (exact: a linear integrand)
    torch.testing.assert_close(
        quadratic.conditioning, torch.full((2,), 1.21875 / 0.75, dtype=torch.float64)
    )
