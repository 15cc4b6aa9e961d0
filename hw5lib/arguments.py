"""The command line's arguments: the parser built from config.py's fields, the presets, and
the RunConfig a report runs with (the bundled demo, a fetched checkpoint, the recorded
command). Torch-free: ``--help`` answers at once."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from hw5lib.config import COURSE, RunConfig, options
from hw5lib.errors import UserError
from hw5lib.options import GROUPS, ints
from hw5lib.report.portable import DATA, OUT, model_spec_name, portable_command, relative_name

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DATA = ROOT / "data" / "sample"
BUNDLED_CHECKPOINT = ROOT / "checkpoints" / "sample_classifier.pt"
DEFAULT_OUT = ROOT / "out" / "sample"
CHECKPOINT_CACHE = Path(os.environ.get("HW5_CHECKPOINT_CACHE", ROOT / "checkpoints"))

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

Sampled and iterated methods stop once converged (--no-adaptive: always the caps); each
method's cap option below says its stopping rule, and manifest.json records it per image.

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

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(preset: dict | None = None) -> argparse.ArgumentParser:
    """The parser; ``preset``: defaults of the report command that a --preset sets."""
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
    if preset:
        r.set_defaults(**preset)

    lay = sub.add_parser("layers", help="list the model's layers, to pick them by index or name")
    lay.add_argument("--checkpoint", type=Path, help="checkpoint (default: the bundled one)")
    lay.add_argument("--trust-pickle", action="store_true", help="allow a pickled whole model")
    lay.add_argument("--size", type=int, help="input side (default: the checkpoint's, else 128)")
    lay.add_argument("--channels", type=int, choices=(1, 3), help="input channels")
    lay.add_argument("--model", help="your architecture, path/to/file.py:ClassName")
    lay.add_argument("--model-args", help="JSON arguments for --model (object or list)")
    lay.add_argument("--checkpoint-key", help="which state_dict of the checkpoint to list")

    from hw5lib.audit.audit_args import add_parser as add_audit
    from hw5lib.verify import tolerances_help

    add_audit(sub)
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


# The figures a plain run leaves out for time (bench/RESULTS.md): SHAP, the sigma sweep (the
# main figure's sigma, then the seed report's 1-4 x the value range and 0.75).
EXTRAS = {"shap": True, "smooth_sigmas": (0.15, 0.75, 1.0, 2.0, 3.0, 4.0)}
PRESETS: dict[str, dict] = {
    "all-figures": EXTRAS,  # the bundled demo's: its report shows every figure there is
    "hw5-2020": {
        "classes": "food11",
        "training_indices": (83, 4218, 4707, 8598),
        "filter_layers": ("cnn.15",),
        "filters": (0,),
        "conventions": COURSE,
        **EXTRAS,  # the free question's suggestions ("Deep Dream, Shap, others"), the sweep
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
    args = build_parser().parse_args(argv)
    if getattr(args, "preset", None):
        args = build_parser(PRESETS[args.preset]).parse_args(argv)
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


def audit_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig an audit loads its model with: the report's model and input options."""
    if not args.checkpoint.is_file():
        raise UserError(f"--checkpoint {args.checkpoint} is not a file")
    chosen = {name: getattr(args, name) for name, _, _ in options() if hasattr(args, name)}
    return RunConfig(
        data=args.data,
        out=args.out,
        checkpoint=args.checkpoint,
        model_args=parse_model_args(args.model_args),
        **chosen | {"trust": False},
    )
