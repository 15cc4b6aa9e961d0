"""The full default report on real photos with the full-size HW3 Classifier: how long, how much
of the budget, and whether a busy or slower machine gets the same report.

    .venv/bin/python bench/headroom.py [--before REF] [--out bench/out/headroom]

One run, one machine, in this order (every report through `bash hw5.sh`, budget 540 s):
  1. with --before, the report made by that commit's code (its hw5.sh, this venv): per-stage
     seconds before;
  2. the report now, on a quiet machine;
  3. the same command with one CPU-bound process beside it (`python -c 'while 1: pass'`):
     outputs compared byte for byte with 2;
  4. a grader's slower machine: `--threads 1 --replay` of 2's manifest, then `hw5.py verify`;
  5. the seed reports' way of making the four seed figures (saliency, SmoothGrad, filters with
     their activation maps, LIME) on the same model and images, against the report's stages;
  6. IG's completeness error (median, max) in 2 and in the bundled demo's report.
The subject is bench/realfood.py's (built under OUT if missing, ~4 min). Writes OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench import seed_style_figures  # noqa: E402
from bench.realfood import write_food  # noqa: E402
from hw5lib.inputs.images import load_inputs  # noqa: E402
from hw5lib.model.layers import default_filter_layers  # noqa: E402
from hw5lib.model.loading import load_classifier  # noqa: E402
from hw5lib.model.preprocess import Preprocess  # noqa: E402

PY = sys.executable
FOUR = {  # seed figure -> the report stage that makes it
    "saliency": "Q1 saliency",
    "SmoothGrad": "Q4 SmoothGrad",
    "filters": "Q2 filters",
    "LIME": "Q3 LIME",
}
LINES: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    LINES.append(text)


def subject(out: Path) -> tuple[Path, Path]:
    """The real-photo folder and the trained full-size checkpoint, built once."""
    data, ck = out / "realfood" / "food", out / "realfood" / "classifier.pth"
    if not ck.is_file():
        subprocess.run([PY, "bench/realfood.py", str(out / "realfood")], cwd=ROOT, check=True)
    elif not data.is_dir():
        write_food(data)
    return data, ck


def report(root: Path, data: Path, ck: Path, out: Path, *extra: str) -> dict:
    """`bash hw5.sh DATA OUT` from ``root`` (a checkout): wall seconds, stage seconds, cuts."""
    start = time.perf_counter()
    proc = subprocess.run(
        [
            "bash",
            str(root / "hw5.sh"),
            str(data),
            str(out),
            "--checkpoint",
            str(ck),
            "--quiet",
            *extra,
        ],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHON": PY, "HOME": str(Path.home())},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"hw5.sh {out} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    man = json.loads((out / "manifest.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    return {"wall": wall, "seconds": timings["seconds"], "rates": timings["rates"], "man": man}


def checkout(ref: str, where: Path) -> Path:
    """The files of commit ``ref`` (git archive), to run the code as it was."""
    where.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", ref], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def same_outputs(a: Path, b: Path) -> tuple[list[str], list[str]]:
    """(identical, differing) among the PNG/NPZ files either folder has."""
    names = sorted({p.name for d in (a, b) for p in d.iterdir() if p.suffix in (".png", ".npz")})
    same = [n for n in names if (a / n).is_file() and (b / n).is_file()]
    same = [n for n in same if (a / n).read_bytes() == (b / n).read_bytes()]
    return same, [n for n in names if n not in same]


def completeness(man: dict) -> tuple[float, float, float]:
    """IG's completeness error of the returned maps: (median, max, mean gradients per image)."""
    ig = man["convergence"]["Integrated Gradients"]
    final = ig["completeness_error"][-1]
    return statistics.median(final), max(final), float(np.mean(ig["gradients"]))


def stage_table(rows: dict[str, dict]) -> None:
    names = sorted({k for r in rows.values() for k in r["seconds"]})
    say("| stage | " + " | ".join(rows) + " |")
    say("|---" * (len(rows) + 1) + "|")
    for n in names:
        cells = [f"{r['seconds'][n]:.1f}" if n in r["seconds"] else "-" for r in rows.values()]
        say(f"| {n} | " + " | ".join(cells) + " |")
    say("| **wall (hw5.sh)** | " + " | ".join(f"**{r['wall']:.0f}**" for r in rows.values()) + " |")
    for name, r in rows.items():
        cuts = r["man"]["cuts"]
        say(f"\n{name}: rates {r['rates']}; cuts: " + ("; ".join(cuts) if cuts else "none"))


