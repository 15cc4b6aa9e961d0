"""The input check: tiny Classifiers trained briefly on the sample set under RGB, BGR and [-1,1]
inputs are each recognised from their accuracy alone; a wrong flag is named with the right one;
a change needs an exact McNemar test at the stated level on enough images (a random model, 2/11
vs 1/11 never change it); a loaded machine never skips or cuts it; a bare folder and
--no-input-check say that nothing was checked."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import scipy.stats
import torch
from pypdf import PdfReader
from torch import Tensor, nn

from hw5lib import arguments, cli
from hw5lib.inputs.conventions import IMAGENET_MEAN, IMAGENET_STD, Convention, candidates
from hw5lib.inputs.datasets import ImageSet, open_dataset
from hw5lib.inputs.input_check import check_input, decide
from hw5lib.inputs.input_verdict import ADOPTED, FLAGS, InputCheck, scores_of
from hw5lib.inputs.sample import SampleInfo, generate_sample
from hw5lib.inputs.sequential_test import (
    ALPHA,
    DROP_LEVEL,
    MIN_IMAGES,
    Tally,
    binomial_two_sided,
    discordance_bound,
    mcnemar,
    nested_rounds,
    significant,
)
from hw5lib.model.loading import load_classifier
from hw5lib.model.preprocess import Preprocess
from hw5lib.run.subject import check_convention
from hw5lib.run.train import TrainConfig, train
from model import Classifier
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
    # scored in rounds of 17, 16 and 33 of the 66 images, stopping once the test decides
    assert check.checked and check.images in (17, 33, 66)
    assert check.evidence is not None and check.evidence.rounds[-1] == check.images
    assert check.source == ADOPTED
    # The gap is real: the trained convention beats the wrong channel order and scaling by far.
    wrong_order = replace(truth, channel_order="bgr" if truth.channel_order == "rgb" else "rgb")
    assert accuracy_of(check, truth) >= 0.5 > accuracy_of(check, wrong_order) + 0.3
    assert check.chosen.channel_order == truth.channel_order
    assert check.chosen.scaling == truth.scaling
    # The chosen one is not significantly worse than the trained one, and every change is
    # backed by a McNemar p below the corrected level, recorded in the manifest's terms.
    test = check.evidence
    assert test is not None and test.level == ALPHA / (test.challengers * test.tests)
    chosen = next(s for s in check.scores if s.convention == check.chosen)
    assert accuracy_of(check, truth) - chosen.accuracy < 0.1
    if check.chosen == Convention.of(DEFAULT):
        assert name == "bgr" and check.warning is None and "kept the HW3 default" in check.note
    else:
        assert chosen.wins > chosen.losses and chosen.p is not None and chosen.p <= test.level
        assert check.warning == check.note and "adopted" in check.note
        assert "exact McNemar p = " in check.note
        assert f"--channel-order {truth.channel_order}" in check.note
        assert test.decision == "adopted"


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
    assert len(check["candidates"]) == 32 and man["preprocess"]["channel_order"] == "bgr"
    assert check["test"]["alpha"] == ALPHA and check["test"]["decision"] == "warned"
    assert check["test"]["name"].startswith("exact McNemar")
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


@pytest.mark.parametrize(("source", "state"), [(FLAGS, "rgb"), (ADOPTED, "rgb_bare")])
def test_a_loaded_machine_never_skips_or_cuts_the_check(
    source: str, state: str, trained: dict[str, Path], check_sample: SampleInfo
) -> None:
    # A second per image on the fake clock (a machine far slower than any budget allows): the
    # check still scores the images a quiet machine does and decides the same, for a given
    # convention as for an adopted one. The old rule skipped a given one's check past 5% of the
    # budget, so a loaded laptop explained other pixels than a quiet one.
    pre = TRAINED["rgb"] if source == FLAGS else DEFAULT
    split = open_dataset(check_sample.root)
    quiet = check_input(model_of(trained[state]), split, pre, source, CLASSES)
    clock = FakeClock()
    model = ClockedModel(model_of(trained[state]), clock, 1.0)
    loaded = check_input(model, split, pre, source, CLASSES, clock=clock)
    assert loaded.checked and clock.now > 30 and loaded.seconds == clock.now
    assert loaded.images == quiet.images >= MIN_IMAGES
    assert loaded.chosen == quiet.chosen and loaded.chosen.channel_order == "rgb"
    assert loaded.note == quiet.note and "--budget" not in loaded.note
    assert loaded.to_dict() == quiet.to_dict()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_model_never_adopts_and_says_the_evidence_is_thin(
    seed: int, check_sample: SampleInfo
) -> None:
    with torch.random.fork_rng():  # a seeded random-weight model, global RNG left as it was
        torch.manual_seed(seed)
        model = Classifier((8, 16, 16, 16, 16), (32,), CLASSES, input_size=SIZE[0]).eval()
    check = check_input(model, open_dataset(check_sample.root), DEFAULT, ADOPTED, CLASSES)
    assert check.checked and check.chosen == Convention.of(DEFAULT) and check.warning is None
    assert check.evidence is not None and check.evidence.decision.startswith("kept")
    assert "kept the HW3 default" in check.note
    if check.evidence.decision == "kept: evidence too thin":
        assert "the evidence is too thin to change it" in check.note


def test_no_input_check_switch_skips_it(trained: dict[str, Path], check_sample: SampleInfo) -> None:
    cfg = arguments.report_config(
        arguments.parse_args(
            ["report", str(check_sample.root), "o", "--checkpoint", "c.pt", "--no-input-check"]
        )
    )
    loaded = load_classifier(trained["rgb_bare"])
    split = open_dataset(check_sample.root)
    pre, check = check_convention(cfg, loaded, loaded.model, DEFAULT, split, CLASSES, None)
    assert pre == DEFAULT and not check.checked and "--no-input-check" in check.note


def test_one_channel_candidates_have_no_channel_order_and_no_duplicates() -> None:
    gray = candidates(Preprocess(channels=1, mean=(0.5,), std=(0.5,)))
    assert len(gray) == len(set(gray)) == 8  # 4 readers x ([0,1], [-1,1])
    assert {c.channel_order for c in gray} == {None}
    assert len(candidates(Preprocess(mean=(0.3,) * 3, std=(0.2,) * 3))) == 25  # + its own
    # the data's own statistics: one more scaling per order and reader, in that channel order
    colour = candidates(Preprocess(), ((0.6, 0.5, 0.4), (0.3, 0.2, 0.1)))
    assert len(colour) == len(set(colour)) == 32
    own = {c.channel_order: c for c in colour if c.scaling == "dataset" and c.reader == "cv2"}
    assert own["rgb"].mean == (0.6, 0.5, 0.4) and own["bgr"].mean == (0.4, 0.5, 0.6)
    assert {c.reader for c in colour} == {"cv2", "cv2-cubic", "cv2-area", "pil"}


def tally_of(rows: dict[Convention, list[int]]) -> Tally:
    """A tally of which images each convention got right (1) or wrong (0)."""
    tally = Tally()
    for c, right in rows.items():
        tally.add(c, torch.tensor(right, dtype=torch.bool))
    return tally


def decide_on(rows: dict[Convention, list[int]], level: float) -> tuple[Convention, str, str]:
    default = Convention.of(Preprocess())
    tally = tally_of(rows)
    live = list(rows)
    n = len(rows[default])
    winners = significant(tally, live, default, level) if n >= MIN_IMAGES else []
    scores = scores_of(tally, live, default)
    chosen, note, _, decision = decide(tally, scores, default, ADOPTED, winners, level, n, "on")
    return chosen, note, decision


def test_two_of_eleven_against_one_of_eleven_does_not_adopt() -> None:
    # issue 21's case: ImageNet mean/std scored 2/11, the default 1/11, and was adopted
    default = Convention.of(Preprocess())
    imagenet = Convention("bgr", "cv2", "imagenet", IMAGENET_MEAN, IMAGENET_STD)
    rows = {default: [1] + [0] * 10, imagenet: [0, 1, 1] + [0] * 8}
    chosen, note, decision = decide_on(rows, ALPHA / 31)
    assert chosen == default and decision == "kept: too few images"
    assert "only 11 labelled images" in note and "the evidence is too thin" in note
    # even past the minimum, a 2-to-1 split of discordant images is no evidence
    assert mcnemar(2, 1) == 1.0


def test_eleven_labelled_images_never_change_the_convention_however_they_score(
    trained: dict[str, Path], check_sample: SampleInfo
) -> None:
    # one image per class, read by a model trained on RGB: whatever the scores, 11 < MIN_IMAGES
    split = open_dataset(check_sample.root)
    first = sorted({lb: i for i, lb in reversed(list(enumerate(split.labels)))}.values())
    few = ImageSet(split.root, [split.paths[i] for i in first], [split.labels[i] for i in first])
    check = check_input(model_of(trained["rgb_bare"]), few, DEFAULT, ADOPTED, CLASSES)
    assert check.images == 11 and check.chosen == Convention.of(DEFAULT)
    assert check.evidence is not None and check.evidence.decision == "kept: too few images"
    assert "only 11 labelled images, fewer than the 20" in check.note


def test_a_clear_paired_win_on_enough_images_is_adopted_and_a_near_one_is_not() -> None:
    default = Convention.of(Preprocess())
    rgb = replace(default, channel_order="rgb")
    rgb_pil = replace(rgb, reader="pil")
    # 40 images: rgb gets 20 right the default gets wrong and loses none
    clear = {default: [0] * 20 + [1] * 10 + [0] * 10, rgb: [1] * 30 + [0] * 10}
    chosen, note, decision = decide_on(clear, ALPHA / 31)
    assert chosen == rgb and decision == "adopted" and "--channel-order rgb" in note
    # two that both win: the one closest to the default, unless it is significantly worse
    both = clear | {rgb_pil: [1] * 31 + [0] * 9}
    assert decide_on(both, ALPHA / 31)[0] == rgb
    # 12 to 4 discordant images on 40 (p = 0.077): kept, and the note says why
    near = {
        default: [0] * 12 + [1] * 4 + [1] * 10 + [0] * 14,
        rgb: [1] * 12 + [0] * 4 + [1] * 10 + [0] * 14,
    }
    chosen, note, decision = decide_on(near, ALPHA / 31)
    assert chosen == default and decision == "kept: evidence too thin"
    assert "is not significantly better (exact McNemar p = 0.077" in note


def test_exact_binomial_tail_matches_scipy() -> None:
    from scipy.stats import binomtest  # an independent implementation

    for n in (0, 1, 2, 5, 11, 20, 37, 64, 200):
        for k in range(n + 1):
            expected = 1.0 if n == 0 else binomtest(k, n, 0.5).pvalue
            assert math.isclose(binomial_two_sided(k, n), expected, rel_tol=1e-9), (k, n)
    assert binomial_two_sided(0, 5) == 2 / 32  # all five one way: twice 1/32


@pytest.mark.parametrize(("discordant", "scored"), [(0, 13), (0, 50), (1, 50), (7, 100), (12, 13)])
def test_discordance_bound_is_the_exact_clopper_pearson_bound(discordant: int, scored: int) -> None:
    # independent: the beta quantile that bounds a binomial proportion (Clopper & Pearson, 1934)
    expected = scipy.stats.beta.ppf(1 - DROP_LEVEL, discordant + 1, scored - discordant)
    assert math.isclose(discordance_bound(discordant, scored), expected, rel_tol=1e-6)
    assert discordance_bound(scored, scored) == 1.0 and discordance_bound(0, 0) == 1.0


def test_rounds_are_nested_evenly_spaced_and_cover_every_image_once() -> None:
    rounds = nested_rounds(200)
    assert [len(r) for r in rounds] == [13, 12, 25, 50, 100]
    assert rounds[0] == list(range(0, 200, 16))
    assert sorted(p for r in rounds for p in r) == list(range(200))
    assert nested_rounds(10) == [list(range(10))]
