"""The input check: tiny Classifiers trained briefly on the sample set under RGB, BGR and [-1,1]
inputs are each recognised from their accuracy alone; a wrong flag is named with the right one;
a bare folder, a small --budget and --no-input-check say that nothing was checked."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pypdf import PdfReader
from torch import Tensor, nn

from hw5lib import cli
from hw5lib.budget import Deadline
from hw5lib.data import Preprocess
from hw5lib.datasets import ImageSet, open_dataset
from hw5lib.input_check import (
    ADOPTED,
    FLAGS,
    TIE_MARGIN,
    Convention,
    InputCheck,
    Score,
    candidates,
    check_input,
    decide,
    nested_rounds,
)
from hw5lib.models import load_classifier
from hw5lib.sample import SampleInfo, generate_sample
from hw5lib.subject import check_convention
from hw5lib.train import TrainConfig, train
from tests.fake_clock import FakeClock

SIZE = (32, 32)
# Enough images for a clear gap after a few seconds of training: 12 + 6 per class, 11 classes.
CHECK_SET = {"training": 12, "validation": 6, "testing": 0}
CLASSES = 11
# How each checkpoint was trained: (channel order, reader, mean/std) -> expected convention.
TRAINED = {
    "rgb": Preprocess(size=SIZE, channel_order="rgb", reader="pil"),
    "bgr": Preprocess(size=SIZE, channel_order="bgr", reader="cv2"),
    "minus1to1": Preprocess(size=SIZE, channel_order="rgb", reader="pil", mean=(0.5,), std=(0.5,)),
}
DEFAULT = Preprocess(size=SIZE)  # the HW3 defaults at the tiny models' size
FAST = ["--lime-samples", "40", "--filter-steps", "5", "--smooth-samples", "4", "--ig-steps",
        "4", "--per-class", "1", "--no-trust", "--filter-layers", "2", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def check_sample(tmp_path_factory: pytest.TempPathFactory) -> SampleInfo:
    return generate_sample(tmp_path_factory.mktemp("check") / "food", seed=0, per_class=CHECK_SET)


@pytest.fixture(scope="module")
def trained(check_sample: SampleInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> checkpoint recording its preprocessing; name + "_bare" -> its bare state_dict."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths: dict[str, Path] = {}
    for name, pre in TRAINED.items():
        path = folder / f"{name}.pt"
        cfg = TrainConfig(check_sample.root, path, (8, 16, 16, 16, 16), (32,), 30, preprocess=pre)
        train(cfg, list(check_sample.classes))
        bare = folder / f"{name}_bare.pth"  # what a course training script saves: no record
        torch.save(torch.load(path, weights_only=True)["model_state_dict"], bare)
        paths[name], paths[f"{name}_bare"] = path, bare
    return paths


def model_of(path: Path) -> nn.Module:
    return load_classifier(path).model.eval()


def run_check(path: Path, root: Path, pre: Preprocess, source: str, **kw: object) -> InputCheck:
    return check_input(model_of(path), open_dataset(root), pre, source, CLASSES, **kw)  # type: ignore[arg-type]


def accuracy_of(check: InputCheck, convention: Convention) -> float:
    return next(s.accuracy for s in check.scores if s.convention == convention)


@pytest.mark.parametrize("name", list(TRAINED))
def test_each_training_convention_is_adopted_from_a_bare_state_dict(
    name: str, trained: dict[str, Path], check_sample: SampleInfo
) -> None:
    check = run_check(trained[f"{name}_bare"], check_sample.root, DEFAULT, ADOPTED)
    truth = Convention.of(TRAINED[name])
    assert check.checked and check.images == CLASSES * CHECK_SET["validation"]
    assert check.source == ADOPTED
    # The gap is real: the trained convention beats the wrong channel order and scaling by far.
    wrong_order = replace(truth, channel_order="bgr" if truth.channel_order == "rgb" else "rgb")
    assert accuracy_of(check, truth) >= 0.5 > accuracy_of(check, wrong_order) + 0.3
    assert check.chosen.channel_order == truth.channel_order
    assert check.chosen.scaling == truth.scaling
    # The readers differ less (32x32 from 96..192 px, cv2 without antialiasing); a near-tie
    # goes to the default reader, else the trained one wins.
    top = max(s.accuracy for s in check.scores)
    assert accuracy_of(check, truth) >= top - TIE_MARGIN
    assert check.chosen.reader == truth.reader or accuracy_of(check, check.chosen) < top
    if check.chosen == Convention.of(DEFAULT):
        assert check.warning is None and "kept the HW3 default" in check.note
    else:
        assert check.warning == check.note and "adopted" in check.note
        assert f"--channel-order {truth.channel_order}" in check.note or name == "bgr"


def test_wrong_channel_order_flag_is_kept_but_the_warning_names_the_right_one(
    trained: dict[str, Path], check_sample: SampleInfo
) -> None:
    given = replace(TRAINED["rgb"], channel_order="bgr")
    check = run_check(trained["rgb"], check_sample.root, given, FLAGS)
    assert check.chosen == Convention.of(given)  # what the user asked for is what runs
    assert check.warning is not None
    assert "as read (bgr, pil, [0,1])" in check.warning
    assert (
        "--channel-order rgb" in check.warning and "if that is how it was trained" in check.warning
    )


def test_wrong_flag_warns_on_stderr_in_the_manifest_and_on_the_title_page(
    trained: dict[str, Path], check_sample: SampleInfo, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    argv = ["report", str(check_sample.root), str(out), "--checkpoint", str(trained["rgb"])]
    assert cli.main([*argv, "--channel-order", "bgr", "--quiet", *FAST]) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    man = json.loads((out / "manifest.json").read_text())
    check = man["input_check"]
    assert warnings == [f"hw5: warning: {check['warning']}"]
    assert check["source"] == FLAGS and check["chosen"]["channel_order"] == "bgr"
    assert len(check["candidates"]) == 12 and man["preprocess"]["channel_order"] == "bgr"
    title = " ".join(PdfReader(out / "report.pdf").pages[0].extract_text().split())
    assert "Warning: the model scores" in title and "--channel-order rgb" in title
    timings = json.loads((out / "timings.json").read_text())["seconds"]
    assert 0 < timings["input check"] < 30


def test_bare_folder_of_unlabelled_images_says_it_could_not_check(
    trained: dict[str, Path], check_sample: SampleInfo
) -> None:
    split = open_dataset(check_sample.root)
    bare = ImageSet(split.root, split.paths, (None,) * len(split))
    check = check_input(model_of(trained["rgb"]), bare, TRAINED["rgb"], ADOPTED, CLASSES)
    assert not check.checked and check.scores == ()
    assert check.note.startswith("the input convention could not be checked: no labelled images")
    assert check.chosen == Convention.of(TRAINED["rgb"]) and check.warning is None
    assert check_input(model_of(trained["rgb"]), None, DEFAULT, ADOPTED, CLASSES).images == 0


class ClockedModel(nn.Module):
    """A model whose every image costs ``delay`` seconds on a fake clock."""

    def __init__(self, model: nn.Module, clock: FakeClock, delay: float) -> None:
        super().__init__()
        self.model, self.clock, self.delay = model, clock, delay

    def forward(self, x: Tensor) -> Tensor:
        self.clock.advance(self.delay * len(x))
        return self.model(x)


@pytest.mark.parametrize(("budget", "images"), [(40.0, 0), (120.0, 33), (400.0, 66)])
def test_budget_prices_the_check_and_cuts_images_or_the_whole_check(
    budget: float, images: int, trained: dict[str, Path], check_sample: SampleInfo
) -> None:
    # 0.01 s per image and 12 conventions: each round of 33 images costs ~4 s; the check may
    # take 5% of the budget: 2 s (nothing), 6 s (one round), 20 s (both).
    clock = FakeClock()
    model = ClockedModel(model_of(trained["rgb"]), clock, 0.01)
    split = open_dataset(check_sample.root)
    deadline = Deadline(budget, clock)
    check = check_input(model, split, TRAINED["rgb"], FLAGS, CLASSES, deadline=deadline)
    assert check.images == images
    if images == 0:
        assert "--budget allows it 2 s" in check.note
    elif images < 66:
        assert "on 33 labelled images (the --budget allowed 33 of 66)" in check.note


def test_no_input_check_switch_skips_it(trained: dict[str, Path], check_sample: SampleInfo) -> None:
    cfg = cli.report_config(
        cli.parse_args(
            ["report", str(check_sample.root), "o", "--checkpoint", "c.pt", "--no-input-check"]
        )
    )
    loaded = load_classifier(trained["rgb_bare"])
    split = open_dataset(check_sample.root)
    pre, check = check_convention(cfg, loaded, loaded.model, DEFAULT, split, CLASSES, None)
    assert pre == DEFAULT and not check.checked and "--no-input-check" in check.note


def test_one_channel_candidates_have_no_channel_order_and_no_duplicates() -> None:
    gray = candidates(Preprocess(channels=1, mean=(0.5,), std=(0.5,)))
    assert len(gray) == len(set(gray)) == 4  # 2 readers x ([0,1], [-1,1])
    assert {c.channel_order for c in gray} == {None}
    assert len(candidates(Preprocess(mean=(0.3,) * 3, std=(0.2,) * 3))) == 13  # + its own


def test_near_tie_keeps_the_default_and_a_clear_winner_is_adopted() -> None:
    default = Convention.of(Preprocess())
    rgb_cv2 = replace(default, channel_order="rgb")
    rgb_pil = replace(rgb_cv2, reader="pil")
    tie = [Score(default, 0.80), Score(rgb_cv2, 0.81), Score(rgb_pil, 0.805)]
    assert decide(tie, default, ADOPTED, 0.09, "on 200 labelled images")[0] == default
    clear = [Score(default, 0.30), Score(rgb_cv2, 0.81), Score(rgb_pil, 0.82)]
    assert (
        decide(clear, default, ADOPTED, 0.09, "on 200 labelled images")[0] == rgb_cv2
    )  # the default reader
    # Nothing well above chance: the default stays, whatever scored a little higher.
    noise = [Score(default, 0.09), Score(rgb_cv2, 0.15)]
    assert decide(noise, default, ADOPTED, 0.09, "on 200 labelled images")[0] == default


def test_rounds_are_nested_evenly_spaced_and_cover_every_image_once() -> None:
    rounds = nested_rounds(200)
    assert [len(r) for r in rounds] == [25, 25, 50, 100]
    assert rounds[0] == list(range(0, 200, 8))
    assert sorted(p for r in rounds for p in r) == list(range(200))
    assert nested_rounds(10) == [list(range(10))]
