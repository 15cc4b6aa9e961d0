"""Paths as manifest.json and report.pdf record them: relative to the data folder, or a file
name, never a folder of this machine. The same data copied anywhere else, explained into any
output folder, then gives byte-identical manifest.json and report.pdf."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

DATA = "DATA"  # the data folder in a recorded command line
OUT = "OUT"  # the output folder in a recorded command line


def folder_name(root: Path | None) -> str | None:
    """The data folder (or CSV file) by its own name: ``food-11``, not where it lies."""
    return Path(os.path.abspath(root)).name if root is not None else None  # "." has a name too


def relative_name(root: Path | None, path: Path) -> str:
    """``path`` relative to the data folder where it lies inside it, else its file name."""
    if root is not None and root.is_dir():
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.name


def model_spec_name(spec: str) -> str:
    """``--model path/to/net.py:Net`` as ``net.py:Net``."""
    file, sep, cls = spec.rpartition(":")
    return f"{Path(file).name}:{cls}" if sep else Path(spec).name


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def portable_command(argv: Sequence[str], labels: Mapping[Path, str]) -> str:
    """The command line with every path argument in ``labels`` (``--flag=path`` too) replaced
    by its label; numbers are never taken for paths (a folder named ``2`` and ``--filters 2``)."""

    def label(token: str) -> str:
        if token.startswith("--") and "=" in token:
            flag, _, value = token.partition("=")
            return f"{flag}={label(value)}"
        if not token or token.startswith("-") or _is_number(token):
            return token
        return labels.get(Path(token), token)

    return " ".join(label(t) for t in argv)
