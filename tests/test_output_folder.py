"""The output folder and the labels of one run: a folder that cannot be written is one line
before the model loads; two runs writing one folder at once cannot happen (a lock names the
run holding it, and a dead run's lock is taken over); files whose label names no class of
the model are named in a warning and counted as unlabelled everywhere."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader

from hw5lib.cli import main
from hw5lib.errors import UserError
from hw5lib.inputs.datasets import has_class, open_dataset, out_of_range, within_classes
from hw5lib.report import outputs
from hw5lib.report.outputs import LOCK_NAME, output_folder

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--lime-samples", "30", "--filter-steps", "3", "--smooth-samples", "3", "--ig-steps", "4"]
FAST += ["--quiet", "--filters-per-layer", "2", "--no-trust"]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hw5: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_an_output_folder_under_a_file_is_one_line_before_the_model_loads(
    small_sample, tmp_path, capsys
) -> None:
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    missing = tmp_path / "no_such_checkpoint.pt"  # loading it would be another error
    for out in (blocker / "out", blocker):
        assert main(["report", str(small_sample.root), str(out), "--checkpoint", str(missing)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line == (
            f"hw5: error: cannot write the output folder {out}: {blocker} is a file, not a "
            "folder; give a folder you can write to"
        )
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("fail", "reason"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
        (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
    ],
)
def test_an_output_folder_that_cannot_be_written_is_one_line_before_the_model_loads(
    small_sample, tmp_path, capsys, monkeypatch, fail: OSError, reason: str
) -> None:
    # root may write anywhere, so the refusal a student's account gets is simulated where the
    # first file would be created in the folder
    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise fail

    monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
    out = tmp_path / "out"
    missing = tmp_path / "no_such_checkpoint.pt"
    assert main(["report", str(small_sample.root), str(out), "--checkpoint", str(missing)]) == 2
    line = one_error_line(capsys.readouterr().err)
    said = f"cannot write the output folder {out}: {reason}; give a folder you can write to"
    assert line == f"hw5: error: {said}"


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hw5lib.report.outputs import output_folder
    with output_folder(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(120)
    """
)


def hold_lock(out: Path) -> subprocess.Popen:
    """Another process holding ``out`` as a run does, until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_second_run_on_a_folder_being_written_stops_at_once_naming_the_first(
    small_sample, tiny_checkpoint, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    first = hold_lock(out)
    try:
        args = ["report", str(small_sample.root), str(out), "--checkpoint", str(tiny_checkpoint)]
        assert main([*args, *FAST]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line == (
            f"hw5: error: another run (pid {first.pid}) is writing to the output folder {out}; "
            "wait for it to finish or give another folder"
        )
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of it written
    finally:
        first.kill()
        first.wait()
    # the killed run never released its lock: its file is left, and the next run takes over
    assert (out / LOCK_NAME).read_text() == f"{first.pid}\n"
    assert main([*args, *FAST]) == 0
    assert (out / "manifest.json").is_file() and not (out / LOCK_NAME).exists()


def test_the_lock_holds_this_runs_pid_and_goes_on_ctrl_c_and_sigterm(tmp_path) -> None:
    out = tmp_path / "out"
    for stop in (KeyboardInterrupt, UserError, SystemExit):
        with pytest.raises(stop), output_folder(out):
            assert (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"
            with (
                pytest.raises(UserError, match=rf"another run \(pid {os.getpid()}\)"),
                output_folder(out),
            ):
                pass
            raise stop()
        assert not (out / LOCK_NAME).exists()
    # a real SIGTERM to a holding process: the CLI turns it into an exception, so finally runs
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal; from hw5lib.cli import raise_terminated; "
            "signal.signal(signal.SIGTERM, raise_terminated)" + HOLD,
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert not (out / LOCK_NAME).exists()
    with output_folder(out):  # free again
        pass


def test_a_label_outside_the_classes_is_named_and_counted_as_unlabelled(
    small_sample, tiny_checkpoint, tmp_path, capsys
) -> None:
    data = tmp_path / "food"
    shutil.copytree(small_sample.root, data)
    stray = data / "validation" / "15_3.jpg"  # Food-11 has classes 0..10
    shutil.copy(data / "validation" / "3_0.jpg", stray)
    out = tmp_path / "out"
    args = ["report", str(data), str(out), "--checkpoint", str(tiny_checkpoint)]
    assert main([*args, "--images", str(stray), *FAST]) == 0
    err = capsys.readouterr().err
    warning = (
        "hw5: warning: 1 file with a label outside the model's 11 classes (0..10): 15_3.jpg "
        "(label 15); treated as unlabelled: left out of the input check, the confusion matrix "
        "and the accuracy, and explained (where picked) against the model's prediction"
    )
    assert warning in err.splitlines()
    man = json.loads((out / "manifest.json").read_text())
    assert man["dataset"]["labels_out_of_range"]["count"] == 1
    assert man["dataset"]["labels_out_of_range"]["files"] == [
        {"file": "validation/15_3.jpg", "label": 15}
    ]
    # explained once, as given with --images, against the prediction
    images = man["dataset"]["images"]
    assert images.count("validation/15_3.jpg") == 1 and images[-1] == "validation/15_3.jpg"
    assert man["dataset"]["targets"][-1] == man["dataset"]["predictions"][-1]
    # the confusion matrix scores every other validation image and not this one
    labelled = [p for p in (data / "validation").glob("*.jpg") if p != stray]
    assert man["accuracy"]["evaluated"] == len(labelled)
    with np.load(out / "q3_confusion.npz") as z:
        assert z["labels"].max() < 11 and len(z["labels"]) == len(labelled)
    title = re.sub(r"\s+", " ", PdfReader(out / "report.pdf").pages[0].extract_text())
    assert "labels out of range validation/15_3.jpg (15): treated as unlabelled" in title


def test_labels_outside_the_classes_become_none_for_every_use(tmp_path) -> None:
    """The input check, the per-class picks and the confusion matrix all read the split
    through within_classes: a CSV label of -1 or 7 (of 7 classes) is no class."""
    path = tmp_path / "train.csv"
    rows = [f"{label}," + " ".join(["9"] * 16) for label in (0, -1, 6, 7, 3)]
    path.write_text("label,feature\n" + "\n".join(rows) + "\n")
    split = open_dataset(path)
    assert [(p.name, lb) for p, lb in out_of_range(split, 7)] == [
        ("train.csv#1", -1),
        ("train.csv#3", 7),
    ]
    assert within_classes(split, 7).labels == (0, None, 6, None, 3)
    assert [has_class(lb, 7) for lb in (None, -1, 0, 6, 7)] == [False, False, True, True, False]
