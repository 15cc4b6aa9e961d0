"""Tests for hw5lib.metrics and hw5lib.faithfulness: tiny models and synthetic tensors, CPU, seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor, nn

from hw5lib import tolerances
from hw5lib.methods import faithfulness, metrics, randomization
from hw5lib.model.hooks import hook_count
from model import Classifier


def _tiny_classifier(seed: int = 0) -> Classifier:
    """Tiny HW3 Classifier with generator-drawn weights and non-default BatchNorm state."""
    g = torch.Generator().manual_seed(seed)
    model = Classifier(widths=(4, 8, 8, 8, 8), hidden=(16, 16), input_size=32)
    model = randomization.randomized_copy(model, len(randomization.parameterized_layers(model)), g)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model.eval()


def _saliency(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """|d logit[target] / d x|, max over channels (Simonyan et al. 2014), inline for the test."""
    x = x.clone().requires_grad_(True)
    score = model(x).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad.abs().amax(dim=1)


class _PatchModel(nn.Module):
    """Two logits: [w . x, 0] with w > 0 only on the top-left 4x4 patch of an 8x8 image."""

    def __init__(self, channels: int = 3, side: int = 8, scale: float = 0.5) -> None:
        super().__init__()
        self.linear = nn.Linear(channels * side * side, 2)
        weight = torch.zeros(channels, side, side)
        weight[:, :4, :4] = scale
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.weight[0] = weight.flatten()
            self.linear.bias.zero_()
        self.patch = weight[0] > 0  # (H, W) the pixels the model relies on

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


# --- classifier quality ------------------------------------------------------------------------


def test_confusion_matrix_matches_hand_count() -> None:
    labels = [0, 0, 1, 1, 1, 2, 2, 0]
    preds = [0, 1, 1, 1, 2, 2, 0, 0]
    expected = np.array([[2, 1, 0], [0, 2, 1], [1, 0, 1]])
    cm = metrics.confusion_matrix(torch.tensor(labels), np.array(preds), 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)


def test_per_class_accuracy_is_nan_for_class_without_samples() -> None:
    cm = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    acc = metrics.per_class_accuracy(cm)
    assert acc[0] == pytest.approx(0.75)
    assert math.isnan(acc[1])
    assert acc[2] == pytest.approx(0.5)


def test_top_confusions_sorted_by_count_then_indices_and_skip_diagonal() -> None:
    cm = np.array([[9, 2, 5], [2, 9, 0], [1, 5, 9]])
    assert metrics.top_confusions(cm, k=4) == [(0, 2, 5), (2, 1, 5), (0, 1, 2), (1, 0, 2)]
    assert metrics.top_confusions(cm, k=10)[-1] == (2, 0, 1)  # zero cells are never listed
    assert len(metrics.top_confusions(cm, k=10)) == 5


def test_predict_uses_eval_mode_chunks_and_restores_training_flag() -> None:
    model = _tiny_classifier().train()
    x = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    probs, preds = metrics.predict(model, x, batch_size=3)
    assert model.training  # caller's mode restored
    model.eval()
    with torch.no_grad():
        expected = model(x).softmax(dim=1)
    torch.testing.assert_close(probs, expected)
    assert torch.equal(preds, expected.argmax(dim=1))
    assert probs.shape == (7, 11) and not probs.requires_grad


def test_select_examples_picks_most_confident_hit_and_mistake_per_class() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0])
    preds = torch.tensor([0, 0, 1, 1, 0, 0, 0])
    probs = torch.tensor(
        [
            [0.6, 0.3, 0.1],
            [0.9, 0.05, 0.05],  # best correct 0 (tie with index 6: lowest index wins)
            [0.2, 0.7, 0.1],  # the only mistake of class 0
            [0.1, 0.8, 0.1],  # the only correct 1
            [0.5, 0.4, 0.1],
            [0.7, 0.2, 0.1],  # most confident mistake of class 1
            [0.9, 0.05, 0.05],
        ]
    )
    ex = metrics.select_examples(labels, preds, probs)
    assert ex[0]["correct"] == {"index": 1, "cell": (0, 0), "prob": pytest.approx(0.9)}
    assert ex[0]["mistake"] == {"index": 2, "cell": (0, 1), "prob": pytest.approx(0.7)}
    assert ex[1]["correct"] == {"index": 3, "cell": (1, 1), "prob": pytest.approx(0.8)}
    assert ex[1]["mistake"] == {"index": 5, "cell": (1, 0), "prob": pytest.approx(0.7)}
    assert ex[2] == {"correct": None, "mistake": None}


# --- deletion / insertion ----------------------------------------------------------------------


def test_perfect_map_beats_random_map_on_deletion_and_insertion() -> None:
    model = _PatchModel()
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.5 * torch.rand(4, 3, 8, 8, generator=g)
    target = torch.zeros(4, dtype=torch.long)
    perfect = model.patch.float().expand(4, 8, 8)
    random = faithfulness.random_maps((4, 8, 8), g)
    good = faithfulness.deletion_insertion(model, x, target, perfect, steps=8, baseline="zero")
    rand = faithfulness.deletion_insertion(model, x, target, random, steps=8, baseline="zero")
    assert (good["deletion"] < rand["deletion"]).all()
    assert (good["insertion"] > rand["insertion"]).all()
    # The patch is the top quarter of the pixels: after 2 of 8 steps the evidence is all gone.
    torch.testing.assert_close(good["deletion_curve"][:, 2], torch.full((4,), 0.5))


def test_deletion_insertion_curves_start_and_end_at_intact_and_baseline_probs() -> None:
    model = _PatchModel(scale=0.05)  # unsaturated softmax: the blur must move the score
    noise = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    x = 0.2 * noise + 0.8 * model.patch.float()  # a bright patch whose edges the blur spreads
    target = torch.tensor([0, 1, 0])
    maps = faithfulness.random_maps((3, 8, 8), torch.Generator().manual_seed(3))
    out = faithfulness.deletion_insertion(model, x, target, maps, steps=4, baseline="blur")
    with torch.no_grad():
        intact = model(x).softmax(1).gather(1, target[:, None]).squeeze(1)
        blurred = (
            model(faithfulness.gaussian_blur(x)).softmax(1).gather(1, target[:, None]).squeeze(1)
        )
    assert out["deletion_curve"].shape == (3, 5) and out["deletion"].shape == (3,)
    torch.testing.assert_close(out["deletion_curve"][:, 0], intact)
    torch.testing.assert_close(out["deletion_curve"][:, -1], blurred)
    torch.testing.assert_close(out["insertion_curve"][:, 0], blurred)
    torch.testing.assert_close(out["insertion_curve"][:, -1], intact)
    assert (intact[[0, 2]] - blurred[[0, 2]]).min() > 0.005  # the blur really changes the score
    torch.testing.assert_close(
        out["deletion"], torch.trapezoid(out["deletion_curve"], dx=0.25, dim=1)
    )


def test_deletion_insertion_does_not_depend_on_batch_size() -> None:
    model = _tiny_classifier()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 3, 32, 32, generator=g)
    target = torch.tensor([0, 5, 10])
    maps = faithfulness.random_maps((3, 32, 32), g)
    small = faithfulness.deletion_insertion(model, x, target, maps, steps=4, batch_size=7)
    big = faithfulness.deletion_insertion(model, x, target, maps, steps=4, batch_size=1000)
    for key in small:
        torch.testing.assert_close(small[key], big[key])


class _Counting(nn.Module):
    """Counts the images its model scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += len(x)
        return self.model(x)


