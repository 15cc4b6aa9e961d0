"""hw5.py verify: a rerun on another thread count reproduces; a changed or missing figure and a
bad folder are caught and named.

Small reports (the tiny 32x32 checkpoint of conftest.py, the cheapest settings) run in-process
through ``cli.main``: with ``--threads 1``, with ``--threads 2`` on a copy of the data and
checkpoint in another folder, and with ``--threads 1`` on that copy; each tampering test works on
its own copy of the second.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hw5lib import cli, tolerances, verify
from hw5lib.inputs.sample import SampleInfo
from hw5lib.stages.registry import verify_rules

FAST = ["--lime-samples", "40", "--filter-steps", "5", "--smooth-samples", "4",
        "--ig-steps", "4", "--per-class", "1", "--filter-layers", "2", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    """The same command three times: on 1 thread, on 2 threads with the data and checkpoint
    copied to another folder (a grader's machine), and on 1 thread from that copy."""
    work = tmp_path_factory.mktemp("verify")
    moved = work / "grader" / "home"
    shutil.copytree(small_sample.root, moved / small_sample.root.name)
    shutil.copy(tiny_checkpoint, moved / tiny_checkpoint.name)
    outs = []
    for n, home in ((1, small_sample.root.parent), (2, moved), (1, moved)):
        out = work / f"threads{n}-{len(outs)}"
        args = ["report", str(home / small_sample.root.name), str(out), "--threads", str(n)]
        checkpoint = home / tiny_checkpoint.name if home == moved else tiny_checkpoint
        assert cli.main([*args, "--checkpoint", str(checkpoint), *FAST]) == 0
        outs.append(out)
    return outs[0], outs[1], outs[2]


def test_the_same_data_in_another_folder_gives_the_same_bytes(runs) -> None:
    here, _, there = runs
    for name in ("manifest.json", "report.pdf"):
        assert (here / name).read_bytes() == (there / name).read_bytes(), name


@pytest.fixture
def rerun(runs: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    """A copy of the 2-thread report to tamper with."""
    return Path(shutil.copytree(runs[1], tmp_path / "rerun"))


def verify_lines(
    submitted: Path, rerun: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, str]]:
    """verify's exit status and its table: figure -> the rest of its line."""
    code = cli.main(["verify", str(submitted), str(rerun)])
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out[1:-1]}
    return code, rows


def figure_ids(folder: Path) -> list[str]:
    return [f["id"] for f in json.loads((folder / "manifest.json").read_text())["figures"]]


def rewrite_npz(path: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    with np.load(path) as z:
        arrays = dict(z)
    change(arrays)
    np.savez(path, **arrays)


def test_runs_at_one_and_two_threads_verify_as_reproduced(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, rows = verify_lines(*runs[:2], capsys)
    assert code == 0
    assert set(figure_ids(runs[0])) <= set(rows)  # every figure has its line
    for line in rows.values():
        assert line.split()[1] in ("identical", "reproduced"), line
    assert "manifest.json:trust" in rows  # the trust table's numbers are compared too


def test_a_scaled_saliency_map_is_named_and_fails(
    runs: tuple[Path, Path, Path], rerun: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rewrite_npz(rerun / "q1_saliency.npz", lambda a: a.update(map=a["map"] * 1.01))
    code, rows = verify_lines(runs[0], rerun, capsys)
    assert code == 1
    assert verify.DIFFERS in rows["q1_saliency"]
    assert "q1_saliency.npz:map" in rows["q1_saliency"]
    assert verify.DIFFERS not in rows["q4_grad_x_input"]  # only the changed figure


def test_a_rank_preserving_change_passes_for_smoothgrad_but_not_for_saliency() -> None:
    """Per-method tolerance: a sampled map is compared by rank, an exact one by value."""
    a = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    b = a**1.05  # same order, values up to ~2% off
    rules = verify_rules()  # what the registered stages declare
    smooth = verify.array_rule("q4_smoothgrad", "map", a, rules).tolerance
    assert smooth.passes(tolerances.min_spearman(a, b))
    exact = verify.array_rule("q1_saliency", "map", a, rules).tolerance
    assert not exact.passes(exact.measure(a, b))


def test_lime_weights_with_another_top_five_fail(
    runs: tuple[Path, Path, Path], rerun: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def reverse_first(arrays: dict[str, np.ndarray]) -> None:
        arrays["weights"][0] = -arrays["weights"][0]  # image 0's top five become its bottom

    rewrite_npz(rerun / "q3_lime.npz", reverse_first)
    code, rows = verify_lines(runs[0], rerun, capsys)
    assert code == 1
    assert verify.DIFFERS in rows["q3_lime"] and "top-5 overlap" in rows["q3_lime"]


def test_a_changed_png_is_named_and_fails(
    runs: tuple[Path, Path, Path], rerun: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = rerun / "q4_grad_cam.png"
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"))
    Image.fromarray(255 - pixels).save(png)
    code, rows = verify_lines(runs[0], rerun, capsys)
    assert code == 1
    assert verify.DIFFERS in rows["q4_grad_cam"]
    assert "q4_grad_cam.png: mean |pixel diff|" in rows["q4_grad_cam"]


def test_a_missing_file_and_a_missing_figure_are_reported(
    runs: tuple[Path, Path, Path], rerun: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (rerun / "q4_layercam.npz").unlink()
    manifest = json.loads((rerun / "manifest.json").read_text())
    manifest["figures"] = [f for f in manifest["figures"] if f["id"] != "q4_smoothgrad"]
    (rerun / "manifest.json").write_text(json.dumps(manifest))
    code, rows = verify_lines(runs[0], rerun, capsys)
    assert code == 1
    assert verify.MISSING in rows["q4_layercam"] and "q4_layercam.npz" in rows["q4_layercam"]
    assert verify.MISSING in rows["q4_smoothgrad"]


@pytest.mark.parametrize("bad", ["empty", "absent"])
def test_a_folder_without_manifest_is_one_error_line_and_exit_2(
    bad: str, runs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / bad
    if bad == "empty":
        folder.mkdir()
    code = cli.main(["verify", str(runs[0]), str(folder)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hw5: error:") and str(folder) in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
