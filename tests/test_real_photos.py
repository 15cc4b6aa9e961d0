"""Real photographs and real mistakes: every case ends with the right exit status and one clear
line, a user's own file in the output folder untouched, and (where the run got going) a
manifest.json that is valid JSON describing exactly the files on disk."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pypdf import PdfReader

from hw5lib import cli
from hw5lib.methods import attributions
from model import Classifier
from tests.photos import BAD, TRUNCATED, write_real_food11

REPO = Path(__file__).resolve().parent.parent
TINY = {"widths": (4, 8, 8, 8, 8), "hidden": (16, 16)}
SMALL = 32  # input side of most cases here; HW3's 128 where the case needs it
FAST = ["--size", str(SMALL), "--lime-samples", "40", "--filter-steps", "5", "--smooth-samples", "4",
        "--ig-steps", "4", "--filter-layers", "2,10", "--quiet", "--device", "cpu"]  # fmt: skip
USER_FILE, USER_TEXT = "notes.txt", "my own notes, not hw5's\n"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_real_food11(tmp_path_factory.mktemp("real") / "food")


def tiny_checkpoint(path: Path, *, fill: float | None = None, side: int = SMALL) -> Path:
    """A random-weight HW3 Classifier of tiny widths (or every weight ``fill``), as a state_dict."""
    torch.manual_seed(0)
    model = Classifier(**TINY, input_size=side)
    if fill is not None:
        for p in model.parameters():
            p.data.fill_(fill)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "random.pt")


def out_with_user_file(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / USER_FILE).write_text(USER_TEXT)
    return out


def report(data: Path, out: Path, ckpt: Path, *flags: str) -> int:
    return cli.main(["report", str(data), str(out), "--checkpoint", str(ckpt), *FAST, *flags])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_matches_disk(out: Path) -> dict:
    """manifest.json is strict JSON, and its outputs are exactly hw5's files, hashes equal."""
    text = (out / "manifest.json").read_text()
    man = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in manifest.json"))
    ours = {p.name for p in out.iterdir()} - {USER_FILE, "manifest.json", "report.pdf",
                                              "timings.json"}  # fmt: skip
    assert set(man["outputs"]) == ours
    for name, digest in man["outputs"].items():
        assert sha256(out / name) == digest, name
    return man


def captions(man: dict) -> str:
    return " ".join(f["caption"] for f in man["figures"])


# ---------------------------------------------------------------- runs that complete


