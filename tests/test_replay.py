"""--replay MANIFEST: a rerun makes the decisions the manifest records (per-image samples and
steps, filters and their redos, DeepDream's steps, the budget's cuts) instead of deciding them
again, so rules that decide otherwise on another machine still give the same figures."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hw5lib import cli
from hw5lib.config import RunConfig
from hw5lib.errors import UserError
from hw5lib.inputs.sample import SampleInfo
from hw5lib.methods import filters, lime_adapter, lime_stopping
from hw5lib.report.outputs import sha256_file
from hw5lib.run.pipeline import run_report
from hw5lib.stages import ig_estimate, q3_lime, q4_deepdream, q4_integrated_gradients, q4_smoothgrad
from hw5lib.stages import q1_saliency as saliency_stage
from hw5lib.stages import q2_filters as filter_stage
from tests.fake_clock import CLOCK
from tests.zoo import SlowNet

REPO = Path(__file__).resolve().parent.parent
# The adaptive stages, and the decisions a replay must make again.
ADAPTIVE = (
    filter_stage.STAGE,
    q3_lime.STAGE,
    q4_smoothgrad.STAGE,
    q4_integrated_gradients.STAGE,
    q4_deepdream.STAGE,
)
COUNTS = {"LIME": "samples", "SmoothGrad": "samples", "Integrated Gradients": "steps"}


def config(small: SampleInfo, out: Path, checkpoint: Path, **changes: object) -> RunConfig:
    """Three explained images, one Q2 layer, one dream and small caps: the tiny model converges
    nowhere by them, so the rules spend every cap and redo every filter."""
    images = sorted({small.root / i.image for i in small.items if "validation/" in i.image})
    base = RunConfig(
        data=small.root,
        out=out,
        checkpoint=checkpoint,
        images=tuple(images[:3]),
        per_class=0,
        lime_samples=200,
        smooth_samples=20,
        ig_steps=16,
        filter_steps=filters.RECORD_EVERY,  # the fewest that can redo a filter
        filter_layers=("2",),
        filters_per_layer=2,
        dream_images=1,
        trust=False,
        device="cpu",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def counts(man: dict) -> dict[str, list[int]]:
    """Each sampled method's per-image counts, for the methods that ran (a budget cut skips
    one; which depends on what loading the model cost, not on the rule under test)."""
    return {m: man["convergence"][m][key] for m, key in COUNTS.items() if m in man["convergence"]}


def decide_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every adaptive rule decides differently: LIME, SmoothGrad and IG stop after their first
    round, and no filter counts as still climbing."""
    monkeypatch.setattr(lime_adapter, "MIN_SAMPLES", lime_stopping.ROUND_SAMPLES)
    monkeypatch.setattr(lime_adapter, "TOP_SEPARATION", -math.inf)
    monkeypatch.setattr(lime_stopping, "MATCHED_SAMPLES", 0)
    monkeypatch.setattr(q4_smoothgrad, "AGREEMENT", 0.0)
    monkeypatch.setattr(ig_estimate, "TOLERANCE", math.inf)
    monkeypatch.setattr(filters, "CLIMBING", math.inf)


