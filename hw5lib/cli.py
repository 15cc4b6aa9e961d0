"""Command line: argparse -> frozen configs; user mistakes become one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from hw5lib.config import COURSE, GROUPS, RunConfig, ints, options
from hw5lib.errors import Terminated, UserError
from hw5lib.report.portable import DATA, OUT, model_spec_name, portable_command, relative_name

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DATA = ROOT / "data" / "sample"
BUNDLED_CHECKPOINT = ROOT / "checkpoints" / "sample_classifier.pt"
DEFAULT_OUT = ROOT / "out" / "sample"
CHECKPOINT_CACHE = Path(os.environ.get("HW5_CHECKPOINT_CACHE", ROOT / "checkpoints"))

# Exit statuses besides 0 (done) and 2 (a user mistake, one line says which).
STAGE_FAILED = 3  # the report was written, but a stage failed (manifest.json: failures)
REPRODUCTION_FAILED = 1  # verify: some figure differs from the submitted one or is missing
INTERRUPTED, TERMINATED = 130, 143  # Ctrl-C / SIGTERM: what was written is complete and listed

REPORT_HELP = """\
Explain a trained CNN and write every figure, its raw arrays (.npz) and manifest.json to OUT.
With no DATA, the bundled synthetic sample set is generated (if missing) and explained with the
bundled checkpoint trained on it.

Checkpoint: --checkpoint PATH, else $HW5_CHECKPOINT, else --checkpoint-url (or
$HW5_CHECKPOINT_URL) is downloaded once with gdown into checkpoints/. Checkpoints load with
torch.load(weights_only=True, map_location="cpu"): a state_dict, bare or in any training dict
(the one dict of tensors that fits; module./_orig_mod./model. key prefixes stripped;
--checkpoint-key picks one of several), or a whole pickled model of torch.nn layers, torchvision
classes, or your own class under any module name (__main__ included) loaded into model.py's
Classifier or --model when its layers match, without running code from the file. Anything else
is refused unless you pass --trust-pickle (unpickling it runs code from the file).

Preprocessing must match how the checkpoint was trained. Checkpoints written by `hw5.py train`
record it; otherwise the defaults are the HW3 sample code's: resize to 128x128, scale to [0,1],
BGR channel order (it read images with cv2.imread), no mean/std.

Sampled and iterated methods stop once converged (--no-adaptive: always the caps):
  LIME        foldover Hadamard masks (each with its complement) in rounds of 100, at least
              400, until as precise as stock lime's 1000 independent samples (sandwich
              estimate) and the 5th weight stands >= 1 standard error above the next three;
              cap --lime-samples.
  SmoothGrad  rounds of 10 noisy copies until the two half-averages predict a correlation
              >= 0.98 with the exact expectation (Spearman-Brown); cap --smooth-samples.
  IG          4 equal cells of the path (5 gradients), then rounds halving the worse half of
              each image's cells by their exact error (all gradients kept) until the
              completeness error is <= 1%; cap --ig-steps gradients.
  Filters     --filter-steps of cosine-scheduled ascent; filters whose activation still rose
              by > 2.5% over the last 20 steps are redone from a new start with twice the
              steps, the higher of the two kept. A layer with a small receptive field climbs
              a periodic tile, shown repeated to the full size.
Measured agreement with 1000-sample / 200-sample / 300-step / 400-step references:
bench/RESULTS.md.

--budget SECONDS measures the model's speed, plans every stage to fit, and cuts the
cheapest-to-lose work first (cross-checks, then sample sizes, then optional stages); the
manifest and report list every cut. Past the deadline stages stop, and what is finished is
written. hw5.sh passes --budget 540.

Exit status: 0 done; 2 a user mistake (one line says which); 3 the report was written but a
stage failed (manifest.json "failures"); 130/143 interrupted by Ctrl-C/SIGTERM (manifest.json
lists what was written; rerun to finish).
"""

VERIFY_HELP = """\
Compare a submitted output folder with a rerun, figure by figure, from each folder's
manifest.json: every figure the submitted manifest lists must be in the rerun and reproduce.
Prints one line per figure (identical / reproduced within tolerance / differs / missing) with
its worst number, and a line for the trust table's numbers.

Tolerances (another CPU or thread count rounds floats differently; bench/RESULTS.md measures):
{tolerances}

