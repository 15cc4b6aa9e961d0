"""The SmoothGrad sigma sweep (--smooth-sigmas, figure q4_smoothgrad_sigma): rows in increasing
sigma, each converged by SmoothGrad's rule from its own noise; the caption's numbers recomputed
from the arrays; off by default, costing nothing and writing nothing; on under --preset hw5-2020."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hw5lib.arguments import build_parser, parse_args
from hw5lib.config import RunConfig
from hw5lib.errors import UserError
from hw5lib.inputs.sample import SampleInfo
from hw5lib.methods.randomization import rank_correlation
from hw5lib.report.notes import check_references, parse_notes
from hw5lib.run.manifest import parameters
from hw5lib.run.pipeline import run_report
from hw5lib.stages import q4_smoothgrad
from hw5lib.stages import q4_smoothgrad_sigma as sweep
from hw5lib.stages.costs import Work

FAST = dict(lime_samples=40, filter_steps=5, smooth_samples=20, ig_steps=4, per_class=1)
SIGMAS = (2.0, 0.15, 1.0, 2.0)  # out of order, one twice; 0.15 is the main figure's sigma
NOTES = "## Q4\n\nq4_smoothgrad_sigma shows where the map stops tracking the object.\n"


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return dict(z)


@pytest.fixture(scope="module")
def swept(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunConfig, dict]:
    root = tmp_path_factory.mktemp("sweep")
    (root / "notes.md").write_text(NOTES)
    cfg = RunConfig(
        data=small_sample.root, out=root / "a", checkpoint=tiny_checkpoint, device="cpu",
        smooth_sigmas=SIGMAS, notes=root / "notes.md", **FAST,
    )  # fmt: skip
    man, _ = run_report(cfg, progress=False)
    assert man["failures"] == []
    return cfg, man


def test_rows_in_increasing_sigma_each_converged_from_its_own_noise(swept) -> None:
    cfg, man = swept
    z = arrays(cfg.out / "q4_smoothgrad_sigma.npz")
    record = next(f for f in man["figures"] if f["id"] == "q4_smoothgrad_sigma")
    assert z["sigmas"].tolist() == record["params"]["sigmas"] == [0.15, 1.0, 2.0]
    n = len(man["dataset"]["images"])
    assert z["maps"].shape[:2] == (3, n) and z["samples"].shape == (3, n)
    assert record["section"] == "Q4" and man["parameters"]["smooth_sigmas"] == list(SIGMAS)
    # the main figure's sigma is the main figure's maps; the others are their own samples,
    # recorded (and replayed) per sigma, stopped by SmoothGrad's rule at or below the cap
    main = arrays(cfg.out / "q4_smoothgrad.npz")["map"]
    assert np.array_equal(z["maps"][0], main)
    assert z["samples"][0].tolist() == man["convergence"]["SmoothGrad"]["samples"]
    for k, sigma in enumerate((1, 2), start=1):
        assert (
            z["samples"][k].tolist() == man["convergence"][f"SmoothGrad sigma {sigma}"]["samples"]
        )
    assert (z["samples"] <= cfg.smooth_samples).all() and (z["samples"] >= 10).all()
    assert not np.allclose(z["maps"][1], z["maps"][2])  # another sigma, another map
    assert "SmoothGrad sigma 0.15" not in man["convergence"]


def test_caption_numbers_are_the_arrays_scored_again(swept) -> None:
    cfg, man = swept
    z = arrays(cfg.out / "q4_smoothgrad_sigma.npz")
    record = next(f for f in man["figures"] if f["id"] == "q4_smoothgrad_sigma")
    main = torch.from_numpy(arrays(cfg.out / "q4_smoothgrad.npz")["map"])
    rhos = [float(rank_correlation(torch.from_numpy(m), main).nanmean()) for m in z["maps"]]
    assert rhos[0] == pytest.approx(1.0)
    assert record["params"]["spearman"] == pytest.approx(rhos, abs=1e-6)
    caption = record["caption"]
    for sigma, rho, auc in zip((0.15, 1, 2), rhos, record["params"]["deletion"], strict=True):
        assert (
            f"{sigma:g}: " in caption and f"Spearman {rho:.3f}, deletion AUC {auc:.3f}" in caption
        )
    # the main sigma's deletion AUC is the one the trust table gives SmoothGrad's maps
    columns, rows = man["trust"]["columns"], {r[0]: r for r in man["trust"]["rows"]}
    trusted = rows["SmoothGrad"][columns.index("deletion AUC (low=good)")]
    assert record["params"]["deletion"][0] == pytest.approx(trusted, abs=1e-4)
    below = [s for s, r in zip((0.15, 1, 2), rhos, strict=True) if r < sweep.TRACKS]
    expected = f"at sigma {below[0]:g}, the first" if below else "Every swept sigma's map tracks"
    assert expected in caption
    # --notes named the figure and the run accepted it
    assert man["notes"] is not None


def test_a_sigma_row_does_not_depend_on_the_others_swept(swept, tmp_path: Path) -> None:
    cfg, _ = swept
    alone = replace(cfg, out=tmp_path / "b", smooth_sigmas=(1.0,), trust=False, notes=None)
    man, _ = run_report(alone, progress=False)
    z, before = (
        arrays(alone.out / "q4_smoothgrad_sigma.npz"),
        arrays(cfg.out / "q4_smoothgrad_sigma.npz"),
    )
    assert z["sigmas"].tolist() == [1.0]
    assert np.array_equal(z["maps"][0], before["maps"][1])
    assert z["samples"][0].tolist() == before["samples"][1].tolist()
    # the main sigma not swept: still the reference (the same number), but no row of its own
    record = next(f for f in man["figures"] if f["id"] == "q4_smoothgrad_sigma")
    earlier = next(f for f in swept[1]["figures"] if f["id"] == "q4_smoothgrad_sigma")
    assert record["params"]["spearman"] == [earlier["params"]["spearman"][1]]


def test_off_by_default_no_figure_no_cost_no_manifest_entry(swept) -> None:
    """Without --smooth-sigmas the entry plans no figure (so --notes may not name it), prices
    nothing, shows no progress and leaves the manifest's parameters as before the option."""
    cfg, n = replace(swept[0], smooth_sigmas=()), len(swept[1]["dataset"]["images"])
    off = SimpleNamespace(cfg=cfg)
    on = SimpleNamespace(
        cfg=replace(cfg, smooth_sigmas=SIGMAS), subject=SimpleNamespace(paths=[0] * n)
    )
    assert sweep.STAGE.cost(off, cfg, {sweep.NAME: 1.0}) == Work()
    assert sweep.STAGE.units(off, cfg) == 0 and sweep.STAGE.figures(off) == ()
    assert "smooth_sigmas" not in parameters(cfg)  # earlier manifests stay byte-identical
    notes = parse_notes(NOTES, "N.md")
    with pytest.raises(UserError, match="no figure named q4_smoothgrad_sigma"):
        check_references(notes, ["q4_smoothgrad", *sweep.STAGE.figures(off)])
    check_references(notes, ["q4_smoothgrad", *sweep.STAGE.figures(on)])
    assert sweep.STAGE.units(on, on.cfg) == 3 + 1  # three sigmas, then the scores
    # two sigmas of its own (the main one is q4_smoothgrad's): their gradients at the share
    assert sweep.STAGE.cost(on, on.cfg, {sweep.NAME: 0.5}).backward == 2 * n * 20 * 0.5
    assert "q4_smoothgrad_sigma" in [f["id"] for f in swept[1]["figures"]]


