"""What an audit worker gets: the job (how to rebuild the model and what to compute, the same
for every shard) and one shard (a fixed slice of the data set's images). Both are frozen and
picklable: a spawned process or a Ray task rebuilds everything from them alone."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from hw5lib.audit.audit_args import DEFAULT_METHODS, MAP_SIDE
from hw5lib.inputs.user_preprocess import import_reader
from hw5lib.model.preprocess import Preprocess

UNLABELLED = -1


@dataclass(frozen=True)
class AuditJob:
    """Everything a worker needs: ``load_classifier``'s arguments, the resolved preprocessing,
    the CAM layer, the maps to compute and how. ``preprocess`` holds no function: a
    --preprocess reader travels as its spec (``reader``) and each worker imports it again."""

    checkpoint: Path
    preprocess: Preprocess
    cam_layer: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    side: int = MAP_SIDE
    seed: int = 0  # in every shard's key; the default maps draw no random numbers
    device: str = "cpu"  # cpu, cuda or cuda:N; a Ray task takes the GPU Ray gives it
    trust_pickle: bool = False
    model_spec: str | None = None
    model_args: dict | list | None = field(default=None, hash=False)  # a dict is unhashable
    checkpoint_key: str | None = None
    reader: str | None = None  # --preprocess path/to/file.py:function

    def __post_init__(self) -> None:
        if self.preprocess.function is not None:  # a function is not picklable: keep its spec
            if self.reader is None:
                raise ValueError("an AuditJob with a --preprocess function needs its spec")
            object.__setattr__(self, "preprocess", replace(self.preprocess, function=None))
        if self.side < 1:
            raise ValueError(f"map side must be positive, not {self.side}")
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        object.__setattr__(self, "methods", tuple(self.methods))

    def reading(self) -> Preprocess:
        """The preprocessing a worker reads images with (the --preprocess function imported)."""
        if self.reader is None:
            return self.preprocess
        return replace(self.preprocess, function=import_reader(self.reader))


@dataclass(frozen=True)
class Shard:
    """A fixed slice of the sorted images: what one task computes and one file stores."""

    index: int
    ids: tuple[str, ...]  # path relative to the data root, posix: the image's name in records
    paths: tuple[str, ...]  # where this machine reads it
    sha256: tuple[str, ...]  # of each file's bytes ("" where it could not be read)
    labels: tuple[int, ...]  # UNLABELLED where the name carries none
    key: str  # sha256 of the ids, their bytes, the model and the settings (shards.shard_key)

    def __len__(self) -> int:
        return len(self.ids)
