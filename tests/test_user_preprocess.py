"""--preprocess file.py:function: the student's own reading (cv2 INTER_CUBIC + GaussianBlur +
their own BGR mean/std here) is the model's input exactly, for the explained images and the
confusion matrix alike; figures get [0,1] pixels in display order; an image it raises on is
skipped with its error, a result of the wrong shape is one line; the manifest names the file
by name and sha256, never where it lies."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hw5lib import arguments, cli
from hw5lib.errors import UserError
from hw5lib.inputs.datasets import open_dataset
from hw5lib.inputs.images import as_chw, load_usable
from hw5lib.inputs.sample import SampleInfo
from hw5lib.inputs.user_preprocess import MINMAX, import_reader, with_reader
from hw5lib.model.preprocess import Preprocess
from hw5lib.run.subject import prepare

# What a student's training script read with: cv2 (BGR), cubic up, blur, area down, own stats.
STUDENT = textwrap.dedent(
    """
    import os
    import cv2
    import numpy as np
    import torch

    MEAN = np.array([0.40, 0.45, 0.50], dtype=np.float32)  # their data set's, in BGR order
    STD = np.array([0.25, 0.24, 0.26], dtype=np.float32)

    def read(path):
        img = cv2.imread(path)
        if img is None:
            raise ValueError("cv2 could not read " + path)
        img = cv2.resize(img, (64, 64), interpolation=cv2.INTER_CUBIC)
        img = cv2.GaussianBlur(img, (5, 5), 0)
        img = cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA)
        return (img.astype(np.float32) / 255 - MEAN) / STD

    def read_rgb_tensor(path):
        return torch.from_numpy(read(path)[:, :, ::-1].copy()).permute(2, 0, 1)

    def picky(path):
        if os.path.basename(path).startswith("3_"):
            raise RuntimeError("class 3 is not mine")
        return read(path)

    def two_channels(path):
        return read(path)[:, :, :2]

    def growing(path):
        side = 32 if os.path.basename(path).startswith("0_") else 40
        return np.zeros((side, side, 3), dtype=np.float32)
    """
)
FAST = ["--lime-samples", "40", "--filter-steps", "5", "--smooth-samples", "4", "--ig-steps",
        "4", "--per-class", "1", "--no-trust", "--filter-layers", "2", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("student") / "prep.py"
    path.write_text(STUDENT)
    return path


def config(sample: SampleInfo, checkpoint: Path, out: Path, spec: str, *extra: str):
    argv = ["report", str(sample.root), str(out), "--checkpoint", str(checkpoint)]
    return arguments.report_config(arguments.parse_args([*argv, "--preprocess", spec, *extra]))


def test_the_model_input_is_exactly_what_the_function_returns(
    student: Path, small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = prepare(config(small_sample, tiny_checkpoint, tmp_path / "o", f"{student}:read"))
    read = import_reader(f"{student}:read").function
    expected = torch.stack(
        [torch.from_numpy(read(str(p))).permute(2, 0, 1) for p in run.subject.paths]
    )
    assert torch.equal(run.subject.x.cpu(), expected)  # bit for bit: no candidate's pixels
    # shown as pixels: cv2's BGR found from the colours, min-max over the explained images
    assert run.pre.channel_order == "bgr" and run.pre.function is not None
    assert run.pre.function.display == f"{MINMAX}; channel order bgr"
    assert run.subject.pixels.min() == pytest.approx(0, abs=1e-4)
    assert run.subject.pixels.max() == pytest.approx(1, abs=1e-4)
    back = run.pre.normalize(torch.from_numpy(run.subject.pixels).permute(0, 3, 1, 2))
    torch.testing.assert_close(back, expected, atol=1e-4, rtol=1e-4)  # LIME's way back
    # the input check scores the function, adopts nothing
    check = run.input_check
    assert check is not None and check.checked and len(check.scores) == 1
    assert check.source == "flags" and "--preprocess prep.py:read as given" in check.note


def test_a_chw_tensor_in_rgb_is_taken_as_such(
    student: Path, small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = config(small_sample, tiny_checkpoint, tmp_path / "o", f"{student}:read_rgb_tensor")
    run = prepare(cfg)
    read = import_reader(f"{student}:read_rgb_tensor").function
    assert torch.equal(run.subject.x.cpu(), torch.stack([read(str(p)) for p in run.subject.paths]))
    assert run.pre.channel_order == "rgb"


def test_given_mean_and_std_say_how_it_is_shown(
    student: Path, small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    extra = ("--mean", "0.4,0.45,0.5", "--std", "0.25,0.24,0.26", "--channel-order", "bgr")
    run = prepare(config(small_sample, tiny_checkpoint, tmp_path / "o", f"{student}:read", *extra))
    assert run.pre.mean == (0.4, 0.45, 0.5) and run.pre.function is not None
    assert run.pre.function.display.startswith("--mean/--std")
    # their inputs came from 8-bit pixels: shown back, they are those pixels (blurred, resized)
    levels = run.subject.pixels * 255
    assert np.abs(levels - levels.round()).max() < 1e-3


def test_an_image_the_function_raises_on_costs_that_image(
    student: Path, small_sample: SampleInfo
) -> None:
    split = open_dataset(small_sample.root)
    pre = with_reader(Preprocess(), import_reader(f"{student}:picky"), split.paths)
    loaded = load_usable(split.paths, pre)
    mine = [p for p in split.paths if p.name.startswith("3_")]
    assert mine and [s.path for s in loaded.skipped] == mine
    assert loaded.skipped[0].reason == "picky raised RuntimeError: class 3 is not mine"
    assert len(loaded.paths) == len(split.paths) - len(mine) and loaded.x.shape[1:] == (3, 32, 32)


def test_a_result_of_the_wrong_shape_is_one_line(
    student: Path, small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    argv = ["report", str(small_sample.root), str(tmp_path / "o"), "--checkpoint"]
    spec = f"{student}:two_channels"
    assert cli.main([*argv, str(tiny_checkpoint), "--preprocess", spec, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("hw5: error: --preprocess prep.py:two_channels returned (32, 32, 2)")
    split = open_dataset(small_sample.root)
    pre = with_reader(Preprocess(), import_reader(f"{student}:growing"), split.paths)
    with pytest.raises(UserError, match="returned \\(40, 40, 3\\)"):
        load_usable(split.paths, pre)


def test_report_records_the_function_by_name_and_hash_and_runs_every_stage(
    student: Path, small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ["report", str(small_sample.root), str(out), "--checkpoint", str(tiny_checkpoint)]
    assert cli.main([*argv, "--preprocess", f"{student}:read", "--quiet", *FAST]) == 0
    text = (out / "manifest.json").read_text()
    man = json.loads(text)
    function = man["preprocess"]["function"]
    assert function["file"] == "prep.py" and function["name"] == "read"
    assert function["sha256"] == hashlib.sha256(student.read_bytes()).hexdigest()
    assert man["parameters"]["preprocess"] == "prep.py:read"
    assert "--preprocess prep.py:read" in man["run"]["command"]
    assert str(student.parent) not in text and str(tmp_path) not in text
    assert man["accuracy"] is not None and not man["failures"]  # the confusion matrix read too
    assert (out / "q3_lime.png").is_file() and (out / "report.pdf").is_file()


def test_function_results_are_read_in_their_layout() -> None:
    hwc = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    assert torch.equal(as_chw(hwc, 3), torch.from_numpy(hwc).permute(2, 0, 1).float())
    chw = torch.rand(3, 4, 5)
    assert torch.equal(as_chw(chw, 3), chw) and torch.equal(as_chw(chw[None], 3), chw)
    assert as_chw(np.zeros((4, 5)), 1).shape == (1, 4, 5)
    assert as_chw(np.zeros((4, 5)), 3) is None and as_chw("not an image", 3) is None
    assert as_chw(torch.rand(4, 5, 3), 3).shape == (3, 4, 5)  # only HWC fits 3 channels


@pytest.mark.parametrize(
    ("spec", "message"),
    [("prep.py", "must look like path/to/file.py:function"), (":read", "must look like")],
)
def test_a_malformed_spec_is_one_line(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        import_reader(spec)


def test_a_missing_function_is_named(student: Path) -> None:
    with pytest.raises(UserError, match=r"prep\.py defines no function named 'nothing'"):
        import_reader(f"{student}:nothing")
