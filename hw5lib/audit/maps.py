"""One shard's audit: the model rebuilt from the job (once per process), the shard's images
read (a bad one costs that image), their probabilities, and each map method's map for the
predicted class, area-averaged to S x S. Pure: the same job and shard give the same bytes in
any process that runs it single-threaded (backends.py sees to that)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hw5lib.audit.job import UNLABELLED, AuditJob, Shard
from hw5lib.audit.sampled_maps import SAMPLED_METHODS
from hw5lib.inputs.images import load_usable
from hw5lib.methods import attributions, cam, metrics
from hw5lib.model.loading import load_classifier
from hw5lib.model.preprocess import Preprocess
from hw5lib.model.probe import probe_output, take_off_head

log = logging.getLogger(__name__)

# Images per forward/backward pass inside a shard: a fixed batch composition, so a map does not
# depend on which process computed it; small enough for a 128x128 VGG-sized model's backward.
BATCH_SIZE = 32

MapMethod = Callable[[nn.Module, Tensor, Tensor, str], Tensor]
"""``method(model, x [N,C,H,W], target [N], cam_layer) -> [N,H,W]`` non-negative maps."""

MAP_METHODS: dict[str, MapMethod] = {
    "grad_cam": lambda m, x, t, layer: cam.grad_cam(m, x, t, layer, batch_size=BATCH_SIZE),
    "layer_cam": lambda m, x, t, layer: cam.layer_cam(m, x, t, layer, batch_size=BATCH_SIZE),
    "saliency": lambda m, x, t, _layer: attributions.saliency(m, x, t, batch_size=BATCH_SIZE),
}


@dataclass(frozen=True)
class SkippedImage:
    id: str
    reason: str  # "empty file", "truncated", "not an image", ...


@dataclass(frozen=True, eq=False)
class ShardRecords:
    """The readable images of a shard, in order, and what was left out."""

    ids: tuple[str, ...]
    sha256: tuple[str, ...]
    labels: np.ndarray  # int64 [n], UNLABELLED (-1) where none or outside the classes
    prob: np.ndarray  # float32 [n, C]: the model's probabilities (softmax of the logits)
    maps: Mapping[str, np.ndarray]  # method -> float32 [n, S, S], >= 0, for the prediction
    skipped: tuple[SkippedImage, ...] = ()
    samples: Mapping[str, np.ndarray] = field(default_factory=dict)  # sampled method -> [n]

    @property
    def pred(self) -> np.ndarray:
        return self.prob.argmax(axis=1) if len(self.prob) else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Classifier:
    """The job's model as the gradient methods explain it (logits), its output head, and how
    its images are read."""

    model: nn.Module
    head: str  # probe.OutputHead.kind: how probabilities are taken from the logits
    classes: int
    reading: Preprocess  # the job's, with its --preprocess function imported (once)


@lru_cache(maxsize=1)
def load_model(job: AuditJob) -> Classifier:
    """The job's model, loaded as the report loads it (load_classifier, a softmax head taken
    off); cached per process: a worker loads it once for all its shards. No fast path
    (channels_last, folding): the plain model's maps are the ones to store."""
    loaded = load_classifier(
        job.checkpoint,
        trust_pickle=job.trust_pickle,
        model_spec=job.model_spec,
        model_args=job.model_args,
        checkpoint_key=job.checkpoint_key,
    )
    device = torch.device(job.device)
    model = loaded.model.to(device).eval()
    pre = job.preprocess
    head, out = probe_output(model, torch.zeros(1, pre.channels, *pre.size, device=device))
    return Classifier(take_off_head(model, head), head.kind, int(out.shape[1]), job.reading())


def downsample(maps: Tensor, side: int) -> Tensor:
    """[N,H,W] -> [N,side,side] by area averaging (each output pixel the mean of its cell)."""
    return F.adaptive_avg_pool2d(maps[:, None].float(), side)[:, 0]


def audit_shard(job: AuditJob, shard: Shard) -> ShardRecords:
    """Probabilities and every ``job.methods`` map (for the predicted class) of the shard's
    readable images; unreadable ones are listed in ``skipped``."""
    net = load_model(job)
    loaded = load_usable([Path(p) for p in shard.paths], net.reading)
    kept = list(loaded.kept)
    left_out = sorted(set(range(len(shard))) - set(kept))  # in order, as load_usable lists them
    skipped = tuple(
        SkippedImage(shard.ids[i], s.reason) for i, s in zip(left_out, loaded.skipped, strict=True)
    )
    labels = np.array([shard.labels[i] for i in kept], dtype=np.int64)
    labels[(labels < 0) | (labels >= net.classes)] = UNLABELLED
    x = loaded.x.to(torch.device(job.device))  # [n,C,H,W]
    if len(x):
        prob, pred = metrics.predict(net.model, x, batch_size=BATCH_SIZE, head=net.head)
        maps, samples = {}, {}
        for name in job.methods:
            if name in SAMPLED_METHODS:
                found, samples[name] = SAMPLED_METHODS[name](
                    net.model, x, pred, net.reading, net.head, job.seed
                )
            else:
                found = MAP_METHODS[name](net.model, x, pred, job.cam_layer)
            maps[name] = downsample(found, job.side)
    else:  # nothing readable: empty records of the right shapes
        prob = torch.zeros(0, net.classes)
        maps = {name: torch.zeros(0, job.side, job.side) for name in job.methods}
        samples = {n: np.zeros(0, np.int64) for n in job.methods if n in SAMPLED_METHODS}
    if skipped:
        log.info("shard %d: skipped %d unreadable image(s)", shard.index, len(skipped))
    return ShardRecords(
        ids=tuple(shard.ids[i] for i in kept),
        sha256=tuple(shard.sha256[i] for i in kept),
        labels=labels,
        prob=prob.float().cpu().numpy(),
        maps={name: m.float().cpu().numpy() for name, m in maps.items()},
        skipped=skipped,
        samples=samples,
    )
