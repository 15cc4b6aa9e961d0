"""The audit command's arguments (``hw5.py audit``): its own settings and the report's model
and input options. Imports no torch, so ``hw5.py --help`` stays quick."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from hw5lib.config import options
from hw5lib.errors import UserError
from hw5lib.options import PREPROCESSING, RUN, names

# maps.MAP_METHODS computes the exact ones, sampled_maps.SAMPLED_METHODS LIME and SHAP
MAP_NAMES = ("grad_cam", "layer_cam", "saliency", "lime", "shap")
DEFAULT_METHODS = ("grad_cam", "saliency")  # the cheap exact maps: one backward pass each
# SpRAy clusters pixel-level maps (the paper's LRP): Grad-CAM at the last conv layer is a few
# cells wide and blurs a corner logo into the object (bench/RESULTS.md: the planted mark).
CLUSTERED = "saliency"
MAP_SIDE = 32  # maps are stored area-averaged to MAP_SIDE x MAP_SIDE
MIN_SIDE = 8  # SpRAy pools every map to 8x8
SHARD_SIZE = 64  # images per shard: a task of seconds, a file of a few hundred kB
REPORT_ONLY = {"notes", "budget", "replay"}  # report options that mean nothing to an audit
SHARED = ("device", "cam_layer", "batch_size")  # method settings an audit uses too


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "audit",
        help="every image of a split: maps in resumable shards, per-class strategies (SpRAy)",
        description="Explain every image of a split with the cheap exact maps, cluster each "
        "class's maps (SpRAy) and flag suspected shortcuts; writes OUT/audit.json and "
        "OUT/shards/ (reused by the next run with the same settings).",
    )
    a.add_argument("data", type=Path, help="Food-11 root, ImageFolder, CSV, or one folder")
    a.add_argument("out", type=Path, help="output folder")
    a.add_argument("--split", default="validation", help="split folder (default validation)")
    a.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file")
    a.add_argument("--model-args", help="JSON arguments for --model (object or list)")
    a.add_argument(
        "--maps",
        type=names,
        default=DEFAULT_METHODS,
        help=f"maps per image, of {', '.join(MAP_NAMES)} (default {','.join(DEFAULT_METHODS)})",
    )
    a.add_argument(
        "--cluster",
        help=f"the map SpRAy clusters (default {CLUSTERED} where --maps has it, else the first)",
    )
    a.add_argument("--side", type=int, default=MAP_SIDE, help=f"stored map side ({MAP_SIDE})")
    a.add_argument("--shard-size", type=int, default=SHARD_SIZE, help=f"({SHARD_SIZE})")
    a.add_argument("--backend", choices=("local", "ray"), default="local")
    a.add_argument("--processes", type=int, default=1, help="local worker processes (1)")
    a.add_argument("--address", help="--backend ray: a running cluster's address")
    for name, opt, default in options():
        if (opt.group in (RUN, PREPROCESSING) or name in SHARED) and name not in REPORT_ONLY:
            opt.add_to(a, name, default)
    a.add_argument("--quiet", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class AuditSettings:
    """The audit's own options (the model's and the input's are a RunConfig's)."""

    split: str = "validation"
    maps: tuple[str, ...] = DEFAULT_METHODS
    cluster: str | None = None  # default: the first of ``maps``
    side: int = MAP_SIDE
    shard_size: int = SHARD_SIZE
    backend: str = "local"
    processes: int = 1
    address: str | None = None

    @property
    def clustered(self) -> str:
        return self.cluster or (CLUSTERED if CLUSTERED in self.maps else self.maps[0])

    def check(self) -> None:
        if self.clustered not in self.maps:
            raise UserError(f"--cluster {self.clustered}: not among --maps {','.join(self.maps)}")
        if self.side < MIN_SIDE:
            raise UserError(f"--side must be at least {MIN_SIDE} (SpRAy pools maps to 8x8)")
        if self.shard_size < 1 or self.processes < 1:
            raise UserError("--shard-size and --processes must be positive")


def audit_settings(args: argparse.Namespace) -> AuditSettings:
    return AuditSettings(
        args.split, tuple(args.maps), args.cluster, args.side, args.shard_size, args.backend,
        args.processes, args.address,
    )  # fmt: skip
