"""Every student's own setup, end to end: their class, their checkpoint file, their data, and only
the flags the README tells them to pass, through ``hw5.py report``: exit 0, no traceback, every
figure written, and the report explains *their* model as their code computes it.

The setups are built by ``tests/students.py`` (one subprocess runs every training script as
``__main__``). Each report runs in-process (``cli.main``: the same code as ``hw5.py report``,
without a 4 s import per case) on the cheapest method settings that still write every figure;
one setup runs as a student runs it, ``bash hw5.sh`` with ``HW5_CHECKPOINT`` and the default
budget, in a subprocess started when the module starts so that it overlaps the others.
"""

from __future__ import annotations

import json
import os
import pickletools
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hw5lib import cli
from tests import students
from tests.students import (
    FER2013_CSV,
    LABEL_FEATURE_CSV,
    LOGITS,
    PHOTOS,
    SIGMOID,
    SOFTMAX,
    Student,
)

REPO = Path(__file__).resolve().parent.parent
# The cheapest settings that still write every figure (method caps, not stages, are cut).
FAST = ["--lime-samples", "30", "--filter-steps", "3", "--smooth-samples", "3",
        "--ig-steps", "4", "--filters-per-layer", "1", "--no-trust", "--device", "cpu"]  # fmt: skip
# Every figure of the report; q2_activations_<layer> comes once per Q2 layer.
FIGURES = {
    "q1_saliency", "q2_filters", "q3_lime", "q3_confusion", "q3_examples", "q4_smoothgrad",
    "q4_grad_x_input", "q4_integrated_gradients", "q4_shap", "q4_grad_cam", "q4_layercam",
    "q4_feature_maps", "q4_deepdream", "appendix_convergence",
}  # fmt: skip
FER_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
SHELL_CASE = "six_conv_rrelu_main_pickle"  # a non-course architecture, no flags: bash hw5.sh
RUN_TIMEOUT_S = 300


# ---------------------------------------------------------------- fixtures: built once


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Student]:
    return students.build_students(tmp_path_factory.mktemp("students"))


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("student_data")
    return {
        PHOTOS: students.write_food_photos(root / "food-11"),
        FER2013_CSV: students.write_fer2013_csv(root / "fer" / "fer2013.csv"),
        LABEL_FEATURE_CSV: students.write_label_feature_csv(root / "hw3_2019" / "train.csv"),
    }


