"""SHAP over superpixels: agreement with Shapley values enumerated here over all 2^9 coalitions,
efficiency on the sample model, the linear model's closed form, and seeded, replayable sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from hw5lib.cli import BUNDLED_CHECKPOINT
from hw5lib.inputs.images import load_inputs
from hw5lib.inputs.sample import SampleInfo
from hw5lib.methods.shap_values import (
    MIN_PAIRS,
    coalition_images,
    segment_means,
    shapley_values,
)
from hw5lib.model.loading import load_classifier

SIDE = 12


def assert_close(got: Tensor, want: Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """torch.allclose with the values in the message (torch.testing's assert_close imports
    torch.distributed, seconds of a test's time)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.allclose(got.to(want.dtype), want, rtol=rtol, atol=atol), (got, want)


def grid(side: int, cells: int) -> Tensor:
    """[side,side] ids of a cells x cells grid of squares."""
    row = torch.arange(side) * cells // side
    return row[:, None] * cells + row[None, :]


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * (SIDE // 2) ** 2, 3),
    ).eval()


def enumerated_shapley(model: nn.Module, x: Tensor, base: Tensor, seg: Tensor, k: int) -> Tensor:
    """Shapley values of the segments by the definition: every coalition, every weight."""
    m = int(seg.max()) + 1
    table = torch.tensor([[(c >> j) & 1 for j in range(m)] for c in range(2**m)], dtype=torch.bool)
    shown = table[:, seg][:, None]  # (2^m, 1, H, W) coalition c shows segment j if bit j is set
    with torch.no_grad():
        scores = model(torch.where(shown, x, base)).double()[:, k].tolist()
    phi = torch.zeros(m, dtype=torch.float64)
    for i in range(m):
        for c in range(2**m):
            if not c >> i & 1:
                s = bin(c).count("1")
                weight = math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m)
                phi[i] += weight * (scores[c | 1 << i] - scores[c])
    return phi


def test_agrees_with_enumerated_shapley_on_nine_patches() -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, SIDE, SIDE)
    seg = grid(SIDE, 3)[None]  # 9 patches
    base = segment_means(x, seg)
    model = small_net()
    exact = enumerated_shapley(model, x[0], base[0], seg[0], k=1)
    got = shapley_values(model, x, torch.tensor([1]), seg, base, permutations=[400])
    err = (got.values[0].double() - exact).abs().max()
    assert err <= 0.05 * exact.abs().max(), (got.values, exact)
    assert got.permutations == (400,)
    # a few permutations are far off (the sampling is real), many are close
    few = shapley_values(model, x, torch.tensor([1]), seg, base, permutations=[2])
    assert (few.values[0].double() - exact).abs().max() > err


class Quadratic(nn.Module):
    """logit 0 = a . m + m^T B m over the patch means m: pairwise interactions only."""

    def __init__(self, seg: Tensor) -> None:
        super().__init__()
        self.seg = seg
        g = torch.Generator().manual_seed(3)
        p = int(seg.max()) + 1
        self.a, self.b = torch.randn(p, generator=g), torch.randn(p, p, generator=g)

    def forward(self, x: Tensor) -> Tensor:
        onehot = nn.functional.one_hot(self.seg.flatten(), int(self.seg.max()) + 1).float()
        m = x.mean(1).flatten(1) @ onehot / onehot.sum(0)  # (B, P) each patch's mean
        return (m @ self.a + ((m @ self.b) * m).sum(1))[:, None]


def test_one_antithetic_pair_is_exact_without_higher_interactions() -> None:
    # A permutation and its reverse give each pairwise interaction half to each side: for a
    # game of order two one pair is the Shapley value, a check of the antithetic draw.
    torch.manual_seed(2)
    x = torch.rand(1, 3, SIDE, SIDE)
    seg = grid(SIDE, 3)[None]
    base = torch.zeros_like(x)
    model = Quadratic(seg[0])
    exact = enumerated_shapley(model, x[0], base[0], seg[0], k=0)
    got = shapley_values(model, x, torch.tensor([0]), seg, base, permutations=[2])
    assert_close(got.values[0].double(), exact, rtol=1e-4, atol=1e-5)


def test_linear_model_values_are_weight_times_difference() -> None:
    torch.manual_seed(4)
    x = torch.rand(2, 3, SIDE, SIDE)
    seg = torch.stack([grid(SIDE, 4), grid(SIDE, 2)])  # 16 and 4 segments
    base = torch.full_like(x, 0.3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 5)).eval()
    target = torch.tensor([2, 4])
    got = shapley_values(model, x, target, seg, base)
    w = model[1].weight.detach()[target].view(2, 3, SIDE, SIDE)
    pixel = (w * (x - base)).sum(1)  # (N, H, W)
    for i, s in enumerate((16, 4)):
        want = torch.zeros(s).index_add_(0, seg[i].flatten(), pixel[i].flatten())
        assert_close(got.values[i, :s], want, rtol=1e-4, atol=1e-5)
        assert (got.values[i, s:] == 0).all()
        assert_close(got.maps[i], want[seg[i]], rtol=1e-4, atol=1e-5)
    # a linear response has no sampling noise: the rule stops at its floor, the halves agree
    assert got.permutations == (2 * MIN_PAIRS, 2 * MIN_PAIRS)
    assert got.agreement == pytest.approx((1.0, 1.0), abs=1e-6)


