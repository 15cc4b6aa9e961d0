"""The Q4 SHAP stage in a report run: its figure and manifest record, the caption's numbers
against its NPZ, a replay that makes the same bytes, and its row in the trust table."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from hw5lib.arguments import parse_args, report_config
from hw5lib.config import RunConfig
from hw5lib.inputs.sample import SampleInfo
from hw5lib.methods import shap_values
from hw5lib.run.manifest import parameters
from hw5lib.run.pipeline import run_report
from hw5lib.stages.q4_shap import FID
from hw5lib.stages.shap_result import FLOOR_ONLY, METHOD, permutation_cap, rule_text
from tests.test_registry import FAST

# Just above one pair's evaluations on the tiny model's images: every image draws the rule's
# floor, the cheapest run that exercises it.
CAP = 50


def test_shap_figure_caption_replay_and_trust_row(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = RunConfig(
        data=small_sample.root, out=tmp_path / "a", checkpoint=tiny_checkpoint, device="cpu",
        shap=True, shap_evaluations=CAP, **FAST,
    )  # fmt: skip
    man, _ = run_report(cfg, progress=False)
    assert man["failures"] == []
    figure = next(f for f in man["figures"] if f["id"] == FID)
    assert figure["section"] == "Q4" and figure["png"] == f"{FID}.png"
    assert {f"{FID}.png", f"{FID}.npz"} <= set(man["outputs"])
    assert man["parameters"]["shap_evaluations"] == CAP

    with np.load(cfg.out / f"{FID}.npz") as z:
        arrays = dict(z)
    n = len(man["dataset"]["images"])
    segments, values, full, empty = (arrays[k] for k in ("segments", "values", "full", "empty"))
    assert segments.shape[0] == values.shape[0] == n and arrays["map"].shape == segments.shape
    # each pixel shows its superpixel's value; the superpixels are LIME's
    rows = np.arange(n)[:, None, None]
    assert np.array_equal(arrays["map"], values[rows, segments])
    with np.load(cfg.out / "q3_lime.npz") as lime:
        assert np.array_equal(segments, lime["segments"])

    # the caption's numbers are the NPZ's
    caption = figure["caption"]
    change = full.astype(np.float64) - empty
    gap = np.abs(values.astype(np.float64).sum(1) - change) / np.abs(change)
    stated = float(re.search(r"hidden\)\|: ([0-9.e+-]+)\. ", caption).group(1))
    assert (
        np.isclose(stated, gap.max(), rtol=0.06) and gap.max() < 1e-2
    )  # float32 rounding of small changes
    v = values.astype(np.float64)
    share = v.clip(min=0).sum() / np.abs(v).sum()
    assert f"Positive values carry {share:.2f} of the absolute mass" in caption
    perms, evals = arrays["permutations"].tolist(), arrays["evaluations"].tolist()
    assert perms == [2 * shap_values.MIN_PAIRS] * n  # the floor: the cap is below it
    counts = segments.reshape(n, -1).max(1) + 1
    assert evals == [shap_values.evaluations(int(s), p) for s, p in zip(counts, perms, strict=True)]
    assert f"{min(evals)}-{max(evals)} model evaluations" in caption or str(evals[0]) in caption

    # convergence record and the trust table's row
    record = man["convergence"][METHOD]
    assert record["permutations"] == perms and record["evaluations"] == evals
    assert f"cap {CAP}" in record["rule"]
    columns, trust = man["trust"]["columns"], {r[0]: r for r in man["trust"]["rows"]}
    assert METHOD in trust
    row = trust[METHOD]
    assert row[columns.index("deletion AUC (low=good)")] is not None
    # rerun on the randomized model at the trained counts; stability from its two half-sets
    assert row[columns.index("randomization rank corr.")] is not None
    assert 0 < row[columns.index("stability")] <= 1

    # a replay under a cap and rule that alone would draw far more permutations draws the
    # recorded ones and makes the same bytes
    again = replace(cfg, out=tmp_path / "b", replay=cfg.out / "manifest.json",
                    shap_evaluations=100 * CAP, adaptive=False)  # fmt: skip
    assert permutation_cap(again, int(counts.max())) > max(perms)  # what it would draw afresh
    replayed, _ = run_report(again, progress=False)
    assert replayed["convergence"][METHOD]["permutations"] == perms
    assert (tmp_path / "b" / f"{FID}.npz").read_bytes() == (cfg.out / f"{FID}.npz").read_bytes()


def test_shap_is_an_extra_that_the_course_preset_turns_on(tmp_path: Path) -> None:
    argv = ["report", str(tmp_path), "-o", str(tmp_path / "out"), "--checkpoint", "c.pt"]
    plain = report_config(parse_args(argv), argv)
    assert not plain.shap
    # off: the manifest's settings are what they were before the option
    assert not {"shap", "shap_evaluations"} & set(parameters(plain))
    course = [*argv, "--preset", "hw5-2020"]
    on = report_config(parse_args(course), course)
    assert on.shap and parameters(on)["shap_evaluations"] == on.shap_evaluations


def test_the_budgets_floor_cut_is_named_as_such_not_as_a_cap() -> None:
    text = rule_text(FLOOR_ONLY, adaptive=True)
    assert f"{2 * shap_values.MIN_PAIRS} permutations" in text and "budget" in text
    assert "cap" not in text