def seed_style(data: Path, ck: Path, man: dict) -> dict[str, float]:
    """The seed reports' way on the report's own model, images and filter count."""
    loaded = load_classifier(ck)
    pre = loaded.preprocess or Preprocess()
    model = loaded.model.eval()
    paths = [data / name for name in man["dataset"]["images"]]
    x = load_inputs(paths, pre)
    pixels = pre.denormalize(x).permute(0, 2, 3, 1).numpy()
    target = torch.tensor(man["dataset"]["targets"])
    per_layer = man["parameters"]["filters_per_layer"]
    pairs = [(n, k) for n in default_filter_layers(model) for k in range(per_layer)]
    return seed_style_figures(model, x, pixels, target, pairs, pre, 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="a commit whose report to time first (e.g. 7e6b9d1)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "headroom")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, ck = subject(out)
    say(f"# Headroom bench ({time.strftime('%Y-%m-%d')}, torch {torch.__version__})\n")
    say(
        f"Command: `.venv/bin/python bench/headroom.py{' --before ' + args.before if args.before else ''}`\n"
    )
    rows: dict[str, dict] = {}
    if args.before:
        old = checkout(args.before, out / "before-code")
        rows[f"before ({args.before})"] = report(old, data, ck, out / "before")
    rows["now, quiet"] = quiet = report(ROOT, data, ck, out / "quiet")
    busy_loop = subprocess.Popen([PY, "-c", "while 1: pass"])
    try:
        rows["now, one busy process"] = busy = report(ROOT, data, ck, out / "busy")
    finally:
        busy_loop.kill()
    rows["now, --threads 1 replay"] = slow = report(
        ROOT,
        data,
        ck,
        out / "threads1",
        "--threads",
        "1",
        "--replay",
        str(out / "quiet" / "manifest.json"),
    )
    say("## 1. Per-stage seconds (`bash hw5.sh`, budget 540 s, real photos, full-size model)\n")
    stage_table(rows)
    same, differ = same_outputs(out / "quiet", out / "busy")
    say(
        f"\n## 2. Quiet vs one busy process\n\n{len(same)} of {len(same) + len(differ)} PNG/NPZ "
        f"outputs byte-identical; differing: {', '.join(differ) or 'none'}; manifest.json "
        f"identical: {(out / 'quiet' / 'manifest.json').read_bytes() == (out / 'busy' / 'manifest.json').read_bytes()}; "
        f"busy run's cuts: {busy['man']['cuts'] or 'none'}."
    )
    verify = subprocess.run(
        [PY, "hw5.py", "verify", str(out / "quiet"), str(out / "threads1")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    say(
        f"\n## 3. A grader's slower machine: --threads 1 replaying the quiet manifest\n\n"
        f"Cuts: {slow['man']['cuts'] or 'none'}; `hw5.py verify quiet threads1` exit "
        f"{verify.returncode}.\n\n```\n{verify.stdout.strip()[-2500:]}\n```"
    )
    seed = seed_style(data, ck, quiet["man"])
    say("\n## 4. The four seed figures: the seed reports' way vs the report's stages\n")
    say("| figures | seed-style s | report s | report / seed |\n|---|---|---|---|")
    for k, stage in FOUR.items():
        ours = quiet["seconds"][stage]
        say(f"| {k} | {seed[k]:.1f} | {ours:.1f} | {ours / seed[k]:.2f} |")
    total_seed = sum(seed.values())
    total_ours = sum(quiet["seconds"][s] for s in FOUR.values())
    say(f"| **all** | {total_seed:.1f} | {total_ours:.1f} | **{total_ours / total_seed:.2f}** |")
    demo = out / "demo"
    subprocess.run(
        [PY, "hw5.py", "report", "-o", str(demo), "--budget", "540", "--quiet"],
        cwd=ROOT,
        check=True,
    )
    say("\n## 5. Integrated Gradients' completeness error of the returned maps\n")
    say("| report | median | max | gradients per image (mean) |\n|---|---|---|---|")
    for name, man in (
        ("real photos, full-size trained model", quiet["man"]),
        (
            "bundled demo (trained 1/8-width model)",
            json.loads((demo / "manifest.json").read_text()),
        ),
    ):
        med, mx, grads = completeness(man)
        say(f"| {name} | {med:.4f} | {mx:.4f} | {grads:.1f} |")
    (out / "results.md").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
