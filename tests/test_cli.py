"""The command line end to end: hw5.py and hw5.sh run as a user runs them, on a tiny model.

Every report run here is a real subprocess on the small generated set and the 32x32 checkpoint
of conftest.py, with the cheapest method settings. The runs the selected tests need are started
together when the module starts (``_start_runs_together``) so that they overlap; each test then
waits for its own run. Bad-input cases call ``cli.main`` in-process: same code, no 4 s import.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pypdf import PdfReader

from hw5lib import arguments, cli
from hw5lib.inputs.sample import SampleInfo
from hw5lib.model.fetch import cached_path

REPO = Path(__file__).resolve().parent.parent
FAST = ["--lime-samples", "40", "--filter-steps", "5", "--smooth-samples", "4",
        "--ig-steps", "4", "--per-class", "1"]  # fmt: skip
# For runs that test input handling, not the report: one Q2 layer and no trust checks.
LIGHT = [*FAST, "--no-trust", "--filter-layers", "2"]
# Every figure of the report; q2_activations_<layer> comes once per Q2 layer.
FIGURES = {
    "q1_saliency", "q2_filters", "q3_lime", "q3_confusion", "q3_examples", "q4_smoothgrad",
    "q4_grad_x_input", "q4_integrated_gradients", "q4_shap", "q4_grad_cam", "q4_layercam",
    "q4_feature_maps", "q4_deepdream", "appendix_convergence",
}  # fmt: skip
ACTIVATIONS = re.compile(r"q2_activations_\w+")
USER_FILE = "notes.txt"
RUN_TIMEOUT_S = 300


# ------------------------------------------------------------------------------ helpers


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def visible_lines(stderr: str) -> list[str]:
    """What a terminal shows: per line, the text after the last carriage return (tqdm bars
    that ``leave=False`` erased disappear), blank lines dropped."""
    lines = (line.rsplit("\r", 1)[-1].strip() for line in stderr.split("\n"))
    return [line for line in lines if line]


def assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    """Exit code 2 and a single visible ``hw5: error: ...`` line naming every needle."""
    assert "Traceback" not in stderr
    lines = visible_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hw5: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert code == 2


def cli_env(cache: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any HW5_* setting, a private download cache (a run
    never writes into the repo's checkpoints/), one thread per run, loopback without proxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW5_")}
    env.update(
        PYTHON=sys.executable,
        HW5_CHECKPOINT_CACHE=str(cache),
        OMP_NUM_THREADS="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


def hw5_py(*args: str | Path) -> list[str]:
    return [sys.executable, "hw5.py", *map(str, args)]


def hw5_sh(*args: str | Path) -> list[str]:
    return ["bash", "hw5.sh", *map(str, args)]


def copy_images(src: Path, dest: Path, count: int) -> Path:
    """A flat folder (no split subfolders) with the first ``count`` images of ``src``."""
    dest.mkdir(parents=True)
    for p in sorted(src.glob("*.jpg"))[:count]:
        shutil.copy(p, dest / p.name)
    return dest


# Wall-clock seconds of the run: the one output that differs between two runs by design.
TIMINGS = "timings.json"


def listing(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()} - {USER_FILE, TIMINGS}


@dataclass
class Run:
    """A background CLI run: its output folder and the future of its CompletedProcess (of the
    list of them, for a chain of commands)."""

    out: Path
    future: Future

    def result(self) -> Any:
        return self.future.result(timeout=RUN_TIMEOUT_S)

    def ok(self) -> subprocess.CompletedProcess[str]:
        proc = self.result()
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        return proc

    def manifest(self) -> dict:
        self.ok()
        return json.loads((self.out / "manifest.json").read_text())


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="hw5-cli") as ex:
        yield ex


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


def start(pool: ThreadPoolExecutor, out: Path, job: Callable[[], object]) -> Iterator[Run]:
    """Yield a started Run; on teardown wait for it, so no run outlives its fixtures."""
    r = Run(out, pool.submit(job))
    yield r
    r.future.exception(timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def two_images(small_sample: SampleInfo, work: Path) -> Path:
    return copy_images(small_sample.root / "validation", work / "two", 2)


@pytest.fixture(scope="module")
def report_a(
    pool: ThreadPoolExecutor, work: Path, small_sample: SampleInfo, tiny_checkpoint: Path
) -> Iterator[Run]:
    """The full report (trust checks on) into a folder that already holds a user's file."""
    out = work / "report_a"
    out.mkdir()
    (out / USER_FILE).write_text("my notes, not hw5's\n")
    args = hw5_py("report", small_sample.root, out, "--checkpoint", tiny_checkpoint, *FAST)
    yield from start(pool, out, lambda: run(args, cli_env(work / "cache")))


