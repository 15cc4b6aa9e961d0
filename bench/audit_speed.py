"""How fast the audit computes every image's maps (Grad-CAM + saliency, stored 32x32): images
per second per core, in this process vs 2 spawned processes vs Ray tasks on a local Ray of
2 CPUs, and what starting Ray costs. Each run is from scratch (a fresh output folder: nothing
reused), so worker start and model loading are in its time.

    .venv/bin/python bench/audit_speed.py [--data data/sample] [--split validation]

Models: the bundled demo checkpoint, and the full-size HW3 Classifier (widths 64..512 at
128x128, seeded random weights: speed does not depend on what the weights learnt).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hw5lib.audit.audit_args import SHARD_SIZE  # noqa: E402
from hw5lib.audit.backends import LocalBackend, RayBackend  # noqa: E402
from hw5lib.audit.job import AuditJob  # noqa: E402
from hw5lib.audit.shards import run_shards  # noqa: E402
from hw5lib.inputs.datasets import open_dataset  # noqa: E402
from hw5lib.methods.cam import default_cam_layer  # noqa: E402
from hw5lib.model.loading import load_classifier, save_checkpoint  # noqa: E402
from hw5lib.model.preprocess import FOOD11_CLASSES, Preprocess  # noqa: E402
from model import Classifier  # noqa: E402


def job_for(checkpoint: Path) -> AuditJob:
    """The job the driver builds: the checkpoint's preprocessing, the default CAM layer."""
    loaded = load_classifier(checkpoint)
    pre = loaded.preprocess or Preprocess()
    layer = default_cam_layer(loaded.model, (pre.channels, *pre.size))
    return AuditJob(checkpoint=checkpoint, preprocess=pre, cam_layer=layer)


def full_size(folder: Path) -> Path:
    """The HW3 Classifier at its default widths, seeded, saved as `hw5.py train` saves."""
    torch.manual_seed(0)
    path = folder / "hw3_full.pt"
    save_checkpoint(path, Classifier(), {}, Preprocess(), list(FOOD11_CLASSES))
    return path


def timed(job: AuditJob, images: object, backend: object, shard_size: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_shards(job, images, Path(out), backend, shard_size=shard_size, progress=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "sample")
    parser.add_argument("--split", default="validation")
    parser.add_argument(
        "--checkpoint", type=Path, default=ROOT / "checkpoints" / "sample_classifier.pt"
    )
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE)
    args = parser.parse_args()
    import ray

    images = open_dataset(args.data, (args.split,))
    n = len(images)
    print(f"{n} images of {args.data.name}/{args.split}, shards of {args.shard_size}; "
          f"{torch.get_num_threads()} torch threads available, each worker uses 1")  # fmt: skip
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"py_modules": [__import__("hw5lib")]})  # fmt: skip
    print(f"Ray start (ray.init, 2 CPUs): {time.perf_counter() - start:.1f} s")
    with tempfile.TemporaryDirectory() as folder:
        for name, checkpoint in (
            ("bundled demo", args.checkpoint),
            ("HW3 full", full_size(Path(folder))),
        ):
            job = job_for(checkpoint)
            runs = {
                "local 1 process": (LocalBackend(1), 1),
                "local 2 processes": (LocalBackend(2), 2),
                "Ray, 2 CPUs (first: workers start)": (RayBackend(), 2),
                "Ray, 2 CPUs (warm workers)": (RayBackend(), 2),
            }
            for label, (backend, cores) in runs.items():
                seconds = timed(job, images, backend, args.shard_size)
                print(f"{name:12s} {label:36s} {seconds:6.1f} s  {n / seconds:6.1f} img/s  "
                      f"{n / seconds / cores:6.1f} img/s/core")  # fmt: skip
    ray.shutdown()


if __name__ == "__main__":
    main()
