"""The audit's store: the sorted images cut into fixed shards, each computed once and kept as
``OUT/shards/<index>-<key>.npz``. A shard's key is a sha256 over its images (ids and bytes),
the model's bytes and the settings, never a path of this machine: an interrupted audit resumes
where it stopped, a finished one is reused, and a changed image or setting recomputes exactly
the shards it touches. Files of other keys (earlier settings) are left alone: going back to
those settings reuses them."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hw5lib.audit.audit_args import MAP_NAMES, SHARD_SIZE
from hw5lib.audit.backends import Backend
from hw5lib.audit.job import UNLABELLED, AuditJob, Shard
from hw5lib.audit.maps import ShardRecords, SkippedImage
from hw5lib.audit.sampled_maps import CAPS, SAMPLED_METHODS
from hw5lib.errors import UserError
from hw5lib.inputs.datasets import ImageSet
from hw5lib.model.checkpoints import file_sha256
from hw5lib.report.outputs import write_npz

log = logging.getLogger(__name__)

SHARD_FORMAT = 1  # part of every key: bump when what a shard file holds changes meaning
SHARDS_FOLDER = "shards"


@dataclass(frozen=True, eq=False)
class AuditRecords(ShardRecords):
    """Every shard's records merged in image order, and how this run got them."""

    keys: tuple[str, ...] = ()  # each shard's key, in shard order
    computed: tuple[int, ...] = ()  # the shards this run computed (the others were reused)


def image_id(path: Path, root: Path) -> str:
    """The image's name in the records: its path under the data root, posix (a CSV row:
    ``file.csv#row``)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def image_digests(paths: Sequence[Path]) -> tuple[str, ...]:
    """sha256 of each file's bytes; a CSV row's is its file's with ``#row``; "" for a file that
    cannot be read (the worker then skips it, saying why)."""
    files: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in files:
            try:
                files[path] = file_sha256(path)
            except OSError:
                files[path] = ""
        return files[path]

    out = []
    for path in paths:
        file, hash_sign, row = str(path).rpartition("#")
        if hash_sign and file.lower().endswith(".csv") and not path.is_file():
            whole = digest(Path(file))
            out.append(hashlib.sha256(f"{whole}#{row}".encode()).hexdigest() if whole else "")
        else:
            out.append(digest(path))
    return tuple(out)


def _model_spec(spec: str | None) -> dict | None:
    """--model without this machine's folders: a file by its name and sha256."""
    if spec is None:
        return None
    where, _, name = spec.rpartition(":")
    if where.endswith(".py") and Path(where).is_file():
        return {"file": Path(where).name, "sha256": file_sha256(Path(where)), "name": name}
    return {"module": where, "name": name}


def settings(job: AuditJob) -> dict:
    """What, besides the images, decides a shard's bytes: the model (its file's sha256 and how
    it is built), the preprocessing, the maps and how they are computed."""
    reader = _model_spec(job.reader)  # --preprocess file.py:function, recorded alike
    caps = {m: CAPS[m] for m in job.methods if m in SAMPLED_METHODS}
    return ({"caps": caps} if caps else {}) | {  # only then: earlier keys stay as they were
        "format": SHARD_FORMAT,
        "model": {
            "sha256": file_sha256(job.checkpoint),
            "spec": _model_spec(job.model_spec),
            "args": job.model_args,
            "checkpoint_key": job.checkpoint_key,
            "trust_pickle": job.trust_pickle,
        },
        "preprocess": job.preprocess.to_dict() | {"reader_function": reader},
        "cam_layer": job.cam_layer,
        "methods": list(job.methods),
        "side": job.side,
        "seed": job.seed,
        "device": torch.device(job.device).type,  # a GPU's floats are not the CPU's
        "torch": torch.__version__,
    }


