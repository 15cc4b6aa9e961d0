"""--conventions course against a straightforward re-implementation of the ML2020 HW5 sample code:
the same checkpoint and photos give the same model inputs, saliency maps and LIME superpixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from lime import lime_image
from PIL import Image
from pypdf import PdfReader
from skimage.segmentation import slic
from torch import nn

from hw5lib.arguments import parse_args
from hw5lib.config import COURSE, RunConfig
from hw5lib.methods import course
from hw5lib.methods.filters import layer_activations, most_active_filters
from hw5lib.model.loading import save_checkpoint
from hw5lib.model.preprocess import Preprocess
from hw5lib.run.pipeline import run_report
from hw5lib.stages import q1_saliency, q2_filters, q3_lime
from model import Classifier

SIDE = 64
ARCH = {"widths": [8, 8, 16, 16, 16], "hidden": [32], "num_classes": 11, "input_size": SIDE}
# label_index.jpg from scikit-image's offline photos, at odd sizes so that resizing matters
PHOTOS = {"0_0.jpg": "astronaut", "3_0.jpg": "coffee", "9_0.jpg": "rocket"}


def course_model() -> nn.Module:
    """A small HW3 Classifier with seeded weights and non-trivial BatchNorm statistics."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = Classifier(**ARCH)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """Three real photos named by label, and a checkpoint recording the HW3 reader (cv2, BGR)."""
    root = tmp_path_factory.mktemp("course")
    paths = []
    for i, (name, photo) in enumerate(sorted(PHOTOS.items())):
        im = Image.fromarray(getattr(skimage.data, photo)())
        im.convert("RGB").resize((181 + 17 * i, 143 + 9 * i)).save(root / name, quality=90)
        paths.append(root / name)
    ckpt = root / "hw3.pt"
    pre = Preprocess(size=(SIDE, SIDE), channel_order="bgr", reader="cv2")
    save_checkpoint(ckpt, course_model(), ARCH, pre, [str(k) for k in range(11)])
    return paths, ckpt


# ---- the sample code, as a student would have run it -------------------------------------------


def sample_code_inputs(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """HW3's readfile + ToTensor: cv2.imread, cv2.resize, /255; labels from the file names."""
    x = np.stack([cv2.resize(cv2.imread(str(p)), (SIDE, SIDE)) for p in paths])
    y = [int(p.name.split("_")[0]) for p in paths]
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255), torch.tensor(y)


def sample_code_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """HW5's compute_saliency_maps: |d mean CE loss / d x|, then normalize() per image."""
    x = x.clone().requires_grad_()
    loss = torch.nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    saliencies = x.grad.abs().detach()
    return torch.stack([(s - s.min()) / (s.max() - s.min()) for s in saliencies])