@pytest.mark.parametrize("batch_size", [7, 64, 1000])
def test_deletion_insertion_rows_equal_one_call_per_method(batch_size: int) -> None:
    model = _Counting(_tiny_classifier())
    g = torch.Generator().manual_seed(11)
    x = torch.rand(3, 3, 32, 32, generator=g)
    target = torch.tensor([0, 5, 10])
    maps = faithfulness.random_maps((4, 3, 32, 32), g)
    maps[1] = (maps[1] * 3).floor()  # ties, broken by pixel index in both
    maps[2] = -maps[0]
    kw = {"steps": 5, "baseline": "zero", "insertion_baseline": "blur", "batch_size": batch_size}
    shared = faithfulness.deletion_insertion_rows(model, x, target, maps, **kw)
    # the curves' 3 shared ends (image, zeroed, blurred) once per image, 2 * 4 inner steps per map
    assert model.images == 3 * 3 + 4 * 3 * 2 * 4
    for r in range(4):
        alone = faithfulness.deletion_insertion(model, x, target, maps[r], **kw)
        for key, value in alone.items():
            torch.testing.assert_close(shared[key][r], value, rtol=0, atol=1e-6)
    assert model.images == 9 + 96 + 4 * 3 * 2 * 6
    # the reversed map really makes other curves: the test compares different rows
    assert not torch.equal(shared["deletion_curve"][2], shared["deletion_curve"][0])


def test_pixel_ranks_break_ties_by_lower_index() -> None:
    maps = torch.tensor([[[1.0, 3.0], [1.0, 3.0]]])
    assert faithfulness.pixel_ranks(maps).tolist() == [[2, 0, 3, 1]]


def test_gaussian_blur_preserves_constant_image() -> None:
    x = torch.full((2, 3, 16, 16), 0.7)
    torch.testing.assert_close(faithfulness.gaussian_blur(x), x)


# --- randomization sanity check ----------------------------------------------------------------


