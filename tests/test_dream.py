"""DeepDream raises the layer's response, stays within its caps, and is repeatable."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hw5lib.methods.dream import deep_dream
from hw5lib.model.hooks import hook_count
from model import Classifier

SIDE = 32
FAST = {"steps": 4, "octaves": 2, "jitter": 2}


def tiny_classifier() -> Classifier:
    model = Classifier(widths=(4, 8, 8, 8, 8), hidden=(16, 16), input_size=SIDE)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def images(n: int = 3) -> Tensor:
    return torch.randn(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def mean_square(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """Per-image mean square of model.cnn[k]'s output: [N]."""
    model.eval()
    with torch.no_grad():
        return model.cnn[: k + 1](x).pow(2).flatten(1).mean(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("k", [6, 14])
def test_deep_dream_increases_every_images_activation_norm(k: int) -> None:
    model, x = tiny_classifier(), images()
    dreamed = deep_dream(model, x, model.cnn[k], generator=gen(0), **FAST)
    assert (mean_square(model, dreamed, k) > mean_square(model, x, k)).all()


def test_deep_dream_respects_max_change_and_value_range() -> None:
    model, x = tiny_classifier(), images()
    dreamed = deep_dream(model, x, "cnn.10", max_change=0.05, lr=0.1, generator=gen(0), **FAST)
    assert (dreamed - x).abs().max() <= 0.05 + 1e-6
    assert (dreamed - x).abs().max() > 0.04  # the cap is reached, so it was tested
    assert dreamed.min() >= x.min() and dreamed.max() <= x.max()


def test_deep_dream_is_deterministic_for_a_seeded_generator() -> None:
    model, x = tiny_classifier(), images(2)
    first = deep_dream(model, x, model.cnn[10], generator=gen(7), **FAST)
    again = deep_dream(model, x, model.cnn[10], generator=gen(7), **FAST)
    other = deep_dream(model, x, model.cnn[10], generator=gen(8), **FAST)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_deep_dream_has_no_side_effects() -> None:
    model, x = tiny_classifier().train(), images(2)
    x_before = x.clone()
    dreamed = deep_dream(model, x, model.cnn[18], generator=gen(0), **FAST)
    assert dreamed.shape == x.shape and not dreamed.requires_grad
    assert hook_count(model) == 0
    assert all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert torch.equal(x, x_before) and x.grad is None


def test_deep_dream_works_through_inplace_relus() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.ReLU(True)
    )
    x = images(2)
    dreamed = deep_dream(model, x, model[1], generator=gen(0), **FAST)
    assert torch.isfinite(dreamed).all() and hook_count(model) == 0