@pytest.fixture(scope="module")
def original(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("original")
    run_report(config(small_sample, out, tiny_checkpoint), progress=False, stages=ADAPTIVE)
    return out / "manifest.json"


def test_replay_makes_the_recorded_decisions_where_the_rules_decide_otherwise(
    original: Path,
    small_sample: SampleInfo,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = json.loads(original.read_text())
    decide_otherwise(monkeypatch)
    cfg = config(small_sample, tmp_path / "fresh", tiny_checkpoint, lime_samples=300)
    fresh, _ = run_report(cfg, progress=False, stages=ADAPTIVE)
    assert all(counts(fresh)[m] != counts(first)[m] for m in COUNTS)  # the rules did change
    assert fresh["decisions"]["filters"] != first["decisions"]["filters"]

    cfg = replace(cfg, out=tmp_path / "replayed", replay=original)
    again, _ = run_report(cfg, progress=False, stages=ADAPTIVE)
    assert counts(again) == counts(first)
    assert (
        again["convergence"]["Integrated Gradients"]["gradients"]
        == (first["convergence"]["Integrated Gradients"]["gradients"])
    )
    assert again["decisions"] == first["decisions"]
    # Same machine, same decisions: the same figures and arrays, byte for byte.
    figures = {k: v for k, v in first["outputs"].items() if k.startswith(("q2", "q3", "q4"))}
    assert {k: again["outputs"][k] for k in figures} == figures
    assert again["replayed"] == {"sha256": sha256_file(original), "cut": None}
    assert first["replayed"] is None and "replay" not in again["parameters"]


def test_a_replay_over_budget_is_cut_and_says_so_and_its_cuts_replay(
    small_sample: SampleInfo, tmp_path: Path
) -> None:
    ckpt = tmp_path / "slow.pt"
    torch.manual_seed(0)
    torch.save(SlowNet().state_dict(), ckpt)
    slow = {
        "model": f"{REPO / 'tests' / 'zoo.py'}:SlowNet",
        "size": 32,
        "channel_order": "rgb",
        "filter_layers": ("net.cnn.2",),
    }
    full = config(small_sample, tmp_path / "full", ckpt, **slow)
    CLOCK.now = 0.0
    run_report(full, progress=False, clock=CLOCK, stages=ADAPTIVE)

    # Replayed under a budget it cannot fit, it is cut as a fresh run would be, and says so.
    tight = replace(full, out=tmp_path / "tight", budget=60.0, replay=full.out / "manifest.json")
    CLOCK.now = 0.0
    cut, _ = run_report(tight, progress=False, clock=CLOCK, stages=ADAPTIVE)
    assert "budget" in cut["replayed"]["cut"]
    assert any("budget" in c for c in cut["cuts"])
    decided = cut["decisions"]
    assert decided["stage_config"] or decided["skipped_stages"]

    # That run's cuts replay without any budget.
    again = replace(tight, out=tmp_path / "again", budget=None, replay=tight.out / "manifest.json")
    CLOCK.now = 0.0
    man, _ = run_report(again, progress=False, clock=CLOCK, stages=ADAPTIVE)
    assert man["decisions"] == decided and counts(man) == counts(cut)
    assert man["replayed"]["cut"] is None


def test_replay_of_another_checkpoints_manifest_is_refused_in_one_line(
    original: Path,
    small_sample: SampleInfo,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = json.loads(original.read_text())
    other["checkpoint"]["sha256"] = "0" * 64
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(other))
    images = [str(p) for p in config(small_sample, tmp_path, tiny_checkpoint).images]
    argv = ["report", str(small_sample.root), str(tmp_path / "out"), "--checkpoint",
            str(tiny_checkpoint), "--per-class", "0", "--images", *images, "--replay", str(path)]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hw5: error: --replay manifest.json: it was written for another ")
    assert err.count("\n") == 1


def test_replay_of_other_images_or_an_older_manifest_says_what_differs(
    original: Path, small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = config(small_sample, tmp_path / "out", tiny_checkpoint, replay=original)
    with pytest.raises(UserError, match="explained other images"):
        run_report(replace(cfg, images=cfg.images[:2]), progress=False, stages=ADAPTIVE)
    older = json.loads(original.read_text())
    del older["decisions"]
    path = tmp_path / "older.json"
    path.write_text(json.dumps(older))
    with pytest.raises(UserError, match=r"older.json: it records no decisions \(written by an"):
        run_report(replace(cfg, replay=path), progress=False, stages=ADAPTIVE)


def test_replay_reads_the_images_as_the_replayed_run_did(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The input convention is a decision too: a run told --channel-order bgr --reader cv2 (the
    checkpoint records rgb/pil), replayed without those flags, still reads them that way."""
    flagged = config(small_sample, tmp_path / "a", tiny_checkpoint, channel_order="bgr")
    flagged = replace(flagged, reader="cv2")
    first, _ = run_report(flagged, progress=False, stages=(saliency_stage.STAGE,))
    again = config(
        small_sample, tmp_path / "b", tiny_checkpoint, replay=tmp_path / "a" / "manifest.json"
    )
    man, _ = run_report(again, progress=False, stages=(saliency_stage.STAGE,))
    assert man["preprocess"] == first["preprocess"]
    assert (man["preprocess"]["channel_order"], man["preprocess"]["reader"]) == ("bgr", "cv2")
    assert man["input_check"]["source"] == "replayed"
    inputs = [np.load(tmp_path / d / "q1_saliency.npz")["input"] for d in ("a", "b")]
    assert np.array_equal(*inputs)


@pytest.mark.parametrize("setting", ["on", "off"])
def test_hw5_sh_replays_a_submitted_manifest_beside_it(tmp_path: Path, setting: str) -> None:
    """hw5.sh, copied beside a submitted/manifest.json, with a stand-in for python that prints
    the arguments it gets."""
    (tmp_path / "submitted").mkdir()
    (tmp_path / "submitted" / "manifest.json").write_text("{}")
    shutil.copy(REPO / "hw5.sh", tmp_path)
    echo = tmp_path / "echo.sh"
    echo.write_text('#!/bin/sh\necho "$@"\n')
    echo.chmod(0o755)
    env = {**os.environ, "PYTHON": str(echo), "HW5_REPLAY": setting}
    done = subprocess.run(
        ["bash", str(tmp_path / "hw5.sh"), "food", "out", "--seed", "1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wanted = f"--replay {tmp_path / 'submitted' / 'manifest.json'} --seed 1"
    assert (wanted in done.stdout) == (setting == "on")