def test_preset_hw5_2020_sweeps_and_the_flag_wins() -> None:
    assert build_parser().parse_args(["report"]).smooth_sigmas == ()
    preset = parse_args(["report", "--preset", "hw5-2020"]).smooth_sigmas
    assert sorted(preset) == list(preset) and {0.75, 1, 2, 3, 4} <= set(preset)
    mine = parse_args(["report", "--preset", "hw5-2020", "--smooth-sigmas", "0.5,2"])
    assert mine.smooth_sigmas == (0.5, 2.0)


def test_the_replay_makes_each_sigma_again(
    swept, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rule that never stops would spend the cap everywhere: the replay spends, per sigma,
    what the recorded run did, and so makes the same maps."""
    cfg, man = swept
    monkeypatch.setattr(q4_smoothgrad, "AGREEMENT", 1.01)
    again = replace(cfg, out=tmp_path / "c", replay=cfg.out / "manifest.json", trust=False)
    replayed, _ = run_report(again, progress=False)
    for key in ("SmoothGrad sigma 1", "SmoothGrad sigma 2"):
        assert replayed["convergence"][key]["samples"] == man["convergence"][key]["samples"]
    assert json.loads((again.out / "manifest.json").read_text())["failures"] == []
    same = arrays(again.out / "q4_smoothgrad_sigma.npz")
    assert np.array_equal(same["maps"], arrays(cfg.out / "q4_smoothgrad_sigma.npz")["maps"])
