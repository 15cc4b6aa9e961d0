"""Command line: argparse -> frozen configs; user mistakes become one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from hw5lib.arguments import (
    BUNDLED_CHECKPOINT,
    build_parser,
    parse_args,
    parse_model_args,
    report_config,
)
from hw5lib.errors import Terminated, UserError

# Exit statuses besides 0 (done) and 2 (a user mistake, one line says which).
STAGE_FAILED = 3  # the report was written, but a stage failed (manifest.json: failures)
REPRODUCTION_FAILED = 1  # verify: some figure differs from the submitted one or is missing
INTERRUPTED, TERMINATED = 130, 143  # Ctrl-C / SIGTERM: what was written is complete and listed


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
        elif args.command == "audit":
            from hw5lib.arguments import audit_config
            from hw5lib.audit.audit_args import audit_settings
            from hw5lib.audit.command import run_audit

            record = run_audit(audit_config(args), audit_settings(args), progress=not args.quiet)
            for line in audit_lines(record, args.out):
                print(line)
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
            from hw5lib.model.preprocess import Preprocess
            from hw5lib.run.train import TrainConfig, train

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


def audit_lines(record: dict, out: Path) -> list[str]:
    data, acc = record["data"], record["accuracy"]
    lines = [
        f"audited {data['images']} images of {data['name']}/{data['split']}"
        + (f", accuracy {acc:.3f}" if acc is not None else "")
        + f"; wrote {out}/audit.json"
        + (", audit.pdf" if (out / "audit.pdf").is_file() else "")
        + " and shards/"
    ]
    if data["skipped"]:
        lines.append(f"skipped {len(data['skipped'])} unreadable image(s), listed in audit.json")
    flags = record["flagged"]
    lines.append(f"{len(flags)} suspected shortcut(s)" + (":" if flags else ""))
    lines += [
        f"  {f['class']}"
        + (f" cluster {f['cluster']}" if f["cluster"] is not None else "")
        + f": {f['reason']}"
        for f in flags
    ]
    return lines


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