@pytest.fixture(scope="module")
def shell_run(
    zoo: dict[str, Student], datasets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``bash hw5.sh DATA OUT`` with HW5_CHECKPOINT, as the assignment runs it (hw5.sh's own
    --budget 540), started at once; the test waits for it."""
    student = zoo[SHELL_CASE]
    out = tmp_path_factory.mktemp("shell") / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW5_")}
    env |= {
        "HW5_CHECKPOINT": str(student.checkpoint),
        "HW5_CHECKPOINT_CACHE": str(out.parent / "cache"),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    args = ["bash", "hw5.sh", str(datasets[student.data]), str(out), *student.cli_flags(), *FAST]
    # stderr to a file: progress bars in a pipe nobody reads yet would stall the run
    with open(out.parent / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
        )
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module", autouse=True)
def _start_shell_run_first(request: pytest.FixtureRequest) -> None:
    """Start the subprocess run before the in-process ones when its test is selected."""
    if any(
        "shell_run" in getattr(item, "fixturenames", ())
        for item in request.session.items
        if item.module is request.module
    ):
        request.getfixturevalue("shell_run")


# ---------------------------------------------------------------- what every run must show


def built(student: Student) -> Student:
    if student.build_error:
        pytest.fail(f"the student's training script failed: {student.build_error}")
    return student


def report_in_process(
    student: Student, data: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """``hw5.py report DATA OUT --checkpoint F [the student's flags]``; an exception escaping
    cli.main is what a user sees as a traceback: the test fails with its first line."""
    argv = ["report", str(data), str(out), "--checkpoint", str(student.checkpoint)]
    try:
        code = cli.main([*argv, *student.cli_flags(), *FAST, "--quiet"])
    except Exception as err:  # the traceback a student would see
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        pytest.fail(f"traceback: {type(err).__name__}: {first}")
    return code, capsys.readouterr().err


def assert_complete(code: int, stderr: str, out: Path) -> dict:
    """Exit 0, no traceback, no failed stage, and every figure of the report: the figures the
    manifest lists are exactly the PNGs on disk."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("hw5: error")]
    assert code == 0, errors[0] if errors else stderr[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    assert man["failures"] == []
    ids = {f["id"] for f in man["figures"]}
    assert {f["png"] for f in man["figures"]} == {p.name for p in out.glob("*.png")}
    layers = next(f for f in man["figures"] if f["id"] == "q2_filters")["params"]["layers"]
    assert len(layers) >= 1
    activations = {f"q2_activations_{layer.replace('.', '_')}" for layer in layers}
    assert ids == FIGURES | activations, sorted(ids ^ (FIGURES | activations))
    assert (out / "report.pdf").stat().st_size > 0
    return man


def own_outputs(student: Student, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return students.rebuild(student)(x)


def assert_explains_the_students_model(student: Student, man: dict, out: Path) -> None:
    """The run explained the model the student's script saved, at the side it was trained at,
    and reports its probabilities as the model gives them: a softmax of logits, or the model's
    own Sigmoid/Softmax outputs (never a softmax of those)."""
    assert man["model"]["input"] == [student.channels, student.side, student.side]
    with np.load(out / "q1_saliency.npz") as z:
        x = torch.from_numpy(z["input"])
    assert tuple(x.shape[1:]) == (student.channels, student.side, student.side)
    y = own_outputs(student, x)
    prob = y.softmax(1) if student.head == LOGITS else y
    confidence = np.array(man["dataset"]["confidence"])
    np.testing.assert_allclose(confidence, prob.max(1).values.numpy(), atol=1e-3)
    top2 = prob.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-3).numpy()  # no near-tie a rounding could flip
    pred = np.array(man["dataset"]["predictions"])
    assert (pred[clear] == prob.argmax(1).numpy()[clear]).all()


def spatial_layers(model: nn.Module, x: torch.Tensor) -> set[str]:
    """Names of the modules whose output is a 4-D feature map, by a forward with hooks."""
    found: set[str] = set()
    handles = [
        m.register_forward_hook(
            lambda _m, _i, o, name=name: (
                found.add(name) if torch.is_tensor(o) and o.ndim == 4 else None
            )
        )
        for name, m in model.named_modules()
        if name
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def assert_default_layers_are_feature_maps(student: Student, man: dict) -> None:
    """Q2, the CAMs, the feature-map grid and DeepDream picked layers with spatial outputs."""
    x = torch.rand(2, student.channels, student.side, student.side)
    spatial = spatial_layers(students.rebuild(student), x)
    named = []
    for f in man["figures"]:
        named += f["params"].get("layers") or []
        named += [f["params"]["layer"]] if f["params"].get("layer") else []
    assert named and set(named) <= spatial, sorted(set(named) - spatial)


# ---------------------------------------------------------------- what each case adds


def check_data_parallel_net_dict(man: dict, out: Path) -> None:
    """The manifest names the container key used and the DataParallel prefix stripped."""
    record = json.dumps([man["model"], man["checkpoint"]])
    assert '"net"' in record and "module." in record, record


def check_fer_training_dict_sigmoid(man: dict, out: Path) -> None:
    """The Sigmoid's own outputs, not a softmax of them (which stays below e / (e + 6))."""
    assert tuple(man["model"]["classes"]) == FER_CLASSES
    assert max(man["dataset"]["confidence"]) > np.e / (np.e + 6)


def check_vgg_factory_function(man: dict, out: Path) -> None:
    assert "get_vgg_model" in json.dumps(man["model"]["architecture"])


def check_torchvision_resnet18_state_dict(man: dict, out: Path) -> None:
    """The CAMs sit on the last spatial block of a torchvision ResNet."""
    cam = next(f for f in man["figures"] if f["id"] == "q4_grad_cam")
    assert cam["params"]["layer"].startswith("layer4"), cam["params"]["layer"]


def check_label_feature_csv_2019(man: dict, out: Path) -> None:
    assert tuple(man["model"]["classes"]) == FER_CLASSES
    assert all(p.startswith("train.csv#") for p in man["dataset"]["images"])
    assert man["dataset"]["targets"] == [0, 3, 5]


def check_softmax_head_state_dict(man: dict, out: Path) -> None:
    """The Softmax's own outputs, not a softmax of them (which stays below e / (e + 10))."""
    assert max(man["dataset"]["confidence"]) > np.e / (np.e + 10)


CASE_CHECKS = {
    "data_parallel_net_dict": check_data_parallel_net_dict,
    "fer_training_dict_sigmoid": check_fer_training_dict_sigmoid,
    "vgg_factory_function": check_vgg_factory_function,
    "torchvision_resnet18_state_dict": check_torchvision_resnet18_state_dict,
    "label_feature_csv_2019": check_label_feature_csv_2019,
    "softmax_head_state_dict": check_softmax_head_state_dict,
}
IN_PROCESS = [s.student.case for s in students.specs(Path("."))]
IN_PROCESS.remove(SHELL_CASE)


# ---------------------------------------------------------------- the tests


def test_students_files_are_saved_as_their_scripts_save_them(zoo: dict[str, Student]) -> None:
    """The builders are honest: a whole pickle names the script's ``__main__`` class, a GPU
    run's storages say cuda:0, the legacy format is not a zip archive."""
    for s in zoo.values():
        if s.build_error:
            continue  # its own test fails, naming the error
        assert s.checkpoint.is_file(), s.case
        is_zip = zipfile.is_zipfile(s.checkpoint)
        assert is_zip != s.legacy, s.case
        if is_zip:
            with zipfile.ZipFile(s.checkpoint) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        else:
            data = s.checkpoint.read_bytes()
        assert (b"cuda:0" in data) == s.gpu, s.case
        if s.pickled_class:
            module, _, name = s.pickled_class.rpartition(".")
            strings = {str(arg) for _, arg, _ in pickletools.genops(data) if arg is not None}
            # GLOBAL "module name" (protocol 2), or the two strings of STACK_GLOBAL
            assert f"{module} {name}" in strings or {module, name} <= strings, s.case


@pytest.mark.parametrize("case", IN_PROCESS)
def test_a_students_own_setup_writes_every_figure(
    case: str,
    zoo: dict[str, Student],
    datasets: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    student = built(zoo[case])
    out = tmp_path / "out"
    code, err = report_in_process(student, datasets[student.data], out, capsys)
    man = assert_complete(code, err, out)
    assert_explains_the_students_model(student, man, out)
    assert_default_layers_are_feature_maps(student, man)
    if case in CASE_CHECKS:
        CASE_CHECKS[case](man, out)


def test_hw5_sh_explains_a_non_course_architecture_with_no_flags(
    shell_run: tuple[subprocess.Popen, Path], zoo: dict[str, Student]
) -> None:
    """bash hw5.sh on the real-photo folder, HW5_CHECKPOINT a pickled six-conv RReLU net."""
    proc, out = shell_run
    student = built(zoo[SHELL_CASE])
    code = proc.wait(timeout=RUN_TIMEOUT_S)
    man = assert_complete(code, (out.parent / "stderr.txt").read_text(), out)
    assert man["budget"] == {"seconds": 540}
    assert_explains_the_students_model(student, man, out)
    assert_default_layers_are_feature_maps(student, man)


def test_grayscale_inputs_are_laid_out_as_a_students_own_tensors(
    datasets: dict[str, Path],
) -> None:
    """A 1-channel batch built by permuting (N, H, W, 1) pixels has strides that also read as
    channels_last; a conv then returns channels_last maps and the student's ``x.view(N, -1)``
    raises, with no memory-format change anywhere. The loaded inputs must have the plain
    layout ToTensor gives, so their convs' outputs are contiguous."""
    from hw5lib.inputs.images import load_inputs
    from hw5lib.model.preprocess import Preprocess

    paths = sorted((datasets[PHOTOS] / "validation").iterdir())[:2]
    x = load_inputs(paths, Preprocess(size=(48, 48), channels=1))
    assert x.stride() == torch.empty(2, 1, 48, 48).stride()
    y = nn.Conv2d(1, 4, 3).eval()(x)
    assert y.view(len(y), -1).shape == (2, 4 * 46 * 46)


def test_every_case_has_a_student(zoo: dict[str, Student]) -> None:
    assert {*IN_PROCESS, SHELL_CASE} == set(zoo)
    assert {s.head for s in zoo.values()} == {LOGITS, SIGMOID, SOFTMAX}
