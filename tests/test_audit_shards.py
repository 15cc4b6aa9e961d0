"""The audit's per-image maps and their shard store: the maps are those of the methods run one
image at a time; an interrupted audit resumes to the same arrays as an uninterrupted one; a
finished one is reused; 1 process, 2 processes and a real local Ray (2 CPUs) agree bit for bit;
a corrupt image costs that image."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hw5lib.audit.backends import Done, LocalBackend, RayBackend
from hw5lib.audit.job import AuditJob, Shard
from hw5lib.audit.maps import ShardRecords
from hw5lib.audit.shards import (
    SHARDS_FOLDER,
    AuditRecords,
    plan_shards,
    run_shards,
    shard_path,
)
from hw5lib.errors import UserError
from hw5lib.inputs.datasets import ImageSet, label_of, load_split, open_dataset
from hw5lib.inputs.images import load_inputs
from hw5lib.inputs.sample import SampleInfo
from hw5lib.methods.attributions import saliency
from hw5lib.methods.cam import default_cam_layer, grad_cam
from hw5lib.model.loading import load_classifier

SHARD = 8  # the small set's 22 validation images: shards of 8, 8 and 6


def audit_job(checkpoint: Path, **changes: object) -> AuditJob:
    """The job the driver builds: the checkpoint's own preprocessing, the default CAM layer."""
    loaded = load_classifier(checkpoint)
    pre = loaded.preprocess
    assert pre is not None
    layer = default_cam_layer(loaded.model, (pre.channels, *pre.size))
    return replace(AuditJob(checkpoint=checkpoint, preprocess=pre, cam_layer=layer), **changes)


@pytest.fixture(scope="module")
def images(small_sample: SampleInfo) -> ImageSet:
    return open_dataset(small_sample.root)  # the validation split


@pytest.fixture(scope="module")
def job(tiny_checkpoint: Path) -> AuditJob:
    return audit_job(tiny_checkpoint)


@pytest.fixture(scope="module")
def fresh(
    job: AuditJob, images: ImageSet, tmp_path_factory: pytest.TempPathFactory
) -> AuditRecords:
    """An uninterrupted audit, in process: what every other way of running it must give."""
    out = tmp_path_factory.mktemp("fresh")
    return run_shards(job, images, out, LocalBackend(1), shard_size=SHARD, progress=False)


