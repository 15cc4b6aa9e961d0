"""SpRAy per-class strategies on synthetic maps: a centred blob at random offsets (the object) and
a blob in the top-left corner (a planted mark), seeded, so the right answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hw5lib.audit.regions import locate, normalise, region_masks
from hw5lib.audit.spray import (
    MIN_CLASS_SIZE,
    ClassStrategies,
    choose_k,
    class_outliers,
    class_strategies,
    pool,
    spectrum,
)

S = 32
YY, XX = np.mgrid[:S, :S]


def blob(cy: float, cx: float, sigma: float) -> np.ndarray:
    return np.exp(-((YY - cy) ** 2 + (XX - cx) ** 2) / (2 * sigma**2))


def centre_maps(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n,S,S] a blob near the centre, shifted up to 3 px, plus faint noise."""
    off = rng.uniform(-3, 3, (n, 2))
    maps = [blob(15.5 + dy, 15.5 + dx, 3.0) + 0.05 * rng.random((S, S)) for dy, dx in off]
    return np.stack(maps).astype(np.float32)


def corner_maps(rng: np.random.Generator, n: int, at: tuple[float, float] = (3, 3)) -> np.ndarray:
    """[n,S,S] most mass on a blob at ``at`` (top-left corner by default), some on the object."""
    off = rng.uniform(-1, 1, (n, 2))
    maps = [
        4 * blob(at[0] + dy, at[1] + dx, 2.0)
        + 0.5 * blob(15.5, 15.5, 3.0)
        + 0.05 * rng.random((S, S))
        for dy, dx in off
    ]
    return np.stack(maps).astype(np.float32)


