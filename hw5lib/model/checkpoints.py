"""What a checkpoint file is, decided from its bytes before anything is unpickled, and reading it:
torch.save's zip or legacy pickle, TorchScript, or a UserError naming what the file looks like."""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from hw5lib.errors import UserError
from hw5lib.model.unpickling import unpickle


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# torch.save's zip archive, and the magic number that opens its legacy format (a raw pickle).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = torch.serialization.MAGIC_NUMBER.to_bytes(10, "little")
_PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")  # the byte after the PROTO opcode 0x80

# Leading bytes of files mistaken for checkpoints -> what the error calls them.
_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras?)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
)


def describe_bytes(head: bytes) -> str:
    """What a file that is not a checkpoint looks like, from its first bytes."""
    if not head:
        return "empty"
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if head[8:10] == b'{"':  # safetensors: an 8-byte header length, then the JSON header
        return "a safetensors file"
    text = _as_text(head)
    if text is None:
        return "binary data of no format hw5 knows"
    start = text.lstrip().lower()
    if start.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the file itself: run git lfs pull"
    if start.startswith(("<!doctype html", "<html")):
        return "an HTML page: a download link that needs sign-in or sharing?"
    return "a text file"


def _as_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # more than a character cut off at the end of the sample
            return None
        text = head[: err.start].decode("utf-8")
    return text if all(c.isprintable() or c in "\t\n\r\f" for c in text) else None


def checkpoint_format(path: Path) -> str:
    """``"zip"`` (torch.save), ``"legacy"`` (torch.save before 1.6 or with
    ``_use_new_zipfile_serialization=False``) or ``"torchscript"``, decided from the bytes before
    anything is unpickled; any other file is a UserError saying what it looks like."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_ZIP_MAGIC):
        return _zip_format(path)
    if head[:1] == b"\x80" and head[1:2] in _PICKLE_PROTOCOLS:
        if _LEGACY_MAGIC in head[:32]:
            return "legacy"
        raise UserError(
            f"{path} is a Python pickle that torch.save did not write; "
            "save the model with torch.save(model.state_dict(), path)"
        )
    raise UserError(f"{path} is not a PyTorch checkpoint ({describe_bytes(head)})")


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise UserError(
            f"{path} is not a PyTorch checkpoint (a damaged or truncated zip archive)"
        ) from None
    if any(n.endswith("/constants.pkl") for n in names):  # TorchScript zips hold data.pkl too
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "zip"
    what = "a NumPy .npz archive" if names and all(n.endswith(".npy") for n in names) else ""
    raise UserError(
        f"{path} is not a PyTorch checkpoint ({what or 'a zip archive without torch.save data'})"
    )


def read_checkpoint(path: Path, *, trust_pickle: bool = False) -> object:
    """The object in a checkpoint file: a state_dict, a dict holding one, or a whole model
    (weights-only, its classes allow-listed or mapped; fully unpickled only if the user opted in)."""
    fmt = checkpoint_format(path)
    if fmt == "torchscript":
        return load_torchscript(path)
    return unpickle(path, fmt, trust_pickle=trust_pickle).obj


def load_torchscript(path: Path) -> nn.Module:
    with warnings.catch_warnings():  # torch 2.13 calls TorchScript deprecated; it still loads
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as err:
            msg = str(err).partition("\n")[0]
            raise UserError(f"cannot read TorchScript checkpoint {path}: {msg}") from None