Exit status: 0 every figure reproduces; 1 some figure differs or is missing; 2 a user mistake
(a folder without manifest.json).
"""


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line ending in how to get help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="hw5.py", description="Explain a trained CNN image classifier.")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")
    sub = p.add_subparsers(dest="command", parser_class=Parser)

    r = sub.add_parser(
        "report",
        help="write every figure and manifest.json (the main job)",
        description=REPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "data",
        nargs="?",
        type=Path,
        help="Food-11 root or one folder of images (default: the bundled sample set)",
    )
    r.add_argument(
        "out",
        nargs="?",
        type=Path,
        help=f"output folder (default: {DEFAULT_OUT.relative_to(ROOT)})",
    )
    r.add_argument("-o", "--out-dir", type=Path, help="output folder (instead of OUT)")
    r.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="defaults reproducing a seed report's figure set: hw5-2020 (Food-11, the course's "
        "picks), expression (a FER2013 or label,feature CSV, gray, at its own side), catdog "
        "(224x224 AlexNet, ImageNet normalization, dog.jpg/cat.jpg/both.jpg, CAMs for both "
        "classes); flags still win",
    )
    r.add_argument("--checkpoint", type=Path, help="checkpoint file (default: $HW5_CHECKPOINT)")
    r.add_argument(
        "--model-args",
        help="JSON arguments for --model: an object of keyword arguments, e.g. "
        '\'{"num_classes": 7}\', or a list of positional ones, e.g. \'["C", "C"]\'',
    )
    r.add_argument(
        "--checkpoint-url",
        default=os.environ.get("HW5_CHECKPOINT_URL", ""),
        help="Google Drive link / file id / http URL to fetch when no checkpoint file is given",
    )
    groups = {name: r.add_argument_group(name) if name else r for name in GROUPS}
    for name, opt, default in options():
        opt.add_to(groups[opt.group], name, default)
    r.add_argument("--quiet", action="store_true", help="no progress bars or summary table")

    lay = sub.add_parser("layers", help="list the model's layers, to pick them by index or name")
    lay.add_argument("--checkpoint", type=Path, help="checkpoint (default: the bundled one)")
    lay.add_argument("--trust-pickle", action="store_true", help="allow a pickled whole model")
    lay.add_argument("--size", type=int, help="input side (default: the checkpoint's, else 128)")
    lay.add_argument("--channels", type=int, choices=(1, 3), help="input channels")
    lay.add_argument("--model", help="your architecture, path/to/file.py:ClassName")
    lay.add_argument("--model-args", help="JSON arguments for --model (object or list)")
    lay.add_argument("--checkpoint-key", help="which state_dict of the checkpoint to list")

    from hw5lib.verify import tolerances_help

    ver = sub.add_parser(
        "verify",
        help="does a rerun reproduce a submitted report? (for graders)",
        description=VERIFY_HELP.format(tolerances=tolerances_help()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ver.add_argument("submitted", type=Path, help="the submitted output folder")
    ver.add_argument("rerun", type=Path, help="the grader's rerun (bash hw5.sh FOOD RERUN)")

    smp = sub.add_parser("sample", help="generate the synthetic sample dataset")
    smp.add_argument("dir", type=Path)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--mode", choices=("food11", "expression", "catdog"), default="food11")

    t = sub.add_parser("train", help="train the HW3 Classifier on a Food-11-layout folder")
    t.add_argument("data", type=Path)
    t.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    t.add_argument(
        "--widths",
        type=ints,
        default=(64, 128, 256, 512, 512),
        help="conv widths of the five blocks (HW3: 64,128,256,512,512)",
    )
    t.add_argument(
        "--hidden", type=ints, default=(1024, 512), help="hidden fc sizes (HW3: 1024,512)"
    )
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb")
    t.add_argument("--size", type=int, default=128, help="input side (default 128)")
    t.add_argument("--channels", type=int, choices=(1, 3), default=3)
    t.add_argument(
        "--classes", help="comma-separated class names (default: classes.txt if present)"
    )
    return p


PRESETS: dict[str, dict] = {
    "hw5-2020": {
        "classes": "food11",
        "training_indices": (83, 4218, 4707, 8598),
        "filter_layers": ("cnn.15",),
        "filters": (0,),
        "conventions": COURSE,
    },
    "expression": {"classes": "fer2013", "channels": 1},  # the side: the CSV's own
    "catdog": {
        "classes": "catdog",
        "size": 224,
        "channel_order": "rgb",
        "reader": "pil",  # torchvision's transforms resize with PIL
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "named_images": ("dog.jpg", "cat.jpg", "both.jpg"),
        "cam_targets": "all",
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse twice: a --preset sets new defaults, and the user's own flags still win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        sub = parser._subparsers._group_actions[0].choices["report"]  # type: ignore[union-attr]
        sub.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    return args


def report_config(args: argparse.Namespace, argv: Sequence[str] | None = None) -> RunConfig:
    data, out = args.data, args.out_dir or args.out
    checkpoint = args.checkpoint or (
        Path(os.environ["HW5_CHECKPOINT"]) if os.environ.get("HW5_CHECKPOINT") else None
    )
    if data is None and not args.images:
        ensure_sample(BUNDLED_DATA)
        data, out = BUNDLED_DATA, out or DEFAULT_OUT
        checkpoint = checkpoint or BUNDLED_CHECKPOINT
    if out is None:
        raise UserError("give an output folder: hw5.py report DATA OUT")
    from hw5lib.report.outputs import check_writable

    check_writable(out)  # before a checkpoint is downloaded or loaded; creates nothing
    if checkpoint is None:
        from hw5lib.model.fetch import fetch_checkpoint

        checkpoint = fetch_checkpoint(args.checkpoint_url, CHECKPOINT_CACHE)
    if args.per_class < 0:
        raise UserError("--per-class must be 0 or more")
    for name, opt, _ in options():
        value = getattr(args, name)
        if opt.positive and value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for p in args.images:
        if not p.is_file():
            raise UserError(f"--images: {p} is not a file")
    if args.notes is not None:  # its sections are checked now; its figure names once planned
        from hw5lib.report.notes import read_notes

        read_notes(args.notes)
    chosen = {name: getattr(args, name) for name, _, _ in options()}
    return RunConfig(
        data=data,
        out=out,
        checkpoint=checkpoint,
        model_args=parse_model_args(args.model_args),
        command=recorded_command(args, data, argv),
        **chosen | {"images": tuple(args.images)},
    )


def recorded_command(
    args: argparse.Namespace, data: Path | None, argv: Sequence[str] | None = None
) -> str:
    """The command line as the manifest records it, with no folder of this machine in it: the
    output folder as OUT, the data folder as DATA, other files by name (--images by their
    place in DATA), --quiet left out. Reruns elsewhere, into another folder, stay identical."""
    if argv is None:
        argv = sys.argv[1:] if sys.argv[0].endswith("hw5.py") else ["report"]
    labels = {args.out: OUT, args.out_dir: OUT, args.data: DATA}
    labels |= {p: relative_name(data, p) for p in args.images}
    labels |= {p: p.name for p in (args.checkpoint, args.notes, args.replay) if p is not None}
    for spec in (args.model, getattr(args, "preprocess", None)):  # file.py:NAME by the file's name
        if spec:
            labels[Path(spec)] = model_spec_name(spec)
    kept = [a for a in argv if a != "--quiet"]
    return "hw5.py " + portable_command(kept, {k: v for k, v in labels.items() if k is not None})


def parse_model_args(text: str | None) -> dict | list:
    """--model-args: a JSON object (keyword arguments) or list (positional ones)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--model-args is not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict | list):
        raise UserError(
            "--model-args must be a JSON object or list, e.g. '{\"num_classes\": 7}' or "
            '\'["C", "C"]\''
        )
    return value


