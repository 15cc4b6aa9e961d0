"""Atomic, byte-reproducible writes: PNG/PDF/JSON/NPZ files that never exist half-written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside ``path``, then ``os.replace``: readers never see a partial
    file and an interrupted run leaves the previous one intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_or_null(obj: object, where: str = "") -> tuple[object, list[str]]:
    """``obj`` with every NaN or infinite float replaced by None, and where each one was (as
    ``path.to[3]: nan``): JSON has no such numbers, and a reader must learn why one is null."""
    if isinstance(obj, float | np.floating) and not np.isfinite(obj):
        return None, [f"{where or '(top)'}: {float(obj)}"]
    if isinstance(obj, dict):
        pairs = [
            (k, finite_or_null(v, f"{where}.{k}" if where else str(k))) for k, v in obj.items()
        ]
        return {k: v for k, (v, _) in pairs}, [p for _, (_, ps) in pairs for p in ps]
    if isinstance(obj, list | tuple):
        items = [finite_or_null(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in items], [p for _, ps in items for p in ps]
    return obj, []


def json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez_compressed`` stamps each entry with the current time; this does not."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.asarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, entry.getvalue())
    return buf.getvalue()


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write_bytes(path, npz_bytes(arrays))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_bytes(Path(path).read_bytes())
