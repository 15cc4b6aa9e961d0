"""Grad-CAM / LayerCAM against Captum and against their definitions; side effects; layer choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from hw5lib.methods.cam import (
    cam_layer_candidates,
    default_cam_layer,
    feature_maps,
    grad_cam,
    layer_cam,
    normalize_maps,
)
from hw5lib.model.hooks import hook_count
from model import Classifier
from tests.zoo import seeded_

SIDE = 32


def tiny_classifier(seed: int = 0) -> Classifier:
    return seeded_(Classifier(widths=(4, 8, 8, 8, 8), hidden=(16, 16), input_size=SIDE), seed)


def images(n: int = 4, seed: int = 1, side: int = SIDE) -> Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


class Residual(nn.Module):
    def __init__(self, ch: int, inplace: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)) + x)


class NestedNet(nn.Module):
    """Nested Sequentials, a residual block and (optionally) in-place ReLUs everywhere."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace)
        )
        self.body = nn.Sequential(
            Residual(4, inplace),
            nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace)),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.stem(x)))


class RaisesAfterLayer(nn.Module):
    """Runs the classifier's conv part, then fails: hooks must still be removed."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_classifier()

    def forward(self, x: Tensor) -> Tensor:
        self.inner.cnn(x)
        raise RuntimeError("boom")


def captum_grad_cam(model: nn.Module, x: Tensor, target: Tensor, layer: nn.Module) -> Tensor:
    attr = LayerGradCam(model, layer).attribute(x, target=target)  # [N,1,h,w]
    up = LayerAttribution.interpolate(F.relu(attr), x.shape[-2:], interpolate_mode="bilinear")
    return up[:, 0].detach()


def layer_cam_by_definition(model: Classifier, x: Tensor, target: Tensor, k: int) -> Tensor:
    """LayerCAM on ``model.cnn[k]`` with the network split there and torch.autograd.grad."""
    with torch.no_grad():
        a = model.cnn[: k + 1](x)
    a = a.detach().requires_grad_(True)
    logits = model.fc(model.cnn[k + 1 :](a).flatten(1))
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    maps = (g.clamp(min=0) * a).sum(1, keepdim=True).clamp(min=0).detach()
    return F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("k", [18, 16, 10])
@pytest.mark.parametrize("targets", [[0, 1, 2, 3], [10, 10, 5, 7]])
def test_grad_cam_equals_captum_layer_grad_cam(k: int, targets: list[int]) -> None:
    model = tiny_classifier().eval()
    x, target = images(), torch.tensor(targets)
    ours = grad_cam(model, x, target, f"cnn.{k}")
    theirs = captum_grad_cam(model, x, target, model.cnn[k])
    assert ours.shape == (4, SIDE, SIDE)
    assert ours.abs().max() > 0  # not vacuously equal
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [18, 16, 6])
def test_layer_cam_equals_its_definition_on_a_split_model(k: int) -> None:
    model = tiny_classifier().eval()
    x, target = images(), torch.tensor([3, 0, 9, 4])
    ours = layer_cam(model, x, target, model.cnn[k])
    assert ours.abs().max() > 0
    torch.testing.assert_close(
        ours, layer_cam_by_definition(model, x, target, k), atol=1e-5, rtol=1e-5
    )


def test_grad_cam_and_layer_cam_differ() -> None:
    model, x, target = tiny_classifier(), images(), torch.tensor([0, 1, 2, 3])
    assert not torch.allclose(
        grad_cam(model, x, target, "cnn.16"), layer_cam(model, x, target, "cnn.16")
    )


@pytest.mark.parametrize("method", [grad_cam, layer_cam])
def test_cam_chunks_match_one_batch(method) -> None:
    model, x, target = tiny_classifier(), images(5), torch.tensor([0, 1, 2, 3, 4])
    torch.testing.assert_close(
        method(model, x, target, "cnn.14", batch_size=2),
        method(model, x, target, "cnn.14", batch_size=32),
        atol=1e-6,
        rtol=1e-6,
    )


@pytest.mark.parametrize("method", [grad_cam, layer_cam])
def test_cam_has_no_side_effects(method) -> None:
    model = tiny_classifier().train()
    x, target = images(), torch.tensor([0, 1, 2, 3])
    x_before = x.clone()
    out = method(model, x, target, "cnn.18")
    assert not out.requires_grad and out.dtype == torch.float32
    assert hook_count(model) == 0
    assert all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert torch.equal(x, x_before) and x.grad is None and not x.requires_grad


@pytest.mark.parametrize("method", [grad_cam, layer_cam])
def test_cam_is_computed_in_eval_mode(method) -> None:
    model, x, target = tiny_classifier(), images(), torch.tensor([0, 1, 2, 3])
    in_train = method(model.train(), x, target, "cnn.18")
    in_eval = method(model.eval(), x, target, "cnn.18")
    torch.testing.assert_close(in_train, in_eval)


@pytest.mark.parametrize("method", [grad_cam, layer_cam])
def test_cam_removes_hooks_when_forward_raises(method) -> None:
    model = RaisesAfterLayer().train()
    with pytest.raises(RuntimeError, match="boom"):
        method(model, images(2), torch.tensor([0, 1]), model.inner.cnn[18])
    assert hook_count(model) == 0
    assert all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_default_cam_layer_removes_hooks_when_forward_raises() -> None:
    model = RaisesAfterLayer()
    with pytest.raises(RuntimeError, match="boom"):
        default_cam_layer(model, (3, SIDE, SIDE))
    assert hook_count(model) == 0


@pytest.mark.parametrize("method", [grad_cam, layer_cam])
@pytest.mark.parametrize("layer", ["stem.0", "stem.2", "body.0.bn", "body.0.relu", "body.1.0"])
def test_cam_with_inplace_relus_equals_out_of_place(method, layer: str) -> None:
    plain = seeded_(NestedNet(inplace=False), 3).eval()
    inplace = NestedNet(inplace=True).eval()
    inplace.load_state_dict(plain.state_dict())
    x, target = images(3, side=12), torch.tensor([0, 1, 2])
    ours = method(inplace, x, target, layer)
    assert ours.shape == (3, 12, 12) and torch.isfinite(ours).all()
    assert hook_count(inplace) == 0
    torch.testing.assert_close(ours, method(plain, x, target, layer))


def test_normalize_maps_scales_each_map_to_unit_range() -> None:
    maps = torch.stack([torch.arange(6.0).reshape(2, 3) * 5 - 3, torch.full((2, 3), 7.0)])
    out = normalize_maps(maps)
    torch.testing.assert_close(out[0], torch.arange(6.0).reshape(2, 3) / 5)
    assert torch.equal(out[1], torch.zeros(2, 3))  # constant map: zeros, not NaN


@pytest.mark.parametrize("k", [16, 18, 4])
def test_feature_maps_are_relu_of_the_truncated_network(k: int) -> None:
    model = tiny_classifier().train()
    x = images(3)
    maps = feature_maps(model, x, f"cnn.{k}")
    model.eval()
    with torch.no_grad():
        expected = model.cnn[: k + 1](x).relu()
    assert maps.shape == expected.shape and (maps >= 0).all()
    torch.testing.assert_close(maps, expected)
    assert hook_count(model) == 0


def test_feature_maps_restore_training_flag() -> None:
    model = tiny_classifier().train()
    feature_maps(model, images(1), model.cnn[2])
    assert all(m.training for m in model.modules()) and hook_count(model) == 0


def test_default_cam_layer_is_last_relu_of_hw3_classifier() -> None:
    model = Classifier().train()  # full width: one zero image of 128x128 is quick
    assert default_cam_layer(model) == "cnn.18"
    assert hook_count(model) == 0 and all(m.training for m in model.modules())


def test_default_cam_layer_skips_non_spatial_relus() -> None:
    assert default_cam_layer(tiny_classifier(), (3, SIDE, SIDE)) == "cnn.18"
    assert default_cam_layer(NestedNet(inplace=True), (3, 8, 8)) == "body.1.1"


def test_default_cam_layer_without_relu_modules_takes_last_spatial_output() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 2),
    )
    assert default_cam_layer(net, (3, 8, 8)) == "2"


def test_cam_layer_candidates_are_the_conv_block() -> None:
    model = tiny_classifier()
    block = ["cnn.16", "cnn.17", "cnn.18", "cnn.19"]
    assert cam_layer_candidates(model, "cnn.18") == block
    assert cam_layer_candidates(model, "cnn.16") == block
    assert cam_layer_candidates(model, "cnn.19") == block
    assert cam_layer_candidates(model, "cnn.2") == ["cnn.0", "cnn.1", "cnn.2", "cnn.3"]
    assert cam_layer_candidates(NestedNet(True), "body.1.1") == ["body.1.0", "body.1.1"]
    with pytest.raises(KeyError):
        cam_layer_candidates(model, "cnn.99")
