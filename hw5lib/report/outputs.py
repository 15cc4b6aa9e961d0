"""Atomic, byte-reproducible writes: PNG/PDF/JSON/NPZ files that never exist half-written; the
output folder checked writable and locked for one run at a time."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hw5lib.errors import UserError

if sys.platform == "win32":  # no advisory locks on Windows: runs are not guarded
    fcntl = None
else:
    import fcntl

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------- the output folder of one run

LOCK_NAME = ".hw5.lock"  # held by the run writing the folder; holds its pid


def cannot_write(out: Path, err: OSError) -> UserError:
    """The one line for an output folder this user cannot create or write into."""
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    why = f"{blocker} is a file, not a folder" if blocker else (err.strerror or str(err))
    return UserError(f"cannot write the output folder {out}: {why}; give a folder you can write to")


def check_writable(out: Path) -> None:
    """A user error if ``out`` clearly cannot be written (a file on its path, a folder this
    user may not write), creating nothing: what a run checks before any other work."""
    out = Path(out)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise cannot_write(out, NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise cannot_write(out, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))


def writable_folder(out: Path) -> None:
    """Create ``out`` if needed and make sure files can be written into it; a user error
    otherwise (a path under a file, no permission, a read-only disk), before any work."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".hw5.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise cannot_write(out, err) from None


def _holder(fd: int) -> str:
    """`` (pid N)`` from a held lock file, or nothing while its holder has not written it."""
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _lock(path: Path) -> int | None:
    """A descriptor holding an exclusive lock on ``path``, or a user error naming the run that
    holds it. A lock left by a dead run is free (the kernel releases it with the process);
    None where the file system cannot lock."""
    if fcntl is None:  # not on POSIX
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise cannot_write(path.parent, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(
                f"another run{holder} is writing to the output folder {path.parent}; wait for "
                "it to finish or give another folder"
            ) from None
        except OSError as err:  # a file system without locks (some network mounts)
            os.close(fd)
            log.warning("cannot lock %s (%s): a second run could write there too", path, err)
            return None
        try:  # the run that held it may have removed the file between our open and lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


@contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """``out`` created, checked writable and locked (``OUT/.hw5.lock``) for one run: a second
    run writing the same folder at once would mix two runs' files under one manifest. The lock
    goes in ``finally``, on Ctrl-C and SIGTERM too."""
    out = Path(out)
    writable_folder(out)
    path = out / LOCK_NAME
    fd = _lock(path)
    try:
        yield out
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # while still held: a waiting run then sees it gone
            os.close(fd)
