"""``hw5.py audit DATA OUT``: every image of a split through the model and its cheap exact maps
(stored in shards, resumable), SpRAy per class, and audit.json. The model is
loaded and its input convention settled as a report run does (``run.subject.prepare``)."""

from __future__ import annotations

import logging
from pathlib import Path

from hw5lib.audit.audit_args import AuditSettings
from hw5lib.audit.backends import LocalBackend, RayBackend
from hw5lib.audit.job import AuditJob
from hw5lib.audit.sampled_maps import CAPS
from hw5lib.audit.shards import AuditRecords, run_shards
from hw5lib.audit.summary import AUDIT_VERSION, AuditSummary, audit_masks, summarize
from hw5lib.config import RunConfig
from hw5lib.inputs.datasets import ImageSet, open_dataset, within_classes
from hw5lib.report.audit_pdf import audit_pdf_bytes
from hw5lib.report.audit_tables import AUDIT_JSON
from hw5lib.report.outputs import atomic_write_bytes, output_folder, write_json
from hw5lib.report.portable import model_spec_name
from hw5lib.run.image_choice import mask_root
from hw5lib.run.subject import prepare
from hw5lib.stages.q4_cams import cam_layer_name

logger = logging.getLogger(__name__)

AUDIT_PDF = "audit.pdf"


def backend_of(settings: AuditSettings) -> LocalBackend | RayBackend:
    if settings.backend == "ray":
        return RayBackend(settings.address)
    return LocalBackend(settings.processes)


def audit_images(cfg: RunConfig, split: str, classes: int) -> ImageSet:
    """The split's images (DATA itself where it has no such split), labels past the model's
    classes read as unlabelled."""
    return within_classes(open_dataset(cfg.data, (split,)), classes)


def audit_record(
    cfg: RunConfig, job: AuditJob, settings: AuditSettings, model_sha256: str, classes: list[str],
    images: ImageSet, records: AuditRecords, summary: AuditSummary,
) -> dict:  # fmt: skip
    """audit.json: what was audited with what, every image's prediction, the per-class
    strategies and the flags. Nothing of this machine (paths, backend, workers, time)."""
    split = images.root.relative_to(cfg.data).as_posix() if images.root != cfg.data else "."
    return {
        "audit": AUDIT_VERSION,
        "data": {
            "name": cfg.data.name,
            "split": split,
            "images": len(records.ids),
            "skipped": [{"id": s.id, "reason": s.reason} for s in records.skipped],
        },
        "model": {
            "checkpoint": cfg.checkpoint.name,
            "sha256": model_sha256,
            "model": model_spec_name(cfg.model) if cfg.model else None,
            "classes": classes,
            "cam_layer": job.cam_layer,
            "preprocess": job.preprocess.to_dict(),
        },
        "settings": {
            "maps": list(job.methods),
            "side": job.side,
            "seed": job.seed,
            "shard_size": settings.shard_size,
            "clustered": settings.clustered,
            **({"caps": {m: CAPS[m] for m in records.samples}} if records.samples else {}),
        },
        "shards": list(records.keys),
        "images": [
            {"id": i, "label": int(lb), "pred": int(p), "p": round(float(pr[p]), 4)}
            | (
                {"samples": {m: int(c[n]) for m, c in records.samples.items()}}
                if records.samples
                else {}
            )
            for n, (i, lb, p, pr) in enumerate(
                zip(records.ids, records.labels, records.pred, records.prob, strict=True)
            )
        ],
        **summary.to_json(),
    }


def write_audit_pdf(out: Path, record: dict, split_root: Path) -> None:
    """audit.pdf next to audit.json; a failure to draw costs the PDF (a stale one is removed:
    it would describe another audit), never audit.json."""
    try:
        atomic_write_bytes(out / AUDIT_PDF, audit_pdf_bytes(record, split_root))
    except Exception as err:  # the audit itself is done and written
        logger.warning("audit.pdf not written (%s: %s)", type(err).__name__, err)
        (out / AUDIT_PDF).unlink(missing_ok=True)


def run_audit(cfg: RunConfig, settings: AuditSettings, *, progress: bool = True) -> dict:
    """Audit ``cfg.data``'s split into ``cfg.out``; returns audit.json's content."""
    settings.check()
    with output_folder(cfg.out):
        run = prepare(cfg)
        job = AuditJob(
            checkpoint=cfg.checkpoint, preprocess=run.pre, cam_layer=cam_layer_name(run),
            methods=settings.maps, side=settings.side, seed=cfg.seed, device=str(run.device),
            trust_pickle=cfg.trust_pickle, model_spec=cfg.model, model_args=cfg.model_args,
            checkpoint_key=cfg.checkpoint_key, reader=cfg.preprocess,
        )  # fmt: skip
        images = audit_images(cfg, settings.split, len(run.classes))
        records = run_shards(
            job, images, cfg.out, backend_of(settings), shard_size=settings.shard_size,
            progress=progress,
        )  # fmt: skip
        paths = [images.root / i for i in records.ids]
        masks = audit_masks(mask_root(cfg.data), paths, settings.side)
        summary = summarize(records, run.classes, settings.clustered, masks, cfg.seed)
        record = audit_record(
            cfg, job, settings, run.loaded.sha256, run.classes, images, records, summary
        )
        write_json(cfg.out / AUDIT_JSON, record)
        write_audit_pdf(cfg.out, record, images.root)
        return record