def ensure_sample(root: Path) -> None:
    """Generate the bundled sample set once; it is deterministic, so a cached copy is the same."""
    if not (root / "SAMPLE.json").is_file():
        from hw5lib.inputs.sample import generate_sample

        generate_sample(root, seed=0)


def print_layers(args: argparse.Namespace) -> None:
    """The course picks layers as ``model.cnn[15]``: show index, name, type and output shape."""
    from hw5lib.model.layers import layer_table
    from hw5lib.model.loading import load_classifier
    from hw5lib.model.probe import infer_side
    from hw5lib.run.subject import infer_channels

    loaded = load_classifier(
        args.checkpoint or BUNDLED_CHECKPOINT,
        trust_pickle=args.trust_pickle,
        model_spec=args.model,
        model_args=parse_model_args(args.model_args),
        checkpoint_key=args.checkpoint_key,
    )
    pre = loaded.preprocess
    channels = args.channels or (pre.channels if pre else infer_channels(loaded.model))
    default = int(loaded.architecture.get("input_size", 128))
    size = args.size or (pre.size[0] if pre else infer_side(loaded.model, channels, default)[0])
    table = layer_table(loaded.model, (channels, size, size))
    print(f"{'name':<12} {'index':<10} {'type':<14} output ({channels}x{size}x{size} input)")
    for name, kind, shape in table:
        parent, _, last = name.rpartition(".")
        index = f"{parent}[{last}]" if parent and last.isdigit() else ""
        print(f"{name:<12} {index:<10} {kind:<14} {shape}")


