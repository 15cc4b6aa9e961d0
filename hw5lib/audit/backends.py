"""Where shards are computed: ``LocalBackend`` (this process, or spawned processes on this
machine) and ``RayBackend`` (Ray tasks on a local Ray or a running cluster; Ray is an optional
extra, requirements-ray.txt). Each yields a shard's records as soon as it is done; the store
(shards.py) writes it then, so an interrupted audit keeps every finished shard.

Every worker computes with one torch thread and deterministic cuDNN: a map's bytes then do not
depend on the machine's core count or on which worker ran the shard."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Protocol

import torch

import hw5lib
from hw5lib.audit.job import AuditJob, Shard
from hw5lib.audit.maps import ShardRecords, audit_shard
from hw5lib.errors import UserError

log = logging.getLogger(__name__)

Done = tuple[Shard, ShardRecords]


class Backend(Protocol):
    def run(self, job: AuditJob, shards: Sequence[Shard]) -> Iterator[Done]:
        """Each shard's records as soon as it is done, in any order."""
        ...


@contextmanager
def deterministic() -> Iterator[None]:
    """One torch thread, deterministic cuDNN; the caller's settings restored after."""
    threads = torch.get_num_threads()
    cudnn = torch.backends.cudnn
    flags = (cudnn.deterministic, cudnn.benchmark)
    torch.set_num_threads(1)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        cudnn.deterministic, cudnn.benchmark = flags


def _worker_setup() -> None:
    """A worker process's settings for its whole life (it only ever computes shards)."""
    torch.set_num_threads(1)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


@dataclass(frozen=True)
class LocalBackend:
    """``processes`` > 1: spawned worker processes (fork after torch has started threads is
    unsafe), each loading the model once; 1: shard after shard in this process."""

    processes: int = 1

    def run(self, job: AuditJob, shards: Sequence[Shard]) -> Iterator[Done]:
        if self.processes <= 1 or len(shards) <= 1:
            with deterministic():
                for shard in shards:
                    yield shard, audit_shard(job, shard)
            return
        context = multiprocessing.get_context("spawn")
        workers = min(self.processes, len(shards))
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_setup) as pool:
            pending: dict[Future[ShardRecords], Shard] = {
                pool.submit(audit_shard, job, shard): shard for shard in shards
            }
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in sorted(done, key=lambda f: pending[f].index):
                        yield pending.pop(future), future.result()
            finally:  # an interrupt or an error: start no further shard
                pool.shutdown(wait=False, cancel_futures=True)


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise UserError(
            "--backend ray needs Ray, an optional extra: pip install -r requirements-ray.txt"
        ) from None
    return ray


def _ray_shard(job: AuditJob, shard: Shard) -> ShardRecords:
    """A Ray task: Ray shows a task its GPU as cuda:0, whichever it is."""
    _worker_setup()
    if torch.device(job.device).type == "cuda":
        job = replace(job, device="cuda")
    return audit_shard(job, shard)


def _result(ray: ModuleType, ref: object) -> ShardRecords:
    """A task's records; a UserError it raised (a checkpoint that does not load) as itself,
    one line, not wrapped in Ray's remote traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, UserError):
            raise cause from None
        raise


@dataclass(frozen=True)
class RayBackend:
    """Shards as Ray tasks, each loading the checkpoint itself (once per Ray worker process):
    a GPU per task where the job runs on CUDA, else a CPU. Joins the Ray this process already
    started; else ``ray.init`` here (``cpus`` of this machine, or the cluster at ``address``,
    which must see the checkpoint and images at the same paths) and shuts it down after."""

    address: str | None = None
    cpus: int | None = None  # a Ray started here: how many CPUs it may use (None: all)

    def run(self, job: AuditJob, shards: Sequence[Shard]) -> Iterator[Done]:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(
                address=self.address,
                num_cpus=self.cpus if self.address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                # the workers import hw5lib from this copy, also on a remote cluster
                runtime_env={"py_modules": [hw5lib]},
            )
        gpu = torch.device(job.device).type == "cuda"
        task = ray.remote(num_gpus=1)(_ray_shard) if gpu else ray.remote(num_cpus=1)(_ray_shard)
        job_ref = ray.put(job)
        pending = {task.remote(job_ref, shard): shard for shard in shards}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                shard = pending.pop(done[0])
                yield shard, _result(ray, done[0])
        finally:
            for ref in pending:  # an interrupt or an error: the rest is not needed
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()
