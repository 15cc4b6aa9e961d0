"""LIME adapter: the requested label is explained, every superpixel can be hidden, runs are seeded,
and classifier_fn turns lime's HWC display batches into the model's probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lime import lime_image
from skimage.segmentation import slic
from torch import Tensor, nn

from hw5lib import tolerances
from hw5lib.methods.lime_adapter import (
    SLIC_ARGS,
    AntitheticLimeExplainer,
    classifier_fn,
    explain,
    lime_weights,
    resampled_agreement,
    segment,
)
from hw5lib.methods.lime_stopping import (
    MATCHED_SAMPLES,
    MIN_SAMPLES,
    TOP_SEPARATION,
    foldover_masks,
    paley_hadamard,
    paley_prime,
)
from hw5lib.model.preprocess import Preprocess
from model import Classifier

SIDE, BLOCK, SAMPLES = 48, 8, 60


def blocks_image(seed: int = 0) -> np.ndarray:
    """[48,48,3] in [0,1]: 8x8 blocks of random colour, overlaid with 1-pixel stripes.

    SLIC's sigma=1 smoothing erases the stripes, so superpixels follow the blocks while the
    pixels inside each superpixel still vary (lime hides a superpixel with its mean colour).
    """
    rng = np.random.default_rng(seed)
    n = SIDE // BLOCK
    img = np.kron(rng.uniform(0.25, 0.75, (n, n, 3)), np.ones((BLOCK, BLOCK, 1)))
    stripes = np.where(np.arange(SIDE) % 2 == 0, 0.2, -0.2)[:, None, None]
    return np.clip(img + stripes, 0, 1)


class Halves(nn.Module):
    """Class 0 scores the left half's detail, class 1 the right half's; classes 2..10 score a
    constant above both (for ``image``), so 0 and 1 rank last, outside lime's default top 5.

    Hiding a superpixel replaces it with its mean colour, which lowers the mean square of the
    pixels (Jensen): a left superpixel matters to class 0 only, a right one to class 1 only.
    """

    def __init__(self, image: np.ndarray, gain: float = 10.0) -> None:
        super().__init__()
        self.gain = gain
        pixels = torch.from_numpy(image).float().permute(2, 0, 1)[None]
        self.top = float(self.halves(pixels).max()) + 1.0

    def halves(self, x: Tensor) -> Tensor:
        w = x.shape[-1] // 2
        left = (x[..., :w] ** 2).mean(dim=(1, 2, 3))
        right = (x[..., w:] ** 2).mean(dim=(1, 2, 3))
        return self.gain * torch.stack([left, right], dim=1)  # [B,2]

    def forward(self, x: Tensor) -> Tensor:
        top = torch.full((len(x), 9), self.top) + 0.1 * torch.arange(9)
        return torch.cat([self.halves(x), top], dim=1)  # [B,11]


def identity(p: Tensor) -> Tensor:
    return p


def tiny_classifier(in_channels: int = 3, seed: int = 0) -> Classifier:
    with torch.random.fork_rng():  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        model = Classifier(
            widths=(4, 8, 8, 8, 8), hidden=(16, 16), in_channels=in_channels, input_size=32
        )
    return model.eval()


def halves_of(segments: np.ndarray) -> tuple[list[int], list[int]]:
    """Superpixel ids lying wholly in the left half and wholly in the right half."""
    w = segments.shape[1] // 2
    ids = np.unique(segments)
    left = [s for s in ids if not (segments[:, w:] == s).any()]
    right = [s for s in ids if not (segments[:, :w] == s).any()]
    return left, right


def ranked_above(high: np.ndarray, low: np.ndarray) -> float:
    """Fraction of (h, l) pairs with h > l (the AUC of telling the two groups apart)."""
    return float((high[:, None] > low[None, :]).mean())


def test_explain_explains_the_requested_label_even_when_it_is_not_the_top_class():
    img = blocks_image()
    model = Halves(img)
    probs = classifier_fn(model, identity, 3)(img[None])[0]
    assert set(np.argsort(probs)[:2]) == {0, 1}  # labels 0 and 1 rank last

    r0 = explain(model, img, 0, to_input=identity, samples=SAMPLES, seed=0)
    r1 = explain(model, img, 1, to_input=identity, samples=SAMPLES, seed=0)
    assert (r0.label, r1.label) == (0, 1)
    left, right = halves_of(r0.segments)
    assert len(left) >= 5 and len(right) >= 5
    # label 0 is driven by the left half, label 1 by the right half
    assert r0.weights[left].mean() > 3 * abs(r0.weights[right].mean())
    assert r1.weights[right].mean() > 3 * abs(r1.weights[left].mean())
    # and superpixel by superpixel: nearly every left one outranks nearly every right one
    assert ranked_above(r0.weights[left], r0.weights[right]) > 0.85
    assert ranked_above(r1.weights[right], r1.weights[left]) > 0.85


def test_explain_returns_one_weight_for_every_superpixel_id_from_zero():
    img = blocks_image()
    r = explain(Halves(img), img, 0, to_input=identity, samples=SAMPLES, seed=0)
    s = len(r.weights)
    assert r.segments.shape == img.shape[:2]
    np.testing.assert_array_equal(np.unique(r.segments), np.arange(s))
    np.testing.assert_array_equal(r.segments, segment(img))
    assert np.count_nonzero(r.weights) == s  # lime fitted a weight to every superpixel
    assert np.isfinite(r.score)


def test_segment_numbers_superpixels_from_zero():
    seg = segment(blocks_image(3))
    assert seg.min() == 0
    np.testing.assert_array_equal(np.unique(seg), np.arange(seg.max() + 1))


class Recorder(Halves):
    """Halves that remembers every [B,3,H,W] batch lime asks about."""

    def __init__(self, image: np.ndarray) -> None:
        super().__init__(image)
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.clone())
        return super().forward(x)


def hidden_ids(segments: np.ndarray, image: np.ndarray, batches: np.ndarray) -> set[int]:
    """Superpixels whose pixels differ from the image in at least one perturbed sample."""
    changed = (np.abs(batches - image[None]) > 1e-9).any(axis=(0, 3))  # [H,W]
    return {int(s) for s in np.unique(segments[changed])}


def test_every_superpixel_is_hidden_in_some_sample():
    img = blocks_image()
    model = Recorder(img)
    r = explain(model, img, 0, to_input=identity, samples=SAMPLES, seed=0)
    batches = torch.cat(model.seen).permute(0, 2, 3, 1).numpy()
    assert len(batches) == SAMPLES
    ids = np.unique(r.segments)
    assert hidden_ids(r.segments, img, batches) == set(ids.tolist())


def test_lime_never_hides_the_last_superpixel_when_ids_start_at_one():
    # The bug segment() avoids: skimage's default start_label=1 leaves id S unmasked, because
    # lime masks `segments == z` for feature indices z = 0..S-1.
    img, seen = blocks_image(), []

    def predict(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return np.tile([0.5, 0.5], (len(batch), 1))

    one_based = {**SLIC_ARGS, "start_label": 1}
    seg = slic(img, **one_based)
    explainer = lime_image.LimeImageExplainer(random_state=0)
    explainer.explain_instance(
        img,
        predict,
        labels=(0,),
        top_labels=None,
        num_samples=SAMPLES,
        batch_size=SAMPLES,
        segmentation_fn=lambda im: slic(im, **one_based),
        hide_color=None,
    )
    hidden = hidden_ids(seg, img, np.concatenate(seen))
    assert seg.min() == 1
    assert int(seg.max()) not in hidden
    assert hidden == set(range(1, int(seg.max())))


def test_explain_is_reproducible_for_a_seed_and_changes_with_it():
    img = blocks_image()
    a = explain(Halves(img), img, 0, to_input=identity, samples=SAMPLES, seed=1)
    b = explain(Halves(img), img, 0, to_input=identity, samples=SAMPLES, seed=1)
    c = explain(Halves(img), img, 0, to_input=identity, samples=SAMPLES, seed=2)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.score == b.score
    assert not np.allclose(a.weights, c.weights)


def test_classifier_fn_returns_the_models_probabilities_for_hwc_batches():
    model = tiny_classifier()
    pre = Preprocess(size=(32, 48), channel_order="bgr", mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    batch = np.random.default_rng(0).uniform(0, 1, (4, 32, 48, 3))  # non-square: no H/W mixup
    probs = classifier_fn(model, pre.normalize, 3)(batch)
    assert probs.shape == (4, 11)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    pixels = torch.from_numpy(batch).float().permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = torch.softmax(model(pre.normalize(pixels)), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_classifier_fn_averages_rgb_into_gray_for_one_channel_models():
    model = tiny_classifier(in_channels=1).train()
    pre = Preprocess(size=(32, 32), channels=1, mean=(0.5,), std=(0.25,))
    batch = np.random.default_rng(1).uniform(0, 1, (3, 32, 32, 3))
    probs = classifier_fn(model, pre.normalize, 1)(batch)
    assert probs.shape == (3, 11)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert model.training  # the caller's mode is restored
    gray = torch.from_numpy(batch).float().mean(dim=3)[:, None]  # [B,1,H,W]
    with torch.no_grad():
        expected = torch.softmax(model.eval()(pre.normalize(gray)), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def lime_loop_images(image: np.ndarray, fudged: np.ndarray, segments: np.ndarray, rows: np.ndarray):
    """The perturbed images as lime 0.2.0.1's own loop builds them (its data_labels)."""
    out = []
    for row in rows:
        temp = image.copy()
        mask = np.zeros(segments.shape, bool)
        for z in np.where(row == 0)[0]:
            mask[segments == z] = True
        temp[mask] = fudged[mask]
        out.append(temp)
    return np.stack(out)