def planted(seed: int = 0, corner_correct: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """40 centre maps (60% correct) then 20 corner maps (``corner_correct`` of them correct)."""
    rng = np.random.default_rng(seed)
    maps = np.concatenate([centre_maps(rng, 40), corner_maps(rng, 20)])
    correct = np.concatenate([np.arange(40) < 24, np.arange(20) < round(20 * corner_correct)])
    return maps, correct


def centre_mask(n: int) -> np.ndarray:
    masks = np.zeros((n, S, S), bool)
    masks[:, 8:24, 8:24] = True
    return masks


def no_nan_json(result: ClassStrategies) -> str:
    return json.dumps(result.to_json(), allow_nan=False)  # raises on NaN or inf


def test_corner_cluster_is_flagged_with_the_numbers_and_centre_cluster_is_not() -> None:
    maps, correct = planted()
    result = class_strategies(maps, correct, None, seed=0)
    assert result.eigengap is not None and result.eigengap.k == 2
    centre, corner = result.clusters
    assert corner.members == tuple(range(40, 60)) and centre.members == tuple(range(40))
    assert corner.flagged and not centre.flagged and centre.reason is None
    assert corner.reason is not None and "corner" in corner.reason
    assert "uniform 6%" in corner.reason and "100% vs 60%" in corner.reason
    assert corner.location.share.corners > 0.5 > centre.location.share.corners
    assert (corner.accuracy, centre.accuracy, result.accuracy) == (1.0, 0.6, 44 / 60)
    assert result.flagged == (corner,)


def test_less_accurate_shortcut_cluster_is_flagged_too() -> None:
    maps, correct = planted(corner_correct=0.1)
    corner = class_strategies(maps, correct, None, seed=0).clusters[1]
    assert corner.flagged and corner.reason is not None and "10% vs 60%" in corner.reason


def test_equal_accuracy_is_no_shortcut_even_in_the_corner() -> None:
    maps, _ = planted()
    result = class_strategies(maps, np.ones(60, bool), None, seed=0)
    assert result.eigengap is not None and result.eigengap.k == 2
    assert [c.flagged for c in result.clusters] == [False, False]


def test_one_strategy_gives_one_cluster_and_no_flag() -> None:
    rng = np.random.default_rng(1)
    result = class_strategies(centre_maps(rng, 60), rng.random(60) < 0.6, None, seed=0)
    assert result.eigengap is not None and result.eigengap.k == 1
    (only,) = result.clusters
    assert only.members == tuple(range(60)) and not only.flagged and only.reason is None


def test_masks_flag_the_cluster_whose_attribution_is_outside_the_object() -> None:
    maps, correct = planted()
    result = class_strategies(maps, correct, centre_mask(60), seed=0)
    centre, corner = result.clusters
    assert corner.location.share.inside_object is not None
    assert corner.location.share.inside_object < 0.3 < 0.6 < centre.location.share.inside_object
    assert corner.location.uniform.inside_object == pytest.approx(0.25)
    assert corner.flagged and corner.reason is not None and "inside the object" in corner.reason
    assert not centre.flagged


def test_masks_decide_where_the_object_is() -> None:
    # The "corner" blob is the object here: the mask covers it, so it is no shortcut.
    maps, correct = planted()
    masks = np.zeros((60, S, S), bool)
    masks[:40, 8:24, 8:24] = True
    masks[40:, :10, :10] = True
    assert class_strategies(maps, correct, masks, seed=0).flagged == ()


def test_border_strategy_is_named_on_the_border() -> None:
    rng = np.random.default_rng(2)
    maps = np.concatenate([centre_maps(rng, 40), corner_maps(rng, 20, at=(2, 15.5))])
    correct = np.concatenate([np.arange(40) < 24, np.ones(20, bool)])
    corner = class_strategies(maps, correct, None, seed=0).clusters[1]
    assert corner.flagged and corner.reason is not None and "on the border" in corner.reason


def test_same_inputs_same_result() -> None:
    maps, correct = planted(seed=3)
    a, b = (class_strategies(maps, correct, centre_mask(60), seed=5) for _ in range(2))
    assert no_nan_json(a) == no_nan_json(b)
    assert np.array_equal(a.embedding, b.embedding) and np.array_equal(a.mean_map, b.mean_map)


def test_clusters_are_numbered_by_size_then_first_member() -> None:
    rng = np.random.default_rng(4)
    maps = np.concatenate([corner_maps(rng, 20), centre_maps(rng, 40)])
    correct = np.concatenate([np.ones(20, bool), np.arange(40) < 24])
    result = class_strategies(maps, correct, None, seed=0)
    assert [c.index for c in result.clusters] == [0, 1]
    assert result.clusters[0].members == tuple(range(20, 60))
    for cluster in result.clusters:
        assert len(cluster.typical) == 4 and set(cluster.typical) <= set(cluster.members)
    assert result.embedding.shape == (60, 2)


def test_location_shares_sum_to_one_and_a_uniform_map_gives_the_baseline() -> None:
    rng = np.random.default_rng(5)
    for side in (8, 10, 32):
        centre, border, corners = region_masks(side)
        assert np.array_equal(centre.astype(int) + border + corners, np.ones((side, side), int))
        loc = locate(normalise(rng.random((6, side, side))), None)
        assert loc.share.centre + loc.share.border + loc.share.corners == pytest.approx(1.0)
        flat = locate(normalise(np.ones((1, side, side))), rng.random((1, side, side)) < 0.3)
        for name in ("centre", "border", "corners", "inside_object"):
            assert getattr(flat.share, name) == pytest.approx(getattr(flat.uniform, name))
    base = locate(normalise(np.ones((1, S, S))), None).uniform
    assert (base.centre, base.border, base.corners) == (0.25, 0.5, 0.25)
    assert base.inside_object is None


def test_small_and_empty_classes_get_one_cluster_or_none_without_analysis() -> None:
    maps, correct = planted()
    small = class_strategies(maps[38:42], correct[38:42], None, seed=0)
    assert small.size == 4 < MIN_CLASS_SIZE and small.eigengap is None
    assert [c.members for c in small.clusters] == [(0, 1, 2, 3)] and small.flagged == ()
    assert small.embedding.shape == (4, 2)
    empty = class_strategies(np.zeros((0, S, S)), np.zeros(0, bool), None, seed=0)
    assert empty.clusters == () and empty.accuracy is None and empty.size == 0
    assert no_nan_json(small) and no_nan_json(empty)


def test_all_zero_and_non_finite_maps_count_as_uniform() -> None:
    maps, correct = planted()
    maps[:5] = 0.0
    maps[5, 0, 0] = np.nan
    assert np.array_equal(normalise(maps[:1])[0], np.full((S, S), 1 / S**2))
    result = class_strategies(maps, correct, None, seed=0)
    assert sum(c.size for c in result.clusters) == 60
    assert result.location.share.centre == pytest.approx(locate(normalise(maps), None).share.centre)
    no_nan_json(result)
    blank = class_strategies(np.zeros((20, S, S)), correct[:20], None, seed=0)
    assert [c.size for c in blank.clusters] == [
        20
    ] and blank.location.share == blank.location.uniform


def test_mismatched_shapes_are_refused_with_the_shapes() -> None:
    maps, correct = planted()
    with pytest.raises(ValueError, match=r"\(59,\)"):
        class_strategies(maps, correct[:59], None, seed=0)
    with pytest.raises(ValueError, match="masks"):
        class_strategies(maps, correct, centre_mask(59), seed=0)


def test_json_numbers_are_rounded_to_four_decimals() -> None:
    maps, correct = planted()
    data = class_strategies(maps, correct, centre_mask(60), seed=0).to_json()
    floats = [data["accuracy"], *data["eigengap"]["eigenvalues"], *np.ravel(data["embedding"])]
    floats += list(data["clusters"][1]["location"]["share"].values())
    assert all(round(v, 4) == v for v in floats)
    assert np.shape(data["clusters"][0]["mean_map"]) == (S, S)


def test_eigengap_counts_only_jumps_of_the_spectrum() -> None:
    assert choose_k(np.array([0, 0.04, 0.07, 0.16, 0.32, 0.34]), 5) == 1  # steady growth
    assert choose_k(np.array([0, 0, 0.075, 0.19, 0.33, 0.33]), 5) == 2
    assert choose_k(np.array([0, 0, 0, 0.3, 0.35, 0.4]), 5) == 3
    assert choose_k(np.array([0, 0.01, 0.2, 0.21, 0.9]), 4) == 4  # the larger of two jumps
    assert choose_k(np.array([0, 0.01, 0.2, 0.21, 0.9]), 3) == 2  # at most max_clusters


def test_sparse_eigensolver_agrees_with_the_dense_one() -> None:
    maps, _ = planted()
    flat = pool(normalise(maps), 8).reshape(60, -1)
    dense, sparse = spectrum(flat, 6, 8), spectrum(flat, 6, 8, dense_limit=10)
    assert np.allclose(dense[0], sparse[0], atol=1e-8)
    assert np.allclose(np.abs(dense[1][:, 2:]), np.abs(sparse[1][:, 2:]), atol=1e-6)


def test_pool_keeps_each_map_sum_for_any_side() -> None:
    rng = np.random.default_rng(6)
    for side in (8, 12, 32):
        maps = rng.random((3, side, side))
        pooled = pool(maps, 8)
        assert pooled.shape == (3, 8, 8)
        assert np.allclose(pooled.sum(axis=(1, 2)), maps.sum(axis=(1, 2)))


def test_class_outliers_flag_only_the_class_whose_every_image_uses_the_corner() -> None:
    rng = np.random.default_rng(7)
    clean = [class_strategies(centre_maps(rng, 30), np.ones(30, bool), None, 0) for _ in range(3)]
    marked = class_strategies(corner_maps(rng, 30), np.ones(30, bool), None, 0)
    assert marked.flagged == ()  # one strategy: the clustering has nothing to contrast
    outliers = class_outliers([*clean, marked])
    assert [o.flagged for o in outliers] == [False, False, False, True]
    assert outliers[3].reason is not None and "corner" in outliers[3].reason
    assert [o.flagged for o in class_outliers(clean)] == [False] * 3