def sample_code_lime(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """HW5's LIME loop after np.random.seed(16): predict returns logits; SLIC as the course
    called it (scikit-image 0.16 numbered segments from 0); top_labels covers all 11 classes."""

    def predict(batch: np.ndarray) -> np.ndarray:
        return model(torch.FloatTensor(batch).permute(0, 3, 1, 2)).detach().numpy()

    def segmentation(image: np.ndarray) -> np.ndarray:
        return slic(image, n_segments=100, compactness=1, sigma=1, start_label=0)

    np.random.seed(16)
    out = []
    for image, label in zip(x.permute(0, 2, 3, 1).numpy(), y, strict=True):
        explainer = lime_image.LimeImageExplainer()
        explanation = explainer.explain_instance(
            image=image.astype(np.double),
            classifier_fn=predict,
            segmentation_fn=segmentation,
            top_labels=11,
        )
        out.append(dict(explanation.local_exp[int(label)]) | {"segments": explanation.segments})
    return out


def sample_code_filter(model: nn.Module, x: torch.Tensor, cnnid: int, filterid: int) -> np.ndarray:
    """HW5's filter_explaination (iteration=100, lr=0.1): the first image after the ascent."""
    acts = {}
    handle = model.cnn[cnnid].register_forward_hook(lambda m, i, o: acts.update(out=o))
    x = x.clone().requires_grad_()
    optimizer = torch.optim.Adam([x], lr=0.1)
    for _ in range(100):
        optimizer.zero_grad()
        model(x)
        (-acts["out"][:, filterid, :, :].sum()).backward()
        optimizer.step()
    handle.remove()
    return x.detach().squeeze()[0].numpy()


# ---- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def course_run(setup: tuple[list[Path], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    paths, ckpt = setup
    out = tmp_path_factory.mktemp("course-out")
    cfg = RunConfig(
        data=None,
        out=out,
        checkpoint=ckpt,
        images=tuple(paths),
        per_class=0,
        conventions=COURSE,
        trust=False,
    )
    run_report(cfg, progress=False, stages=(q1_saliency.STAGE, q3_lime.STAGE))
    return out


def test_inputs_and_saliency_match_the_sample_code(setup, course_run: Path) -> None:
    paths, _ = setup
    x, y = sample_code_inputs(paths)
    ours = np.load(course_run / "q1_saliency.npz")
    assert np.array_equal(ours["input"], x.numpy())  # identical model inputs
    assert np.array_equal(ours["target"], y.numpy())
    expected = sample_code_saliency(course_model(), x, y).numpy()
    assert ours["attribution"].shape == expected.shape  # per channel, not reduced
    assert np.abs(ours["attribution"] - expected).max() < 1e-5
    # and not our default definition: the loss's gradient, scaled per image over all channels
    assert np.abs(ours["map"] - expected.max(axis=1)).max() < 1e-5


def test_lime_top5_matches_the_sample_code(setup, course_run: Path) -> None:
    paths, _ = setup
    x, y = sample_code_inputs(paths)
    theirs = sample_code_lime(course_model(), x, y)
    ours = np.load(course_run / "q3_lime.npz")
    for i, expected in enumerate(theirs):
        assert np.array_equal(ours["segments"][i], expected.pop("segments"))
        top_theirs = sorted(expected, key=expected.get, reverse=True)[:5]
        top_ours = np.argsort(-ours["weights"][i], kind="stable")[:5].tolist()
        assert top_ours == top_theirs
        weights = np.array([expected[k] for k in sorted(expected)])
        assert np.allclose(ours["weights"][i][: len(weights)], weights, atol=1e-6)


def test_a_second_seed_draws_other_samples(setup) -> None:
    """The shared stream is what makes the weights match: another seed gives other weights."""
    paths, _ = setup
    x, y = sample_code_inputs(paths)
    model = course_model()
    first, other = course.lime_explainer(0), course.lime_explainer(1)
    a = course.lime_explain(first, model, x[0], int(y[0]), samples=200)
    b = course.lime_explain(other, model, x[0], int(y[0]), samples=200)
    assert not np.allclose(a.weights, b.weights)


def test_filter_ascent_matches_the_sample_code(setup) -> None:
    """All filters of a layer climb in one batch; each equals the sample code's own run. Adam
    with lr 0.1 turns a rounding difference into a full step wherever a max-pool or ReLU flips,
    so a few pixels may move (about 2% by more than 1e-3 of the image's range, measured)."""
    paths, _ = setup
    x, _ = sample_code_inputs(paths)
    model = course_model()
    picked = most_active_filters(layer_activations(model, model.cnn[2], x[:1]), 2)
    images, (start, end) = course.filter_ascent(model, model.cnn[2], picked, x[0])
    for row, f in enumerate(picked):
        expected = sample_code_filter(model, x[:2], 2, f)
        off = np.abs(images[row].numpy() - expected) > 1e-3 * np.ptp(expected)
        assert off.mean() < 0.05
        assert np.corrcoef(images[row].numpy().ravel(), expected.ravel())[0, 1] > 0.999
    assert (end > start).all()  # the ascent raised each filter's activation


def test_hw5_2020_preset_implies_course_conventions() -> None:
    assert parse_args(["report", "d", "o", "--preset", "hw5-2020"]).conventions == COURSE
    assert parse_args(["report", "d", "o"]).conventions == "ours"
    flag = ["report", "d", "o", "--preset", "hw5-2020", "--conventions", "ours"]
    assert parse_args(flag).conventions == "ours"  # the user's flag still wins


def test_course_figures_say_which_convention(course_run: Path) -> None:
    import json

    manifest = json.loads((course_run / "manifest.json").read_text())
    by_id = {f["id"]: f for f in manifest["figures"]}
    for fid in ("q1_saliency", "q3_lime"):
        assert by_id[fid]["params"]["conventions"] == COURSE
        assert "--conventions course" in by_id[fid]["caption"]
    title_page = PdfReader(course_run / "report.pdf").pages[0].extract_text()
    assert "HW5 sample code's saliency, LIME and filter visualization" in title_page


def test_course_filter_stage_runs_from_the_image(setup, tmp_path: Path) -> None:
    paths, ckpt = setup
    cfg = RunConfig(
        data=None,
        out=tmp_path,
        checkpoint=ckpt,
        images=tuple(paths[:1]),
        per_class=0,
        conventions=COURSE,
        trust=False,
        filter_layers=("cnn.2",),
        filters_per_layer=2,
    )
    manifest, _ = run_report(cfg, progress=False, stages=(q2_filters.STAGE,))
    record = next(f for f in manifest["figures"] if f["id"] == "q2_filters")
    assert record["params"]["steps"] == course.ASCENT_STEPS
    assert "first explained image" in record["caption"]
    shown = np.load(tmp_path / "q2_filters.npz")["cnn_2_images"]
    assert shown.min() == 0 and shown.max() == 1  # min-max scaled, as the sample code shows it
