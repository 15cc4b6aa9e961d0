"""The bundled checkpoint on the generated sample set: explanations land on the object.

These are the yardstick numbers the report quotes; they would fail if a method, the mask
bookkeeping or the preprocessing (e.g. channel order) broke.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hw5lib.arguments import BUNDLED_CHECKPOINT
from hw5lib.inputs.datasets import load_split
from hw5lib.inputs.images import load_inputs
from hw5lib.inputs.masks import load_mask
from hw5lib.inputs.sample import generate_sample
from hw5lib.methods import attributions, cam, faithfulness, metrics, randomization
from hw5lib.model.loading import load_classifier


@pytest.fixture(scope="module")
def validation(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sample")
    generate_sample(root, seed=0, per_class={"training": 0, "validation": 4, "testing": 0})
    loaded = load_classifier(BUNDLED_CHECKPOINT)
    split = load_split(root / "validation")
    x = load_inputs(split.paths, loaded.preprocess)
    masks = []
    for p in split.paths:
        m = load_mask(root, p)
        im = Image.fromarray(m.astype(np.uint8) * 255).resize((128, 128), Image.Resampling.NEAREST)
        masks.append(np.asarray(im) > 127)
    labels = torch.tensor(split.labels)
    return loaded.model, x, labels, torch.from_numpy(np.stack(masks))


def test_bundled_checkpoint_classifies_the_sample_set(validation) -> None:
    model, x, labels, _ = validation
    _, preds = metrics.predict(model, x)
    assert (preds == labels).float().mean() >= 0.9


def test_saliency_mass_inside_object_is_far_above_its_area(validation) -> None:
    model, x, labels, masks = validation
    maps = attributions.saliency(model, x, labels)
    inside = metrics.mass_inside(maps, masks).mean()
    area = metrics.mask_fraction(masks).mean()
    assert inside > 3 * area


def test_grad_cam_points_at_the_object(validation) -> None:
    model, x, labels, masks = validation
    layer = cam.default_cam_layer(model, (3, 128, 128))
    assert layer == "cnn.18"
    maps = cam.grad_cam(model, x, labels, layer)
    assert metrics.pointing_game(maps, masks).float().mean() >= 0.8


def test_sanity_check_flags_the_edge_detector_but_not_grad_cam(validation) -> None:
    model, x, labels, _ = validation
    gen = torch.Generator().manual_seed(0)
    edge = randomization.randomization_check(
        faithfulness.edge_explain, model, x, labels, n_top=5, generator=gen
    )
    gradcam = randomization.randomization_check(
        lambda m, xb, t: cam.grad_cam(m, xb, t, "cnn.18"), model, x, labels, n_top=5, generator=gen
    )
    assert edge["flagged"] and edge["mean"] > 0.99
    assert not gradcam["flagged"]


def test_bundled_checkpoint_records_its_preprocessing() -> None:
    loaded = load_classifier(Path(BUNDLED_CHECKPOINT))
    assert loaded.preprocess is not None and loaded.preprocess.channel_order == "rgb"
    assert loaded.classes is not None and len(loaded.classes) == 11