def test_randomized_copy_changes_only_top_layers_and_leaves_original_untouched() -> None:
    model = _tiny_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = [name for name, _ in randomization.parameterized_layers(model)]
    assert layers[-4:] == ["cnn.17", "fc.0", "fc.2", "fc.4"]
    copy = randomization.randomized_copy(model, 4, torch.Generator().manual_seed(9))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    randomized = {"cnn.17", "fc.0", "fc.2", "fc.4"}
    for key, value in copy.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if key.endswith("num_batches_tracked"):
            continue
        changed = not torch.equal(value, before[key])
        assert changed == (owner in randomized), key
    bn = copy.cnn[17]
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.running_mean, torch.zeros(8))


def test_randomized_copy_is_reproducible_from_generator() -> None:
    model = _tiny_classifier()
    a = randomization.randomized_copy(model, 3, torch.Generator().manual_seed(5)).state_dict()
    b = randomization.randomized_copy(model, 3, torch.Generator().manual_seed(5)).state_dict()
    c = randomization.randomized_copy(model, 3, torch.Generator().manual_seed(6)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.4.weight"], c["fc.4.weight"])


def test_randomization_check_flags_model_blind_edge_map() -> None:
    model = _tiny_classifier()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    target = torch.tensor([0, 1, 2, 3])
    out = randomization.randomization_check(
        faithfulness.edge_explain, model, x, target, generator=torch.Generator().manual_seed(8)
    )
    torch.testing.assert_close(out["correlation"], torch.ones(4))
    assert out["flagged"]


def test_randomization_check_does_not_flag_input_gradient_saliency() -> None:
    model = _tiny_classifier()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    target = torch.tensor([0, 1, 2, 3])
    out = randomization.randomization_check(
        _saliency, model, x, target, generator=torch.Generator().manual_seed(8)
    )
    assert not out["flagged"]
    assert out["mean_abs"] < 0.5
    assert out["n_top"] == len(randomization.parameterized_layers(model))
    assert hook_count(model) == 0


def test_rank_correlation_equals_scipy_spearman_per_image_even_with_ties() -> None:
    g = torch.Generator().manual_seed(10)
    a = torch.rand(3, 5, 6, generator=g)
    b = a + 0.5 * torch.rand(3, 5, 6, generator=g)
    b[2] = torch.randint(0, 4, (5, 6), generator=g).float()  # many ties
    a[1] = torch.randint(0, 3, (5, 6), generator=g).float()
    got = randomization.rank_correlation(a, b)
    expected = [stats.spearmanr(a[i].flatten(), b[i].flatten()).statistic for i in range(3)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32))


# --- localization ------------------------------------------------------------------------------


def test_pointing_game_hits_inside_mask_and_tolerance_is_a_disc() -> None:
    maps = torch.zeros(3, 10, 10)
    maps[0, 2, 2] = 1.0  # inside
    maps[1, 2, 7] = 1.0  # two pixels right of the mask
    maps[2, 7, 7] = 1.0  # diagonal (2, 2) from the mask's corner: distance 2.83
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[:, 1:6, 1:6] = True
    assert metrics.pointing_game(maps, masks).tolist() == [True, False, False]
    assert metrics.pointing_game(maps, masks, tolerance=2).tolist() == [True, True, False]
    assert metrics.pointing_game(maps, masks, tolerance=3).tolist() == [True, True, True]


def test_mass_inside_counts_positive_attribution_and_is_zero_for_empty_map() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 3.0  # inside
    maps[0, 3, 3] = 1.0  # outside
    maps[0, 3, 2] = -5.0  # negative: ignored
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    out = metrics.mass_inside(maps, masks)
    torch.testing.assert_close(out, torch.tensor([0.75, 0.0]))
    torch.testing.assert_close(metrics.mask_fraction(masks), torch.tensor([0.25, 0.25]))


# --- stability ---------------------------------------------------------------------------------


def test_topk_overlap_and_rank_correlation_1d() -> None:
    a = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    b = np.array([5.0, 1.0, 3.0, 4.0, 2.0])
    assert tolerances.topk_overlap(a, b, 2) == 0.5
    assert tolerances.topk_overlap(a, a, 3) == 1.0
    assert tolerances.rank_correlation_1d(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert tolerances.rank_correlation_1d(a, -a) == pytest.approx(-1.0)
    assert math.isnan(tolerances.rank_correlation_1d(a, np.ones(5)))


# --- negative control --------------------------------------------------------------------------


def test_edge_map_is_zero_on_flat_image_and_peaks_on_step_edge() -> None:
    x = torch.zeros(2, 3, 8, 8)
    x[1, :, :, 4:] = 1.0  # vertical step between columns 3 and 4
    edges = faithfulness.edge_map(x)
    assert edges.shape == (2, 8, 8)
    assert torch.equal(edges[0], torch.zeros(8, 8))
    assert (edges[1, :, 3:5] == 4.0).all()
    assert (edges[1, :, :3] == 0).all() and (edges[1, :, 5:] == 0).all()