class Counting:
    """A backend that counts the shards it computes and can stop (Ctrl-C) after ``stop_after``."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.computed: list[int] = []
        self.stop_after = stop_after

    def run(self, job: AuditJob, shards: Sequence[Shard]) -> Iterator[Done]:
        for shard, records in LocalBackend(1).run(job, shards):
            if len(self.computed) == self.stop_after:
                raise KeyboardInterrupt
            self.computed.append(shard.index)
            yield shard, records


def assert_same(a: ShardRecords, b: ShardRecords) -> None:
    """Bit for bit: the same ids, digests, labels, probabilities, maps and skipped images."""
    assert a.ids == b.ids and a.sha256 == b.sha256 and a.skipped == b.skipped
    assert np.array_equal(a.labels, b.labels)
    assert a.prob.dtype == b.prob.dtype == np.float32 and np.array_equal(a.prob, b.prob)
    assert a.maps.keys() == b.maps.keys()
    for name in a.maps:
        assert a.maps[name].dtype == np.float32
        assert np.array_equal(a.maps[name], b.maps[name]), name


def stored(out: Path) -> list[str]:
    return sorted(p.name for p in (out / SHARDS_FOLDER).iterdir())


def test_maps_are_those_of_each_image_alone(
    job: AuditJob, images: ImageSet, fresh: AuditRecords, tiny_checkpoint: Path
) -> None:
    model = load_classifier(tiny_checkpoint).model
    paths = images.paths
    assert fresh.ids == tuple(p.name for p in paths) == tuple(sorted(fresh.ids))
    assert fresh.labels.tolist() == [label_of(p) for p in paths]
    n, side = len(paths), job.side
    assert fresh.prob.shape == (n, 11) and set(fresh.maps) == {"grad_cam", "saliency"}
    assert all(m.shape == (n, side, side) and (m >= 0).all() for m in fresh.maps.values())
    assert job.preprocess.size == (side, side)  # maps at the input side: no averaging here
    for i in (0, 9, n - 1):  # one image of each shard
        x = load_inputs([paths[i]], job.preprocess)
        prob = model(x).softmax(1).detach()
        pred = prob.argmax(1)
        np.testing.assert_allclose(fresh.prob[i], prob[0].numpy(), rtol=1e-4, atol=1e-6)
        for name, want in (
            ("grad_cam", grad_cam(model, x, pred, job.cam_layer)[0]),
            ("saliency", saliency(model, x, pred)[0]),
        ):
            scale = float(want.abs().max()) or 1.0
            np.testing.assert_allclose(fresh.maps[name][i], want.numpy(), atol=1e-4 * scale)
    assert float(fresh.maps["saliency"].max()) > 0


def test_smaller_side_is_the_mean_of_each_cell(
    job: AuditJob, images: ImageSet, fresh: AuditRecords, tmp_path: Path
) -> None:
    small = run_shards(replace(job, side=8), images, tmp_path, LocalBackend(1), progress=False)
    for name, full in fresh.maps.items():  # 32 x 32 -> 8 x 8: means of 4 x 4 cells
        want = full.reshape(len(full), 8, 4, 8, 4).mean(axis=(2, 4))
        np.testing.assert_allclose(small.maps[name], want, rtol=1e-4, atol=1e-7)


def test_interrupted_audit_resumes_to_the_same_arrays_and_then_reuses_them(
    job: AuditJob, images: ImageSet, fresh: AuditRecords, tmp_path: Path
) -> None:
    shards = plan_shards(job, images, SHARD)
    assert len(shards) == 3
    with pytest.raises(KeyboardInterrupt):
        run_shards(job, images, tmp_path, Counting(stop_after=1), shard_size=SHARD, progress=False)
    assert stored(tmp_path) == [shard_path(tmp_path, shards[0]).name]  # whole files only
    rerun = Counting()
    resumed = run_shards(job, images, tmp_path, rerun, shard_size=SHARD, progress=False)
    assert rerun.computed == [1, 2] and resumed.computed == (1, 2)
    assert_same(resumed, fresh)
    again = Counting()
    reused = run_shards(job, images, tmp_path, again, shard_size=SHARD, progress=False)
    assert again.computed == [] and reused.computed == ()
    assert_same(reused, fresh)
    assert reused.keys == fresh.keys == tuple(s.key for s in shards)


def test_a_changed_setting_makes_new_keys_and_leaves_old_files(
    job: AuditJob, images: ImageSet, tmp_path: Path
) -> None:
    run_shards(job, images, tmp_path, LocalBackend(1), shard_size=SHARD, progress=False)
    before = stored(tmp_path)
    changed = Counting()
    run_shards(replace(job, side=16), images, tmp_path, changed, shard_size=SHARD, progress=False)
    assert changed.computed == [0, 1, 2]
    after = stored(tmp_path)
    assert set(before) < set(after) and len(after) == 2 * len(before)
    keys = {s.key for s in plan_shards(job, images, SHARD)}
    assert keys.isdisjoint(s.key for s in plan_shards(replace(job, side=16), images, SHARD))
    assert keys.isdisjoint(s.key for s in plan_shards(replace(job, seed=1), images, SHARD))


def test_a_damaged_shard_file_is_computed_again(
    job: AuditJob, images: ImageSet, fresh: AuditRecords, tmp_path: Path
) -> None:
    run_shards(job, images, tmp_path, LocalBackend(1), shard_size=SHARD, progress=False)
    shard = plan_shards(job, images, SHARD)[1]
    shard_path(tmp_path, shard).write_bytes(b"PK\x03\x04 cut short")
    counting = Counting()
    again = run_shards(job, images, tmp_path, counting, shard_size=SHARD, progress=False)
    assert counting.computed == [1]
    assert_same(again, fresh)


KILLED = """
import os, signal, sys
from pathlib import Path
from hw5lib.audit.backends import LocalBackend
from hw5lib.audit.shards import run_shards
from hw5lib.inputs.datasets import open_dataset
sys.path.insert(0, sys.argv[4])
from test_audit_shards import audit_job

class KilledAfterTwo:
    def run(self, job, shards):
        for n, done in enumerate(LocalBackend(1).run(job, shards)):
            if n == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            yield done

job = audit_job(Path(sys.argv[1]))
run_shards(job, open_dataset(Path(sys.argv[2])), Path(sys.argv[3]), KilledAfterTwo(),
           shard_size=4, progress=False)
