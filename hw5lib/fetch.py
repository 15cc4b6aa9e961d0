"""Fetch the checkpoint with gdown: into a temp file, renamed into place only when complete."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import UserError

HOW_TO_SUPPLY = (
    "set HW5_CHECKPOINT=/path/to/checkpoint.pth, or put your checkpoint's Google Drive link "
    "in CHECKPOINT_URL at the top of hw5.sh"
)


def cached_path(url: str, cache_dir: Path) -> Path:
    """One file per URL, so changing the URL never serves a stale checkpoint."""
    return cache_dir / f"download-{hashlib.sha256(url.encode()).hexdigest()[:12]}.pth"


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
        if os.path.getsize(tmp) == 0:
            raise OSError("the server sent an empty file")
        os.replace(tmp, dest)
    except Exception as err:
        Path(tmp).unlink(missing_ok=True)
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(
            f"could not download the checkpoint from {url} ({reason}); {HOW_TO_SUPPLY}"
        ) from None
    return dest