@pytest.fixture(scope="module")
def report_b(
    pool: ThreadPoolExecutor, work: Path, small_sample: SampleInfo, tiny_checkpoint: Path
) -> Iterator[Run]:
    """Exactly report_a's command, into another folder."""
    out = work / "report_b"
    args = hw5_py("report", small_sample.root, out, "--checkpoint", tiny_checkpoint, *FAST)
    yield from start(pool, out, lambda: run(args, cli_env(work / "cache")))


MIXED = {  # validation file -> how it is rewritten (the first image of classes 0..6)
    "0_0.jpg": "grayscale JPEG",
    "1_0.png": "RGBA PNG with transparency",
    "2_0.png": "palette PNG",
    "3_0.png": "16-bit grayscale PNG",
    "4_0.jpg": "CMYK JPEG",
    "5_0.jpg": "tiny 17x23 JPEG",
    "6_0.jpg": "long 300x40 JPEG",
}


def make_mixed(src: Path, dest: Path) -> None:
    """A plain Food-11 folder (no masks/, SAMPLE.json or classes.txt) whose images come in
    several sizes and every common PIL mode."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("masks", "SAMPLE.json", "classes.txt"))
    val = dest / "validation"
    for name in MIXED:
        original = val / (Path(name).stem + ".jpg")
        with Image.open(original) as im:
            rgb = im.convert("RGB")
        original.unlink()
        if name == "0_0.jpg":
            rgb.convert("L").save(val / name, quality=90)
        elif name == "1_0.png":
            rgba = rgb.convert("RGBA")
            alpha = np.full(rgb.size[::-1], 255, np.uint8)
            alpha[:, : rgb.width // 2] = 0  # left half fully transparent
            rgba.putalpha(Image.fromarray(alpha))
            rgba.save(val / name)
        elif name == "2_0.png":
            rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(val / name)
        elif name == "3_0.png":
            gray16 = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
            Image.fromarray(gray16).save(val / name)  # mode I;16
        elif name == "4_0.jpg":
            rgb.convert("CMYK").save(val / name, quality=90)
        elif name == "5_0.jpg":
            rgb.resize((17, 23)).save(val / name, quality=90)
        else:
            rgb.resize((300, 40)).save(val / name, quality=90)
    testing = sorted((dest / "testing").glob("*.jpg"))[0]
    with Image.open(testing) as im:
        im.convert("RGBA").save(testing.with_suffix(".png"))
    testing.unlink()


@pytest.fixture(scope="module")
def mixed_report(
    pool: ThreadPoolExecutor, work: Path, small_sample: SampleInfo, tiny_checkpoint: Path
) -> Iterator[Run]:
    """bash hw5.sh on the mixed-mode folder, the checkpoint given by $HW5_CHECKPOINT."""
    data, out = work / "mixed", work / "mixed_out"
    make_mixed(small_sample.root, data)
    env = cli_env(work / "cache", HW5_CHECKPOINT=str(tiny_checkpoint))
    yield from start(pool, out, lambda: run(hw5_sh(data, out, *LIGHT), env))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(work: Path, tiny_checkpoint: Path) -> Iterator[tuple[str, Path]]:
    """(url, file): the checkpoint served over loopback HTTP until the module ends."""
    root = work / "www"
    root.mkdir()
    shutil.copy(tiny_checkpoint, root / "model.pt")
    # What a Drive link that is not shared, or a wrong URL, sends back: a web page.
    (root / "page.html").write_text("<!DOCTYPE html><html><body>Sign in</body></html>\n")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/model.pt", root / "model.pt"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def download_report(
    pool: ThreadPoolExecutor, work: Path, two_images: Path, served: tuple[str, Path]
) -> Iterator[Run]:
    """bash hw5.sh with no checkpoint file: it downloads $HW5_CHECKPOINT_URL into the cache."""
    out = work / "download_out"
    env = cli_env(work / "download_cache", HW5_CHECKPOINT_URL=served[0])
    yield from start(pool, out, lambda: run(hw5_sh(two_images, out, *LIGHT, "--quiet"), env))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def failed_download(pool: ThreadPoolExecutor, work: Path, two_images: Path) -> Iterator[Run]:
    """bash hw5.sh whose checkpoint URL points at a port nobody listens on."""
    out = work / "failed_out"
    url = f"http://127.0.0.1:{closed_port()}/model.pt"
    env = cli_env(work / "failed_cache", HW5_CHECKPOINT_URL=url)
    yield from start(pool, out, lambda: run(hw5_sh(two_images, out, *LIGHT), env))


@pytest.fixture(scope="module")
def sample_train_report(pool: ThreadPoolExecutor, work: Path) -> Iterator[Run]:
    """hw5.py sample, then hw5.py train on it, then hw5.py report with that checkpoint."""
    data, ckpt, out = work / "cli_sample", work / "cli_trained.pt", work / "cli_report"
    env = cli_env(work / "cache")

    def job() -> list[subprocess.CompletedProcess[str]]:
        steps = [run(hw5_py("sample", data), env)]
        if steps[-1].returncode == 0:
            steps.append(run(hw5_py("train", data, "--out", ckpt, "--widths", "4,8,8,8,8",
                                    "--hidden", "16,16", "--epochs", "1"), env))  # fmt: skip
        if steps[-1].returncode == 0:
            two = copy_images(data / "validation", work / "cli_two", 2)
            steps.append(run(hw5_py("report", two, out, "--checkpoint", ckpt, *LIGHT), env))
        return steps

    yield from start(pool, out, job)


RUN_FIXTURES = ("report_a", "report_b", "mixed_report", "download_report", "failed_download",
                "sample_train_report")  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _start_runs_together(request: pytest.FixtureRequest) -> None:
    """Start every run that a selected test of this module needs, before the first test."""
    needed = {
        name
        for item in request.session.items
        if item.module is request.module
        for name in getattr(item, "fixturenames", ())
    }
    for name in RUN_FIXTURES:
        if name in needed:
            request.getfixturevalue(name)


# ------------------------------------------------------------------------------ 1. a full report


def test_report_writes_every_figure_as_png_and_its_arrays_as_npz(report_a: Run) -> None:
    ids = {f["id"] for f in report_a.manifest()["figures"]}
    assert ids >= FIGURES
    assert {i for i in ids - FIGURES if ACTIVATIONS.fullmatch(i)} == ids - FIGURES
    assert len(ids - FIGURES) == 4  # the default: four Q2 layers
    written = listing(report_a.out)
    for fig in report_a.manifest()["figures"]:
        assert fig["png"] == f"{fig['id']}.png" and fig["png"] in written
        if fig["npz"] is not None:
            assert fig["npz"] == f"{fig['id']}.npz" and fig["npz"] in written
    assert {"manifest.json", "report.pdf"} <= written


def test_manifest_figures_are_exactly_the_pngs_and_npzs_written(report_a: Run) -> None:
    figures = report_a.manifest()["figures"]
    written = listing(report_a.out)
    assert len({f["id"] for f in figures}) == len(figures)
    assert {f"{f['id']}.png" for f in figures} == {n for n in written if n.endswith(".png")}
    assert {f["npz"] for f in figures if f["npz"]} == {n for n in written if n.endswith(".npz")}


def test_manifest_outputs_list_every_written_file_with_its_sha256(report_a: Run) -> None:
    outputs = report_a.manifest()["outputs"]
    assert set(outputs) == listing(report_a.out) - {"manifest.json", "report.pdf"}
    for name, digest in outputs.items():
        assert sha256(report_a.out / name) == digest, name


def test_saliency_npz_holds_inputs_targets_and_maps_at_the_preprocess_size(report_a: Run) -> None:
    man = report_a.manifest()
    n = len(man["dataset"]["images"])
    h, w = man["preprocess"]["size"]
    assert (h, w) == (32, 32)  # what the tiny checkpoint recorded
    with np.load(report_a.out / "q1_saliency.npz") as z:
        assert z["input"].shape == (n, 3, h, w)
        assert z["target"].tolist() == man["dataset"]["targets"]
        assert z["attribution"].shape[0] == n and z["attribution"].shape[-2:] == (h, w)
        assert np.isfinite(z["attribution"]).all() and (z["attribution"] >= 0).all()
        assert z["attribution"].max() > 0
    assert n == 11  # --per-class 1 of 11 classes


def test_report_pdf_shows_every_manifest_figure_once_with_its_title(report_a: Run) -> None:
    figures = report_a.manifest()["figures"]
    reader = PdfReader(report_a.out / "report.pdf")
    text = re.sub(r"\s+", " ", " ".join(page.extract_text() for page in reader.pages))
    numbers = {}
    for fig in figures:  # the caption follows the title, so a title is never a prefix match
        found = re.findall(rf"Figure (\d+)\. {re.escape(fig['title'])} ", text)
        assert len(found) == 1, (fig["title"], found)
        numbers[fig["id"]] = int(found[0])
    assert sorted(numbers.values()) == list(range(1, len(figures) + 1))
    assert sum(len(page.images) for page in reader.pages) == len(figures)


def test_planned_figures_are_the_figures_the_report_writes(
    report_a: Run, small_sample: SampleInfo, tiny_checkpoint: Path
) -> None:
    """--notes checks figure names against the plan before any stage runs: it must hold."""
    from hw5lib.run.pipeline import planned_figures
    from hw5lib.run.subject import prepare
    from hw5lib.stages.registry import STAGES

    argv = ["report", str(small_sample.root), str(report_a.out), "--checkpoint",
            str(tiny_checkpoint), *FAST]  # fmt: skip
    run = prepare(arguments.report_config(arguments.parse_args(argv), argv))
    assert set(planned_figures(run, STAGES)) == {f["id"] for f in report_a.manifest()["figures"]}


def test_report_run_leaves_a_users_file_in_the_out_dir_untouched(report_a: Run) -> None:
    report_a.ok()
    assert (report_a.out / USER_FILE).read_text() == "my notes, not hw5's\n"


def test_report_leaves_no_temp_files(report_a: Run) -> None:
    report_a.ok()
    assert not [n for n in listing(report_a.out) if n.startswith(".") or n.endswith(".tmp")]


# ------------------------------------------------------------------------------ 2. determinism


def test_two_runs_into_different_folders_write_byte_identical_files(
    report_a: Run, report_b: Run
) -> None:
    report_a.ok()
    report_b.ok()
    names = listing(report_a.out)
    assert names == listing(report_b.out)
    differ = sorted(n for n in names if sha256(report_a.out / n) != sha256(report_b.out / n))
    assert differ == []


# ------------------------------------------------------------------------------ 3. mixed input


def test_hw5_sh_explains_a_food11_folder_of_mixed_sizes_and_image_modes(
    mixed_report: Run, tiny_checkpoint: Path
) -> None:
    man = mixed_report.manifest()
    assert man["checkpoint"] == {"file": tiny_checkpoint.name, "sha256": sha256(tiny_checkpoint)}
    explained = [Path(p).name for p in man["dataset"]["images"]]
    assert set(MIXED) <= set(explained)
    assert man["dataset"]["explained_split"] == "validation"
    written = listing(mixed_report.out)
    assert {f"{f}.png" for f in FIGURES} <= written
    with np.load(mixed_report.out / "q1_saliency.npz") as z:
        assert z["input"].shape == (11, 3, 32, 32)
        assert np.isfinite(z["input"]).all()
        gray = explained.index("0_0.jpg")  # a grayscale image reaches the model as R = G = B
        assert np.array_equal(z["input"][gray, 0], z["input"][gray, 1])


# ------------------------------------------------------------------------------ 4. download


def test_hw5_sh_downloads_the_checkpoint_url_into_the_cache(
    download_report: Run, served: tuple[str, Path], work: Path
) -> None:
    man = download_report.manifest()
    cache = work / "download_cache"
    dest = cached_path(served[0], cache)
    assert dest.read_bytes() == served[1].read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [dest.name]  # no .part left over
    assert man["checkpoint"] == {"file": dest.name, "sha256": sha256(served[1])}
    assert {f"{f}.png" for f in FIGURES} <= listing(download_report.out)


def test_unreachable_checkpoint_url_is_a_one_line_error_and_leaves_no_file(
    failed_download: Run, work: Path
) -> None:
    proc = failed_download.result()
    assert_one_line_error(proc.returncode, proc.stderr, "HW5_CHECKPOINT", "could not download")
    cache = work / "failed_cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_url_serving_a_web_page_is_an_error_and_is_not_cached_as_a_checkpoint(
    served: tuple[str, Path],
    two_images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = served[0].replace("model.pt", "page.html")
    monkeypatch.setattr(cli, "CHECKPOINT_CACHE", tmp_path / "cache")
    monkeypatch.delenv("HW5_CHECKPOINT", raising=False)
    code = cli.main(["report", str(two_images), str(tmp_path / "out"), "--checkpoint-url", url,
                     *LIGHT])  # fmt: skip
    err = capsys.readouterr().err
    assert_one_line_error(code, err, "HW5_CHECKPOINT")
    assert "--trust-pickle" not in err  # it is not a pickle: never advise unpickling it
    assert not cached_path(url, tmp_path / "cache").exists()  # a rerun must try again


# ------------------------------------------------------------------------------ 5. bad input


def pickled_model(tmp: Path) -> Path:
    """A whole model of a class neither model.py nor --model defines: loading it would run its code."""
    from tests.zoo import AlexNetLike

    path = tmp / "whole_model.pt"
    torch.save(AlexNetLike(), path)
    return path


def wrong_shape(tmp: Path, checkpoint: Path) -> Path:
    state = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    state["cnn.0.weight"] = torch.zeros(4, 3, 5, 5)  # a 5x5 first conv; the Classifier's is 3x3
    path = tmp / "wrong_shape.pt"
    torch.save(state, path)
    return path


# case -> (data, checkpoint, extra flags, words the error line must contain), built per test.
BAD_INPUT: dict[str, Callable[[Path, Path, Path], tuple[Path, Path, list[str], list[str]]]] = {
    "missing data folder": lambda tmp, data, ckpt: (
        tmp / "no_such_dir", ckpt, [], [str(tmp / "no_such_dir"), "does not exist"]),
    "folder without images": lambda tmp, data, ckpt: (
        tmp, ckpt, [], ["no images", str(tmp)]),
    "missing checkpoint": lambda tmp, data, ckpt: (
        data, tmp / "nope.pth", [], [str(tmp / "nope.pth"), "does not exist"]),
    "pickled whole model of an unknown class": lambda tmp, data, ckpt: (
        data, pickled_model(tmp), [], ["--trust-pickle", "whole_model.pt"]),
    "state_dict of the wrong shape": lambda tmp, data, ckpt: (
        data, wrong_shape(tmp, ckpt), [], ["cnn.0.weight", "(4, 3, 5, 5)", "(4, 3, 3, 3)"]),
    "unknown filter layer": lambda tmp, data, ckpt: (
        data, ckpt, ["--filter-layers", "nosuchlayer"], ["'nosuchlayer'", "cnn.0"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_error_line_and_exit_code_2(
    case: str,
    tmp_path: Path,
    two_images: Path,
    tiny_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "readme.txt").write_text("not an image")
    data, ckpt, flags, needles = BAD_INPUT[case](tmp_path, two_images, tiny_checkpoint)
    monkeypatch.delenv("HW5_CHECKPOINT", raising=False)
    code = cli.main(["report", str(data), str(tmp_path / "out"), "--checkpoint", str(ckpt),
                     *FAST, *flags])  # fmt: skip
    assert_one_line_error(code, capsys.readouterr().err, *needles)


def test_unknown_dream_layer_is_rejected_before_any_figure_is_written(
    tmp_path: Path, two_images: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = cli.main(["report", str(two_images), str(out), "--checkpoint", str(tiny_checkpoint),
                     *LIGHT, "--dream-layer", "cnn.99"])  # fmt: skip
    assert_one_line_error(code, capsys.readouterr().err, "'cnn.99'")
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix == ".png"]


def test_hw5_sh_with_one_argument_prints_usage_and_exits_2(work: Path) -> None:
    proc = run(hw5_sh(work / "data_only"), cli_env(work / "cache"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = visible_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("usage: bash hw5.sh <food_dir> <out_dir>")


# ------------------------------------------------------------------------------ 6. sample, train


def test_sample_then_train_then_report_from_the_command_line(sample_train_report: Run) -> None:
    steps = sample_train_report.result()
    for proc in steps:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    assert len(steps) == 3
    data = sample_train_report.out.parent / "cli_sample"
    classes = (data / "classes.txt").read_text().split()
    for split in ("training", "validation", "testing"):
        assert any((data / split).glob("*.jpg")), split
    ckpt = sample_train_report.out.parent / "cli_trained.pt"
    man = json.loads((sample_train_report.out / "manifest.json").read_text())
    assert man["checkpoint"]["sha256"] == sha256(ckpt)
    assert len(classes) == 11 and man["model"]["classes"] == classes
    assert man["model"]["architecture"]["widths"] == [4, 8, 8, 8, 8]
    assert man["preprocess"]["channel_order"] == "rgb"  # recorded by train, not the HW3 default
    assert man["preprocess"]["reader"] == "pil"  # train reads with PIL and records it
    assert {f"{f}.png" for f in FIGURES} <= listing(sample_train_report.out)