def test_perturbed_images_are_the_ones_lime_builds():
    image = blocks_image().astype(np.float32)
    segments = segment(image)
    fudged = np.random.default_rng(2).uniform(0, 1, image.shape).astype(np.float32)
    seen = []

    def fn(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return np.zeros((len(batch), 2))

    explainer = AntitheticLimeExplainer(random_state=3, adaptive=False)
    data, labels = explainer.data_labels(image, fudged, segments, fn, 50, batch_size=16)
    assert data.shape == (50, segments.max() + 1) and labels.shape == (50, 2)
    np.testing.assert_array_equal(
        np.concatenate(seen), lime_loop_images(image, fudged, segments, data)
    )
    assert (data[0] == 1).all()  # the first sample is the image itself, as in lime


@pytest.mark.parametrize("p", [3, 7, 11, 19, 43, 127])
def test_paley_hadamard_columns_are_orthogonal_and_balanced(p: int):
    h = paley_hadamard(p)
    assert set(np.unique(h)) == {-1, 1} and (h[:, 0] == 1).all()
    np.testing.assert_array_equal(h.T @ h, (p + 1) * np.eye(p + 1))


def test_paley_prime_is_the_smallest_prime_3_mod_4_from_the_feature_count():
    assert [paley_prime(f) for f in (1, 7, 8, 36, 80, 100, 128)] == [3, 7, 11, 43, 83, 103, 131]


@pytest.mark.parametrize("features", [10, 36, 100, 127])
def test_foldover_blocks_are_balanced_orthogonal_and_in_complementary_pairs(features: int):
    block = 2 * (paley_prime(features) + 1)  # 2N rows: N Hadamard rows and their complements
    rows = foldover_masks(np.random.RandomState(features), 3 * block + 7, features)
    assert rows.shape == (3 * block + 7, features) and set(np.unique(rows)) == {0, 1}
    assert (rows[0] == 1).all() and (rows[1] == 0).all()  # the image itself, then all hidden
    assert ((rows[0::2][: len(rows) // 2] + rows[1::2]) == 1).all()
    for b in range(3):
        signed = 2 * rows[b * block : (b + 1) * block] - 1
        np.testing.assert_array_equal(signed.sum(axis=0), 0)  # each superpixel on half the time
        np.testing.assert_array_equal(signed.T @ signed, block * np.eye(features))
        assert len(np.unique(signed, axis=0)) == block  # no row drawn twice within a block
    assert not np.array_equal(rows[:block], rows[block : 2 * block])  # each block re-randomized


def test_a_shorter_foldover_stream_is_a_prefix_of_a_longer_one():
    # a replay draws exactly the recorded count: its masks must be the run's first ones
    long = foldover_masks(np.random.RandomState(5), 1000, 90)
    np.testing.assert_array_equal(foldover_masks(np.random.RandomState(5), 300, 90), long[:300])
    assert not np.array_equal(foldover_masks(np.random.RandomState(6), 300, 90), long[:300])


def stock_masks(seed: int, n: int, features: int) -> np.ndarray:
    """Stock lime's draw (``LimeImageExplainer.data_labels``): independent uniform rows, row 0
    the image itself."""
    masks = np.random.RandomState(seed).randint(0, 2, n * features).reshape(n, features)
    masks[0] = 1
    return masks


def test_a_foldover_fit_of_a_linear_response_is_stock_limes():
    # A model whose response is linear in the superpixels: lime's weights are the response's
    # own up to the ridge's slight shrinkage, whichever design drew the masks.
    base = AntitheticLimeExplainer(random_state=0).base
    w = np.random.default_rng(0).normal(size=80)
    fits = [
        lime_weights(base, masks, (masks @ w)[:, None], 0)
        for masks in (
            foldover_masks(np.random.RandomState(1), MIN_SAMPLES, 80),
            stock_masks(2, 1000, 80),
        )
    ]
    np.testing.assert_allclose(fits[0], fits[1], atol=0.05 * np.abs(w).max())
    assert tolerances.rank_correlation_1d(fits[0], fits[1]) > 0.99
    assert tolerances.topk_overlap(fits[0], fits[1], 5) == 1.0


def test_a_foldover_fit_is_closer_to_stock_lime_than_random_pairs_at_the_floor():
    # A noisy response (a sigmoid of a linear score plus three-way interactions): at the same
    # count the balanced, orthogonal design ranks the superpixels closer to a 1000-sample stock
    # fit than random complementary pairs do.
    base = AntitheticLimeExplainer(random_state=0).base
    features, foldover, random_pairs = 80, [], []
    for problem in range(8):
        rng = np.random.default_rng(problem)
        w, triples = rng.normal(size=features), rng.integers(0, features, (60, 3))

        def fit(masks: np.ndarray, w: np.ndarray = w, triples: np.ndarray = triples) -> np.ndarray:
            score = masks @ w + 1.5 * masks[:, triples].prod(axis=2).sum(axis=1) - w.sum() / 2
            return lime_weights(base, masks, 1 / (1 + np.exp(-score / 4.5))[:, None], 0)

        ref = fit(stock_masks(100 + problem, 1000, features))
        half = stock_masks(problem, MIN_SAMPLES // 2, features)
        pairs = np.stack([half, 1 - half], axis=1).reshape(-1, features)
        ours = foldover_masks(np.random.RandomState(problem), MIN_SAMPLES, features)
        foldover.append(tolerances.rank_correlation_1d(fit(ours), ref))
        random_pairs.append(tolerances.rank_correlation_1d(fit(pairs), ref))
    assert np.mean(foldover) > np.mean(random_pairs) + 0.03


def sampled(response) -> AntitheticLimeExplainer:
    """The adaptive explainer after sampling, when lime's label is ``response(on/off rows)``:
    its ``trace`` holds (samples so far, samples needed, top-5 separation) per round."""
    image = blocks_image().astype(np.float32)
    segments = segment(image)
    fudged = np.full_like(image, 0.5)
    means = np.array([image[segments == z].mean() for z in range(segments.max() + 1)])

    def fn(batch: np.ndarray) -> np.ndarray:
        # Recover each sample's on/off row from its pixels, then score it.
        on = np.array(
            [[np.allclose(b[segments == z].mean(), m) for z, m in enumerate(means)] for b in batch]
        ).astype(float)
        return np.stack([response(on), np.zeros(len(batch))], axis=1)

    explainer = AntitheticLimeExplainer(random_state=0)
    explainer.label = 0
    data, _ = explainer.data_labels(image, fudged, segments, fn, 1000, batch_size=100)
    assert len(data) == explainer.trace[-1][0]
    return explainer


def drawn(explainer: AntitheticLimeExplainer) -> int:
    return explainer.trace[-1][0]


def test_a_linear_response_stops_at_the_floor():
    weights = np.random.default_rng(0).normal(size=200)
    assert drawn(sampled(lambda on: on @ weights[: on.shape[1]])) == MIN_SAMPLES


def test_pairwise_interactions_cancel_in_pairs_and_a_clear_top_five_stops_at_the_floor():
    # A product of two superpixels is even under the complement: each pair cancels most of it.
    weights = np.random.default_rng(0).normal(size=200)
    weights[2:7] += 10  # five superpixels far above the rest
    explainer = sampled(lambda on: on @ weights[: on.shape[1]] + 5 * on[:, 0] * on[:, 1])
    assert drawn(explainer) == MIN_SAMPLES
    assert explainer.trace[0][1] < 0.2 * MATCHED_SAMPLES
    assert explainer.trace[0][2] >= TOP_SEPARATION


def test_a_tie_at_the_fifth_place_samples_to_the_cap_though_precise_enough_overall():
    weights = np.random.default_rng(0).normal(size=200)
    weights[2:12] = 10  # ten tied superpixels: which five lead is never settled
    explainer = sampled(lambda on: on @ weights[: on.shape[1]] + 5 * on[:, 0] * on[:, 1])
    assert drawn(explainer) == 1000
    assert all(needed < samples for samples, needed, _ in explainer.trace)
    assert all(separation < TOP_SEPARATION for *_, separation in explainer.trace)


def test_an_odd_interaction_response_samples_to_the_cap():
    # (on count - half)^3 is odd under the complement: pairing doubles its noise, so
    # paired sampling can never match independent samples and runs to the cap.
    assert drawn(sampled(lambda on: (on.sum(1) - on.shape[1] / 2) ** 3)) == 1000


# --- predicted agreement with a rerun (bootstrap of the run's own samples) ---------------------


def toy_lime_samples(problem: int, seed: int, n: int = 600, features: int = 40):
    """(masks, outputs) as the explainer draws them, for a toy model of ``problem``: a sigmoid
    of a linear score plus odd three-way interactions, so the fit has real sampling noise."""
    rng = np.random.default_rng(problem)
    w = rng.normal(size=features)
    triples = rng.integers(0, features, size=(30, 3))
    masks = foldover_masks(np.random.RandomState(seed), n, features)
    score = masks @ w + 1.5 * masks[:, triples].prod(axis=2).sum(axis=1) - w.sum() / 2
    return masks, 1 / (1 + np.exp(-score / 3))[:, None]


def test_resampled_agreement_predicts_the_overlap_of_real_reruns():
    base = AntitheticLimeExplainer(random_state=0).base
    predicted, rerun = [], []
    for problem in range(30):
        first = toy_lime_samples(problem, seed=1)
        second = toy_lime_samples(problem, seed=2)  # an independent draw: what a rerun sees
        rerun.append(
            tolerances.topk_overlap(
                lime_weights(base, *first, 0), lime_weights(base, *second, 0), 5
            )
        )
        predicted.append(resampled_agreement(base, *first, 0, rounds=10, seed=problem))
    assert 0.3 < np.mean(rerun) < 0.95  # the toy is noisy enough for the check to mean something
    assert abs(np.mean(predicted) - np.mean(rerun)) < 0.08


def test_resampled_agreement_is_one_for_a_response_with_no_noise():
    base = AntitheticLimeExplainer(random_state=0).base
    masks = foldover_masks(np.random.RandomState(0), 600, 40)
    outputs = (masks @ np.linspace(-1, 1, 40))[:, None]
    assert resampled_agreement(base, masks, outputs, 0, rounds=5) == 1.0


def test_explain_reports_stability_only_when_asked():
    image = blocks_image()
    model = Halves(image)
    plain = explain(model, image, 0, to_input=identity, samples=SAMPLES)
    asked = explain(model, image, 0, to_input=identity, samples=SAMPLES, stability_rounds=3)
    assert plain.stability is None
    assert asked.stability is not None and 0.0 <= asked.stability <= 1.0
    np.testing.assert_array_equal(plain.weights, asked.weights)  # no extra samples drawn