def test_efficiency_on_the_sample_model(small_sample: SampleInfo) -> None:
    loaded = load_classifier(BUNDLED_CHECKPOINT)
    model, pre = loaded.model.eval(), loaded.preprocess
    paths = sorted(small_sample.root.glob("validation/*"))[:2]
    x = load_inputs(paths, pre)
    seg = torch.stack([grid(x.shape[-1], 3), grid(x.shape[-1], 2)])
    with torch.no_grad():
        target = model(x).argmax(1)
    base = segment_means(x, seg)
    got = shapley_values(model, x, target, seg, base, max_evaluations=100)
    with torch.no_grad():
        logits = model(torch.cat([x, base]))
    full, empty = (
        logits[:2].gather(1, target[:, None])[:, 0],
        logits[2:].gather(1, target[:, None])[:, 0],
    )
    assert_close(got.full, full, rtol=1e-4, atol=1e-4)
    assert_close(got.empty, empty, rtol=1e-4, atol=1e-4)
    gap = full - empty
    assert (gap.abs() > 1e-2).all()  # the check below means something
    assert_close(got.values.sum(1), gap, rtol=1e-4, atol=1e-4)
    assert all(p >= 2 * MIN_PAIRS for p in got.permutations)
    assert all(
        e <= 100 + 2 or p == 2 * MIN_PAIRS
        for e, p in zip(got.evaluations, got.permutations, strict=True)
    )


def test_seeded_and_replayable() -> None:
    torch.manual_seed(5)
    x = torch.rand(2, 3, SIDE, SIDE)
    seg = torch.stack([grid(SIDE, 4), grid(SIDE, 3)])
    base = segment_means(x, seg)
    model, target = small_net(), torch.tensor([0, 2])
    first = shapley_values(model, x, target, seg, base, seed=7)
    again = shapley_values(model, x, target, seg, base, seed=7)
    assert torch.equal(first.values, again.values) and first.trace == again.trace
    replay = shapley_values(
        model, x, target, seg, base, seed=7, permutations=list(first.permutations)
    )
    assert torch.equal(first.values, replay.values)
    other = shapley_values(
        model, x, target, seg, base, seed=8, permutations=list(first.permutations)
    )
    assert not torch.equal(first.values, other.values)
    assert all(t[-1][0] == p for t, p in zip(first.trace, first.permutations, strict=True))


def test_segment_means_and_coalitions() -> None:
    torch.manual_seed(6)
    x = torch.rand(2, 3, SIDE, SIDE)
    seg = torch.stack([grid(SIDE, 3), grid(SIDE, 2)])
    filled = segment_means(x, seg)
    for i in range(2):
        for s in range(int(seg[i].max()) + 1):
            inside = seg[i] == s
            want = x[i][:, inside].mean(1)
            assert_close(filled[i][:, inside], want[:, None].expand(-1, int(inside.sum())))
    on = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]])
    images = coalition_images(x[1], filled[1], seg[1], on)
    shown = on[0].bool()[seg[1]]
    assert torch.equal(images[0][:, shown], x[1][:, shown])
    assert torch.equal(images[0][:, ~shown], filled[1][:, ~shown])
    assert torch.equal(images[1], filled[1])


@pytest.mark.parametrize("adaptive", [True, False])
def test_evaluation_budget_caps_the_permutations(adaptive: bool) -> None:
    torch.manual_seed(7)
    x = torch.rand(1, 3, SIDE, SIDE)
    seg = grid(SIDE, 4)[None]  # 16 segments: 33 evaluations per pair
    model = small_net()
    got = shapley_values(
        model, x, torch.tensor([0]), seg, segment_means(x, seg), max_evaluations=33 * 6,
        adaptive=adaptive,
    )  # fmt: skip
    assert got.permutations[0] <= 12
    assert got.evaluations[0] == 33 * got.permutations[0] // 2 + 2
    if not adaptive:
        assert got.permutations == (12,)


def test_split_half_agreement_predicts_the_correlation_with_exact_values() -> None:
    # Two halves of the pairs stand for two seeds' runs: the agreement they predict is the
    # values' correlation with the enumerated ones (the trust table's stability column).
    torch.manual_seed(1)
    x = torch.rand(1, 3, SIDE, SIDE)
    seg = grid(SIDE, 3)[None]
    base = segment_means(x, seg)
    model = small_net()
    exact = enumerated_shapley(model, x[0], base[0], seg[0], k=1).numpy()
    for count in (8, 40):
        got = shapley_values(model, x, torch.tensor([1]), seg, base, permutations=[count])
        actual = np.corrcoef(got.values[0].double().numpy(), exact)[0, 1]
        assert 0 < got.agreement[0] <= 1 and abs(got.agreement[0] - actual) < 0.01
    one_pair = shapley_values(model, x, torch.tensor([1]), seg, base, permutations=[2])
    assert math.isnan(one_pair.agreement[0])  # no two halves to compare