def shard_key(setting: dict, ids: Sequence[str], sha: Sequence[str], labels: Sequence[int]) -> str:
    images = [list(row) for row in zip(ids, sha, labels, strict=True)]
    text = json.dumps(
        {"images": images, "settings": setting}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()


def plan_shards(job: AuditJob, images: ImageSet, size: int = SHARD_SIZE) -> list[Shard]:
    """The images, in their (sorted) order, cut into shards of ``size``, each with its key."""
    unknown = [m for m in job.methods if m not in MAP_NAMES]
    if unknown:
        raise UserError(f"unknown audit map(s) {', '.join(unknown)}; known: {', '.join(MAP_NAMES)}")
    setting = settings(job)
    ids = [image_id(p, images.root) for p in images.paths]
    sha = image_digests(images.paths)
    labels = [UNLABELLED if lb is None else lb for lb in images.labels or [None] * len(ids)]
    shards = []
    for index, start in enumerate(range(0, len(ids), size)):
        part = slice(start, start + size)
        shards.append(
            Shard(
                index=index,
                ids=tuple(ids[part]),
                paths=tuple(str(p) for p in images.paths[part]),
                sha256=sha[part],
                labels=tuple(labels[part]),
                key=shard_key(setting, ids[part], sha[part], labels[part]),
            )
        )
    return shards


def shard_path(out: Path, shard: Shard) -> Path:
    return out / SHARDS_FOLDER / f"{shard.index:05d}-{shard.key[:16]}.npz"


def write_shard(path: Path, shard: Shard, records: ShardRecords) -> None:
    """One shard file, written atomically (a temp file beside it, then os.replace)."""
    write_npz(
        path,
        key=np.array(shard.key),
        ids=np.array(records.ids, dtype=str),
        sha256=np.array(records.sha256, dtype=str),
        labels=records.labels,
        prob=records.prob,
        skipped_ids=np.array([s.id for s in records.skipped], dtype=str),
        skipped_reasons=np.array([s.reason for s in records.skipped], dtype=str),
        **{f"map_{name}": m for name, m in records.maps.items()},
        **{f"samples_{name}": c for name, c in records.samples.items()},
    )


def read_shard(path: Path, shard: Shard, methods: Sequence[str]) -> ShardRecords | None:
    """The shard's stored records, or None when the file is missing, unreadable or not this
    shard's (another key, other images, a map missing)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != shard.key:
                return None
            records = ShardRecords(
                ids=tuple(str(s) for s in f["ids"]),
                sha256=tuple(str(s) for s in f["sha256"]),
                labels=f["labels"],
                prob=f["prob"],
                maps={name: f[f"map_{name}"] for name in methods},
                skipped=tuple(
                    SkippedImage(str(i), str(r))
                    for i, r in zip(f["skipped_ids"], f["skipped_reasons"], strict=True)
                ),
                samples={n: f[f"samples_{n}"] for n in methods if n in SAMPLED_METHODS},
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        log.warning("shard file %s is unreadable (%s): computing it again", path.name, err)
        return None
    named = set(records.ids) | {s.id for s in records.skipped}
    return records if named == set(shard.ids) else None


def merge(
    job: AuditJob, parts: Sequence[ShardRecords], keys: tuple[str, ...], computed: tuple[int, ...]
) -> AuditRecords:
    """The shards' records concatenated in shard order (so in image order)."""
    no_maps = np.zeros((0, job.side, job.side), np.float32)  # the shapes of no images at all
    return AuditRecords(
        ids=tuple(i for p in parts for i in p.ids),
        sha256=tuple(s for p in parts for s in p.sha256),
        labels=np.concatenate([np.zeros(0, np.int64), *(p.labels for p in parts)]),
        prob=np.concatenate([p.prob for p in parts]) if parts else np.zeros((0, 0), np.float32),
        maps={m: np.concatenate([no_maps, *(p.maps[m] for p in parts)]) for m in job.methods},
        skipped=tuple(s for p in parts for s in p.skipped),
        samples={
            m: np.concatenate([np.zeros(0, np.int64), *(p.samples[m] for p in parts)])
            for m in job.methods
            if m in SAMPLED_METHODS
        },
        keys=keys,
        computed=computed,
    )


def run_shards(
    job: AuditJob,
    images: ImageSet,
    out: Path,
    backend: Backend,
    *,
    shard_size: int = SHARD_SIZE,
    progress: bool = True,
) -> AuditRecords:
    """Every image's records: the shards stored under ``out`` with a matching key reused, the
    others computed by ``backend`` and each written as soon as it is done (an interrupted run
    leaves only whole shard files; the next one computes the rest)."""
    shards = plan_shards(job, images, shard_size)
    folder = Path(out) / SHARDS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".*.npz.*.tmp"):  # a killed run's half-written file (the run's lock
        tmp.unlink(missing_ok=True)  # on OUT means no other run is writing here)
    done = {s.index: r for s in shards if (r := read_shard(shard_path(out, s), s, job.methods))}
    missing = [s for s in shards if s.index not in done]
    log.info("audit: %d shard(s) stored, %d to compute", len(done), len(missing))
    with tqdm(total=len(shards), initial=len(done), unit="shard", disable=not progress) as bar:
        for shard, records in backend.run(job, missing):
            write_shard(shard_path(out, shard), shard, records)
            done[shard.index] = records
            bar.update()
    parts = [done[s.index] for s in shards]
    computed = tuple(s.index for s in missing)
    return merge(job, parts, tuple(s.key for s in shards), computed)