def print_summary(manifest: dict, seconds: dict[str, float], out: Path) -> None:
    rows = [*sorted(manifest["outputs"]), "manifest.json", "report.pdf"]
    print(f"wrote {len(rows)} files to {out}:")
    for name in rows:
        print(f"  {name}")
    print("stage                      seconds")
    for name, sec in seconds.items():
        print(f"  {name:<24} {sec:7.1f}")


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # --budget counts from here: importing torch takes seconds
    if threading.current_thread() is not threading.main_thread():  # signals reach main only
        return run_command(argv, started)
    previous = signal.signal(signal.SIGTERM, raise_terminated)  # stop as Ctrl-C does
    try:
        return run_command(argv, started)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(argv: list[str] | None, started: float) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "report":
            from hw5lib.run.pipeline import run_report

            cfg = report_config(args, argv)
            man, seconds = run_report(cfg, progress=not args.quiet, started=started)
            if not args.quiet:
                print_summary(man, seconds, cfg.out)
            check = man["input_check"]
            if check["warning"]:
                print(f"hw5: warning: {check['warning']}", file=sys.stderr)
            elif not args.quiet:
                print(f"hw5: {check['note']}", file=sys.stderr)
            if man["skipped_images"]:
                print(f"hw5: warning: {skipped_line(man['skipped_images'])}", file=sys.stderr)
            for line in dataset_lines(man["dataset"], man["model"]["classes"], args.quiet):
                print(line, file=sys.stderr)
            if not man["figures"] and cfg.budget is not None:
                raise UserError(
                    f"--budget {cfg.budget:g} s left no time for any figure (loading took "
                    f"{seconds.get('load', 0):.0f} s); give more (hw5.sh passes 540) or no --budget"
                )
            if man["failures"]:
                names = ", ".join(f["stage"] for f in man["failures"])
                print(
                    f"hw5: {len(man['failures'])} stage(s) failed ({names}); every other figure, "
                    f"manifest.json and report.pdf were written to {cfg.out}",
                    file=sys.stderr,
                )
                return STAGE_FAILED
        elif args.command == "verify":
            from hw5lib.verify import table, verify

            result = verify(args.submitted, args.rerun)
            print(table(result))
            return 0 if result.reproduced else REPRODUCTION_FAILED
        elif args.command == "layers":
            print_layers(args)
        elif args.command == "sample":
            from hw5lib.inputs.sample import generate_sample

            info = generate_sample(args.dir, seed=args.seed, mode=args.mode)
            print(f"wrote {len(info.items)} images of {len(info.classes)} classes to {args.dir}")
        elif args.command == "train":
            from hw5lib.inputs.preprocess import Preprocess
            from hw5lib.model.train import TrainConfig, train

            classes_file = args.data / "classes.txt"
            classes = (
                args.classes.split(",")
                if args.classes
                else classes_file.read_text().split()
                if classes_file.is_file()
                else None
            )
            start = time.perf_counter()
            scores = train(
                TrainConfig(
                    data=args.data,
                    out=args.out,
                    widths=args.widths,
                    hidden=args.hidden,
                    epochs=args.epochs,
                    lr=args.lr,
                    seed=args.seed,
                    preprocess=Preprocess(
                        size=(args.size, args.size),
                        channels=args.channels,
                        channel_order=args.channel_order,
                        reader="pil",  # as train always read; recorded in the checkpoint
                    ),
                ),
                classes,
            )
            print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s: {scores}")
        else:
            build_parser().print_help()
            return 2
    except UserError as err:
        if err.__cause__ is not None and args.verbose:
            traceback.print_exception(err.__cause__)  # -v: where the user's code raised
        print(f"hw5: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(
            "hw5: interrupted; every file written is complete and manifest.json lists them; "
            "rerun the same command to finish",
            file=sys.stderr,
        )
        return TERMINATED if isinstance(stop, Terminated) else INTERRUPTED
    return 0


def dataset_lines(dataset: dict, classes: list[str], quiet: bool) -> list[str]:
    """What the data was read as (a CSV's layout, side and pixel range; not under --quiet) and a
    warning naming the files whose label names no class."""
    from hw5lib.inputs.datasets import out_of_range_warning

    lines = []
    if dataset.get("csv") and not quiet:
        csv = dataset["csv"]
        low, high = csv["pixel_range"]
        lines.append(
            f"hw5: {dataset['root']}: {csv['rows']} rows ({csv['layout']}) of "
            f"{csv['side']}x{csv['side']} gray pixels in [{low},{high}]"
            + (", scaled by 255" if high == 1 else "")
        )
    outside = dataset.get("labels_out_of_range")
    if outside:
        named = [(Path(f["file"]).name, f["label"]) for f in outside["files"]]
        warning = out_of_range_warning(named, outside["count"], len(classes))
        lines.append(f"hw5: warning: {warning}")
    return lines


def skipped_line(skipped: list[dict]) -> str:
    from hw5lib.inputs.images import Skipped, skipped_warning

    return skipped_warning([Skipped(Path(s["file"]), s["reason"]) for s in skipped])


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()
