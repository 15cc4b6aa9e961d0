"""Fetch the checkpoint with gdown: into a temp file, renamed into place only when complete."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from hw5lib.errors import UserError

HOW_TO_SUPPLY = (
    "set HW5_CHECKPOINT=/path/to/checkpoint.pth, or put your checkpoint's Google Drive link "
    "in CHECKPOINT_URL at the top of hw5.sh"
)


def cached_path(url: str, cache_dir: Path) -> Path:
    """One file per URL, so changing the URL never serves a stale checkpoint."""
    return cache_dir / f"download-{hashlib.sha256(url.encode()).hexdigest()[:12]}.pth"


# torch.save writes a zip archive; the legacy format is a raw pickle (protocol byte 0x80).
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def check_checkpoint_bytes(path: Path) -> None:
    """Refuse what is clearly not a torch file (an HTML page from an unshared Drive link)
    before it is cached under the checkpoint's name."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise OSError("the server sent an empty file")
    if not head.startswith(CHECKPOINT_MAGIC):
        kind = "a web page" if b"<" in head[:64] else "a file that is not a torch checkpoint"
        raise OSError(
            f"the server sent {kind}; is the Drive file shared with 'anyone with the link'?"
        )


def fetch_checkpoint(url: str, cache_dir: Path, *, timeout: float = 60.0) -> Path:
    """Download ``url`` (a Google Drive link, a Drive file id, or any http(s) URL) once."""
    if not url:
        raise UserError(f"no checkpoint given: {HOW_TO_SUPPLY}")
    dest = cached_path(url, cache_dir)
    if dest.is_file():
        return dest
    import gdown  # imported late: only this path needs it (and its requests stack)

    is_url = "://" in url
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            gdown.download(
                url=url if is_url else None,
                id=None if is_url else url,
                output=f,
                quiet=True,
                use_cookies=False,
                timeout=timeout,
            )
        check_checkpoint_bytes(Path(tmp))
        os.replace(tmp, dest)
    except Exception as err:
        Path(tmp).unlink(missing_ok=True)
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(
            f"could not download the checkpoint from {url} ({reason}); {HOW_TO_SUPPLY}"
        ) from None
    return dest
