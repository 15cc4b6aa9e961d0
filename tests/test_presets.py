"""Every preset end to end on generated data and a small model of the right shape, plus the
user's own model (--model file.py:Class), TorchScript, and layer selection by index or name."""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hw5lib.cli import main
from hw5lib.inputs.sample import generate_sample
from hw5lib.model.preprocess import Preprocess
from hw5lib.run.train import TrainConfig, train
from tests.pickles import save_as
from tests.zoo import AlexNetLike, ResidualNet, Seed001Classifier

FAST = ["--lime-samples", "30", "--filter-steps", "3", "--smooth-samples", "3", "--ig-steps", "4"]
FAST += ["--quiet", "--filters-per-layer", "2"]


def report(*args: object) -> int:
    return main(["report", *map(str, args), *FAST])


def load(out: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(out / name) as z:
        return dict(z)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def written_figures(out: Path) -> set[str]:
    return {p.stem for p in out.glob("*.png")}


def test_expression_preset_explains_grayscale_48px_csv_rows(tmp_path: Path) -> None:
    root = tmp_path / "fer"
    generate_sample(root, mode="expression", per_class={"Training": 3, "PublicTest": 1})
    ckpt = tmp_path / "gray.pt"
    train(
        TrainConfig(
            data=root / "fer2013.csv",
            out=ckpt,
            widths=(4, 8, 8, 8, 8),
            hidden=(16, 16),
            epochs=1,
            preprocess=Preprocess(size=(48, 48), channels=1, channel_order="rgb"),
        )
    )
    out = tmp_path / "out"
    assert report(root / "fer2013.csv", out, "--preset", "expression", "--checkpoint", ckpt) == 0
    man = manifest(out)
    assert man["model"]["classes"][3] == "Happy" and man["model"]["input"] == [1, 48, 48]
    sal = load(out, "q1_saliency.npz")
    assert sal["input"].shape == (7, 1, 48, 48)
    assert sal["target"].tolist() == list(range(7))  # one row per class, its label explained
    assert {"q3_lime", "q4_grad_cam", "q4_layercam", "q3_confusion"} <= written_figures(out)


@pytest.fixture(scope="module")
def catdog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("catdog") / "data"
    generate_sample(root, mode="catdog", per_class={"train": 1, "val": 1})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AlexNetLike()
    # a whole pickled torchvision AlexNet, as the cat/dog seed's torch_alex.pth (narrow here)
    path = save_as(
        root.parent / "torch_alex.pth", model, {AlexNetLike: "torchvision.models.alexnet.AlexNet"}
    )
    return root, path


def test_pickled_model_without_flag_fails_in_one_line(catdog, tmp_path, capsys) -> None:
    root, _ = catdog
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AlexNetLike()
    path = tmp_path / "alexnet_whole.pth"
    torch.save(model, path)  # pickled as tests.zoo.AlexNetLike: a class nobody stands in for
    assert report(root, tmp_path / "out", "--preset", "catdog", "--checkpoint", path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-pickle" in err[0]
    assert not (tmp_path / "out" / "q1_saliency.png").exists()


def test_catdog_preset_shows_cams_for_both_classes_on_named_images(catdog, tmp_path) -> None:
    """Out of the box: a torchvision AlexNet pickle, no flag, no --trust-pickle."""
    root, path = catdog
    out = tmp_path / "out"
    assert report(root, out, "--preset", "catdog", "--checkpoint", path) == 0
    man = manifest(out)
    assert man["model"]["architecture"]["loaded_as"] == "torchvision.models.alexnet.AlexNet"
    names = [Path(p).name for p in man["dataset"]["images"]]
    assert names[-3:] == ["dog.jpg", "cat.jpg", "both.jpg"]
    assert man["preprocess"]["mean"] == [0.485, 0.456, 0.406] and man["model"]["input"] == [
        3,
        224,
        224,
    ]
    for method in ("q4_grad_cam", "q4_layercam"):
        cams = load(out, f"{method}.npz")
        assert cams["target"].shape == (len(names), 2)  # cat and dog for every image
        assert cams["attribution"].shape == (len(names), 2, 224, 224)
    grid = load(out, "q4_feature_maps.npz")["activation"]
    assert grid.shape[0] == 32  # every channel of the last conv block (width 8 x 4)
    assert load(out, "q1_saliency.npz")["input"].min() < 0  # the input is ImageNet-normalized
    assert (out / "report.pdf").stat().st_size > 0


def test_hw5_2020_preset_uses_course_layer_and_filter(
    small_sample, tiny_checkpoint, tmp_path
) -> None:
    out = tmp_path / "out"
    assert (
        report(
            small_sample.root,
            out,
            "--preset",
            "hw5-2020",
            "--checkpoint",
            tiny_checkpoint,
            "--no-trust",
        )
        == 0
    )
    man = manifest(out)
    assert man["model"]["classes"][0] == "Bread"
    filt = next(f for f in man["figures"] if f["id"] == "q2_filters")
    assert filt["params"]["layers"] == ["cnn.15"] and filt["params"]["filters"] == [[0]]


def test_layer_by_index_or_name_gives_identical_figures(
    small_sample, tiny_checkpoint, tmp_path
) -> None:
    digests = []
    for spec in ("15", "cnn.15"):
        out = tmp_path / spec
        assert (
            report(
                small_sample.root,
                out,
                "--checkpoint",
                tiny_checkpoint,
                "--filter-layers",
                spec,
                "--no-trust",
            )
            == 0
        )
        digests.append(hashlib.sha256((out / "q2_filters.png").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_own_model_with_inplace_relus_and_residual_block_runs_every_method(
    small_sample, tmp_path
) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ResidualNet()
    ckpt = tmp_path / "res.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "out"
    zoo = Path(__file__).with_name("zoo.py")
    args = [small_sample.root, out, "--checkpoint", ckpt, "--model", f"{zoo}:ResidualNet"]
    args += ["--model-args", '{"num_classes": 11}', "--size", "32", "--channel-order", "rgb"]
    assert report(*args) == 0
    man = manifest(out)
    expected = {
        "q1_saliency",
        "q2_filters",
        "q3_lime",
        "q4_smoothgrad",
        "q4_grad_x_input",
        "q4_integrated_gradients",
        "q4_grad_cam",
        "q4_layercam",
        "q4_feature_maps",
        "q4_deepdream",
    }
    assert expected <= written_figures(out)
    assert all(row[0] for row in man["trust"]["rows"])
    assert not man["cuts"]
    for name in ("q1_saliency", "q4_grad_cam", "q4_integrated_gradients"):
        assert np.isfinite(load(out, f"{name}.npz")["attribution"]).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_model_runs_input_methods_and_names_the_skipped_ones(
    small_sample, tiny_checkpoint, tmp_path
) -> None:
    from hw5lib.model.loading import load_classifier

    scripted = torch.jit.script(load_classifier(tiny_checkpoint).model)
    path = tmp_path / "model.ts"
    scripted.save(str(path))
    out = tmp_path / "out"
    assert (
        report(
            small_sample.root, out, "--checkpoint", path, "--size", "32", "--channel-order", "rgb"
        )
        == 0
    )
    man = manifest(out)
    assert {"q1_saliency", "q3_lime", "q4_integrated_gradients"} <= written_figures(out)
    assert "q4_grad_cam" not in written_figures(out)
    assert any("TorchScript" in c and "Grad-CAM" in c for c in man["cuts"])


def test_flat_image_list_needs_no_data_folder(small_sample, tiny_checkpoint, tmp_path) -> None:
    images = sorted((small_sample.root / "validation").glob("*.jpg"))[:3]
    out = tmp_path / "out"
    assert (
        main(
            [
                "report",
                "--out-dir",
                str(out),
                "--checkpoint",
                str(tiny_checkpoint),
                "--images",
                *map(str, images),
                "--no-trust",
                *FAST,
            ]
        )
        == 0
    )
    assert [Path(p).name for p in manifest(out)["dataset"]["images"]] == [p.name for p in images]


@pytest.mark.parametrize("trust", [False, True])
def test_pickle_needing_torchvision_says_how_to_install_it(
    catdog, tmp_path, monkeypatch, capsys, trust
) -> None:
    # On a machine without torchvision (None in sys.modules makes its import fail), a
    # torchvision pickle names the missing package and the pip command, trusted or not.
    from hw5lib.model.tv import import_torchvision

    root, path = catdog
    import_torchvision.cache_clear()
    monkeypatch.setitem(sys.modules, "torchvision", None)
    try:
        flags = ["--trust-pickle"] if trust else []
        code = report(root, tmp_path / "out", "--preset", "catdog", "--checkpoint", path, *flags)
    finally:
        import_torchvision.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "torchvision" in err[0] and "pip install torchvision==0.28.0" in err[0]


def test_seed_001_architecture_runs_every_stage_at_its_report_layers(tmp_path) -> None:
    """A student's own HW3 net (seed report 001: two convs per block, Dropout2d, Linear(32768,
    1024), BatchNorm1d) through --model at full size, with the conv layers its report picked.
    38M parameters at 128 x 128: every stage runs, on two photos and at the smallest settings."""
    from hw5lib.config import RunConfig
    from hw5lib.run.pipeline import run_report
    from tests.photos import write_real_food11

    root = write_real_food11(tmp_path / "food")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = Seed001Classifier()
    ckpt = tmp_path / "model.pth"
    torch.save({"model_state_dict": model.state_dict()}, ckpt)
    cfg = RunConfig(
        data=root,
        out=tmp_path / "out",
        checkpoint=ckpt,
        model=f"{Path(__file__).with_name('zoo.py')}:Seed001Classifier",  # as --model
        classes="food11",
        filter_layers=("3", "11", "19", "27"),  # as --filter-layers 3,11,19,27
        per_class=0,
        images=(root / "training" / "0_0.jpg", root / "training" / "7_0.png"),
        eval_limit=11,
        adaptive=False,
        trust=False,
        lime_samples=20,
        smooth_samples=2,
        ig_steps=4,
        filter_steps=2,
        filters_per_layer=1,
        activation_images=1,
        dream_images=1,
        dream_layer="3",  # the report's first layer: a middle one costs ~30 s more here
    )
    man, _ = run_report(cfg, progress=False)
    out = cfg.out
    assert not man["failures"] and not man["cuts"]
    filt = next(f for f in man["figures"] if f["id"] == "q2_filters")
    assert filt["params"]["layers"] == ["cnn.3", "cnn.11", "cnn.19", "cnn.27"]
    expected = {"q1_saliency", "q2_filters", "q3_lime", "q3_confusion", "q4_smoothgrad"}
    expected |= {"q4_grad_x_input", "q4_integrated_gradients", "q4_grad_cam", "q4_layercam"}
    expected |= {"q4_feature_maps", "q4_deepdream"} | {f"q2_activations_cnn_{i}" for i in (3, 27)}
    assert expected <= written_figures(out)
    assert load(out, "q1_saliency.npz")["input"].shape == (2, 3, 128, 128)
    assert man["model"]["input"] == [3, 128, 128]


def test_a_students_own_model_py_loads_their_checkpoints(tmp_path) -> None:
    """``bash hw5.sh`` unchanged, with model.py's Classifier replaced by the student's own (seed
    001's, which takes no arguments): a state_dict and a whole ``__main__.Classifier`` pickle
    both load, weights-only, at the report's layer indices."""
    repo = tmp_path / "repo"
    here = Path(__file__).resolve().parent.parent
    shutil.copytree(here / "hw5lib", repo / "hw5lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(here / "hw5.py", repo / "hw5.py")
    source = inspect.getsource(Seed001Classifier).replace("Seed001Classifier", "Classifier")
    (repo / "model.py").write_text("from torch import Tensor, nn\n\n\n" + source)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        model = Seed001Classifier().eval()
    torch.save(model.state_dict(), tmp_path / "state.pth")
    save_as(tmp_path / "model.pkl", model, {Seed001Classifier: "__main__.Classifier"})
    for name in ("state.pth", "model.pkl"):
        done = subprocess.run(
            [sys.executable, repo / "hw5.py", "layers", "--checkpoint", tmp_path / name],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        rows = {line.split()[0]: line.split()[2] for line in done.stdout.splitlines()[1:]}
        assert [rows[f"cnn.{i}"] for i in (3, 11, 19, 27)] == ["Conv2d"] * 4
        assert rows["fc.1"] == "BatchNorm1d"
