"""Shared fixtures: a small generated Food-11 set and a tiny checkpoint trained on it (seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hw5lib.inputs.sample import SampleInfo, generate_sample
from hw5lib.model.preprocess import Preprocess
from hw5lib.run.train import TrainConfig, train

# 3 training, 2 validation and 1 testing image per class: 66 images of 11 classes.
SMALL_SET = {"training": 3, "validation": 2, "testing": 1}
TINY_SIZE = (32, 32)  # (H, W): five 2x2 max-pools leave one pixel


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> SampleInfo:
    """The generated sample set in Food-11 layout, with masks/ and classes.txt beside it."""
    return generate_sample(tmp_path_factory.mktemp("small") / "food", seed=0, per_class=SMALL_SET)


@pytest.fixture(scope="session")
def tiny_checkpoint(small_sample: SampleInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Classifier with widths (4,8,8,8,8) and a 32x32 RGB input, two epochs on the small set.

    The checkpoint records its architecture, preprocessing and class names, as `hw5.py train`
    writes them. It is barely better than chance; the tests only need it to run.
    """
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    train(
        TrainConfig(
            data=small_sample.root,
            out=path,
            widths=(4, 8, 8, 8, 8),
            hidden=(16, 16),
            epochs=2,
            preprocess=Preprocess(size=TINY_SIZE, channel_order="rgb", reader="pil"),
        ),
        list(small_sample.classes),
    )
    return path