"""


def test_an_audit_killed_half_way_leaves_whole_shards_and_resumes(
    job: AuditJob, images: ImageSet, fresh: AuditRecords, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    tests = Path(__file__).resolve().parent
    args = [str(tiny_checkpoint), str(images.root), str(tmp_path), str(tests)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILLED, *args], env=env, cwd=tests.parent)
    assert done.returncode == -signal.SIGKILL
    shards = plan_shards(job, images, 4)
    assert stored(tmp_path) == [shard_path(tmp_path, s).name for s in shards[:2]]
    counting = Counting()
    resumed = run_shards(job, images, tmp_path, counting, shard_size=4, progress=False)
    assert counting.computed == [2, 3, 4, 5]
    # shards of 4 are other batches than shards of 8: equal to within rounding, ids exactly
    assert resumed.ids == fresh.ids
    for name in fresh.maps:
        np.testing.assert_allclose(resumed.maps[name], fresh.maps[name], rtol=1e-4, atol=1e-6)


def test_two_processes_give_the_bytes_of_one(
    job: AuditJob, images: ImageSet, fresh: AuditRecords, tmp_path: Path
) -> None:
    two = run_shards(job, images, tmp_path, LocalBackend(2), shard_size=SHARD, progress=False)
    assert two.computed == (0, 1, 2)
    assert_same(two, fresh)


def test_a_corrupt_image_is_skipped_and_the_others_kept(
    job: AuditJob, images: ImageSet, fresh: AuditRecords, tmp_path: Path
) -> None:
    folder = tmp_path / "validation"
    shutil.copytree(images.root, folder)
    bad, empty = sorted(folder.iterdir())[3], sorted(folder.iterdir())[12]
    bad.write_bytes(b"\xff\xd8\xff not a JPEG after all")
    empty.write_bytes(b"")
    out = tmp_path / "out"
    records = run_shards(job, load_split(folder), out, LocalBackend(1), progress=False)
    assert [s.id for s in records.skipped] == [bad.name, empty.name]
    assert all(s.reason for s in records.skipped)
    kept = [i for i, name in enumerate(fresh.ids) if name not in (bad.name, empty.name)]
    assert records.ids == tuple(fresh.ids[i] for i in kept)
    assert records.prob.shape == (len(kept), 11)
    np.testing.assert_allclose(records.prob, fresh.prob[kept], rtol=1e-4, atol=1e-6)
    # the corrupt file's bytes are part of its shard's key: mending it computes the shard again
    shutil.copy(images.root / bad.name, bad)
    shutil.copy(images.root / empty.name, empty)
    counting = Counting()
    mended = run_shards(job, load_split(folder), out, counting, progress=False)
    assert counting.computed == [0] and mended.skipped == ()


def test_ray_missing_is_one_line_saying_what_to_install(
    job: AuditJob, images: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UserError, match=re.escape("pip install -r requirements-ray.txt")):
        run_shards(job, images, tmp_path, RayBackend(), progress=False)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[object]:
    """A real local Ray of 2 CPUs for this module; the workers import hw5lib from this copy."""
    import ray  # requirements-ray.txt, part of requirements-dev.txt

    import hw5lib

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"py_modules": [hw5lib]},
    )
    yield ray
    ray.shutdown()


def test_ray_tasks_give_the_bytes_of_local_processes(
    local_ray: object,
    job: AuditJob,
    images: ImageSet,
    fresh: AuditRecords,
    tmp_path: Path,
) -> None:
    assert not torch.cuda.is_available() or job.device == "cpu"
    records = run_shards(job, images, tmp_path, RayBackend(), shard_size=SHARD, progress=False)
    assert records.computed == (0, 1, 2)
    assert_same(records, fresh)
    assert local_ray.is_initialized()  # joined, not shut down: the Ray was the caller's


def test_a_ray_task_user_error_comes_back_as_one_line(
    local_ray: object, job: AuditJob, images: ImageSet, tmp_path: Path
) -> None:
    bad = tmp_path / "notes.pt"
    bad.write_text("these are my notes, not a checkpoint\n")
    with pytest.raises(UserError) as info:
        run_shards(replace(job, checkpoint=bad), images, tmp_path / "out", RayBackend())
    assert type(info.value).__module__.startswith("hw5lib") and "\n" not in str(info.value)
    assert list((tmp_path / "out" / SHARDS_FOLDER).iterdir()) == []