def test_real_photos_in_mixed_modes_with_bad_files_complete(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # HW3's 128x128 input: there the course SLIC gives the grass photo a single superpixel.
    ckpt = tiny_checkpoint(tmp_path / "random128.pt", side=128)
    out = out_with_user_file(tmp_path)
    code = report(photos, out, ckpt, "--size", "128", "--mean", "0.5", "--std", "0.5")
    err = capsys.readouterr().err
    assert code == 0, err
    assert (out / USER_FILE).read_text() == USER_TEXT
    man = manifest_matches_disk(out)
    skipped = {s["file"]: s["reason"] for s in man["skipped_images"]}
    assert skipped == {
        f"validation/{TRUNCATED}": "truncated",
        **{f"validation/{n}": "empty file" if not b else "not an image" for n, b in BAD.items()},
    }
    warning = [line for line in err.splitlines() if "skipped 3 unreadable images" in line]
    assert len(warning) == 1
    # The truncated first image of class 5 gave way to the next readable one of its class.
    names = [Path(p).name for p in man["dataset"]["images"]]
    assert "5_1.jpg" in names and TRUNCATED not in names and len(names) == 11
    # Grass: the course SLIC gives one superpixel; the caption names the segmentation used.
    lime = next(f for f in man["figures"] if f["id"] == "q3_lime")
    assert "4_0.jpg" in lime["params"]["segmentation"]
    assert "fallback" in lime["caption"]
    assert not re.search(r"\b(nan|inf)\b", captions(man))
    assert len(PdfReader(out / "report.pdf").pages) > 5
    # the input check sampled the validation split: its unreadable files are named as such
    # (it stops once no convention could still change the decision: not always at all three)
    assert re.search(r"\(\d unreadable\)", man["input_check"]["note"])
    assert "--budget" not in man["input_check"]["note"]


def test_nan_weights_explain_nothing_and_say_why_without_crashing(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "nan.pt", fill=float("nan"))
    out = out_with_user_file(tmp_path)
    code = report(photos, out, ckpt)
    err = capsys.readouterr().err
    assert code in (0, cli.STAGE_FAILED), err
    assert "Traceback" not in err
    man = manifest_matches_disk(out)
    saliency = next(f for f in man["figures"] if f["id"] == "q1_saliency")
    assert set(saliency["params"]["unexplained"].values()) == {attributions.NOT_FINITE}
    assert len(saliency["params"]["unexplained"]) == len(man["dataset"]["images"])
    assert "could not be explained" in saliency["caption"]
    assert not re.search(r"\b(nan|inf)\b", captions(man) + man["trust"]["notes"])  # as printed
    assert man["non_finite"]  # the nulls say where a NaN was
    assert (out / "report.pdf").is_file()


# ---------------------------------------------------------------- user mistakes: exit 2, one line


def no_cuda() -> bool:
    return not torch.cuda.is_available()


MISTAKES = {  # case -> (flags or replacement arguments, words the one line must hold)
    "no such data folder": (["DATA=/nonexistent/food"], ["/nonexistent/food", "does not exist"]),
    "text file as checkpoint": (["CKPT=text"], ["not a PyTorch checkpoint", "text"]),
    "size 0": (["--size", "0"], ["--size must be positive"]),
    "negative budget": (["--budget", "-1"], ["--budget must be positive"]),
    "budget too small for any figure": (["--budget", "1"], ["--budget 1 s", "no time"]),
    "unknown device": (["--device", "tpu"], ["--device must be"]),
    "split of unreadable files": (["DATA=bad"], ["nothing to explain", "unreadable"]),
}
if no_cuda():
    MISTAKES["cuda without a GPU"] = (["--device", "cuda"], ["--device cuda", "no CUDA GPU"])


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_user_mistake_is_one_line_and_exit_2_and_touches_nothing(
    case: str,
    photos: Path,
    random_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags, words = MISTAKES[case]
    data, ckpt, rest = photos, random_ckpt, []
    for flag in flags:
        if flag.startswith("DATA="):
            data = Path(flag[5:])
            if flag == "DATA=bad":
                data = tmp_path / "bad"
                data.mkdir()
                for name, content in BAD.items():
                    (data / name).write_bytes(content)
        elif flag.startswith("CKPT="):
            ckpt = tmp_path / "model.pth"
            ckpt.write_text("these are my lecture notes, not a model\n")
        else:
            rest.append(flag)
    out = out_with_user_file(tmp_path)
    code = report(data, out, ckpt, *rest)
    err = capsys.readouterr().err.strip()
    assert code == 2
    lines = [line for line in err.splitlines() if not line.startswith("hw5: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("hw5: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert (out / USER_FILE).read_text() == USER_TEXT


# ---------------------------------------------------------------- interrupted, then rerun


def hw5_sh(data: Path, out: Path, ckpt: Path) -> subprocess.Popen:
    """bash hw5.sh as a student runs it (--budget 540), light settings; no trust table, which
    writes no file of its own."""
    env = {**os.environ, "HW5_CHECKPOINT": str(ckpt), "PYTHON": sys.executable}
    return subprocess.Popen(
        ["bash", str(REPO / "hw5.sh"), str(data), str(out), *FAST, "--lime-samples", "200",
         "--no-trust"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a background job (CI under nohup, `cmd &`) inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def figure_hashes(out: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(out.iterdir()) if p.suffix in (".png", ".npz")}


@pytest.fixture(scope="module")
def uninterrupted(photos: Path, random_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """The figures of a run that nothing stopped."""
    out = tmp_path_factory.mktemp("whole") / "out"
    done = hw5_sh(photos, out, random_ckpt)
    assert done.wait(timeout=300) == 0, done.stderr.read() if done.stderr else ""
    return figure_hashes(out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_leaves_a_true_manifest_and_a_rerun_gives_the_same_figures(
    sig: signal.Signals,
    photos: Path,
    random_ckpt: Path,
    uninterrupted: dict[str, str],
    tmp_path: Path,
) -> None:
    out = out_with_user_file(tmp_path)
    first = hw5_sh(photos, out, random_ckpt)
    deadline = time.monotonic() + 240
    while not (out / "q2_filters.png").exists():  # halfway: Q1 and Q2 written, LIME under way
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(sig)
    code = first.wait(timeout=120)
    assert code == (130 if sig == signal.SIGINT else 143)
    assert "interrupted" in (first.stderr.read() if first.stderr else "")
    man = manifest_matches_disk(out)
    assert man["interrupted"] and figure_hashes(out) != uninterrupted
    assert not list(out.glob(".*.tmp"))  # nothing half-written under a temporary name

    again = hw5_sh(photos, out, random_ckpt)
    assert again.wait(timeout=300) == 0
    assert figure_hashes(out) == uninterrupted
    assert manifest_matches_disk(out)["interrupted"] is None
    assert (out / USER_FILE).read_text() == USER_TEXT


def test_only_our_own_earlier_figures_are_ever_removed(tmp_path: Path) -> None:
    from hw5lib.run.pipeline import previous_outputs, remove_stale

    out = out_with_user_file(tmp_path)
    for name in ("q1_saliency.png", "q4_deepdream.npz", "thesis.png"):
        (out / name).write_bytes(b"x")
    listed = ["q1_saliency.png", "q4_deepdream.npz", USER_FILE, "../outside.png", "sub/a.png"]
    (out / "manifest.json").write_text(json.dumps({"outputs": dict.fromkeys(listed, "0")}))
    previous = previous_outputs(out)
    assert previous == ["q1_saliency.png", "q4_deepdream.npz"]
    remove_stale(out, previous, {"q1_saliency.png": "0"})  # this run rewrote only Q1
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        USER_FILE,
        "q1_saliency.png",
        "thesis.png",
    ]
