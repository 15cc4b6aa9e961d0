"""Checkpoint files students actually have: files that are no checkpoint at all, whole-model
pickles of the HW3 Classifier and of torchvision's AlexNet, VGG and ResNet (loaded weights-only
into torchvision's own classes), and pickles that would run code."""

from __future__ import annotations

import io
import os
import pickle
import random
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.serialization import MAGIC_NUMBER

from hw5lib.errors import UserError
from hw5lib.model.checkpoints import checkpoint_format
from hw5lib.model.loading import load_classifier
from hw5lib.model.tv import import_torchvision
from model import Classifier
from tests.pickles import save_as
from tests.zoo import AlexNetLike

# ---------------------------------------------------------------- models as students define them


class CourseClassifier(nn.Module):
    """The HW3 sample code's Classifier, as a training script defines it, at narrow widths."""

    def __init__(self, widths=(4, 6, 8, 8, 10), hidden=(12, 14), classes=5, extra=False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip((3, *widths[:-1]), widths, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
            layers.append(nn.MaxPool2d(2, 2, 0))
        self.cnn = nn.Sequential(*layers)
        fc: list[nn.Module] = [nn.Linear(widths[-1], hidden[0]), nn.ReLU()]
        fc += [nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Linear(hidden[1], classes)]
        self.fc = nn.Sequential(*fc)
        if extra:  # a student's own change to the forward: model.py's cannot compute it
            self.dropout = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        out = self.cnn(x)
        out = out.view(out.size()[0], -1)
        return self.fc(self.dropout(out) if hasattr(self, "dropout") else out)


def make_vgg_features(cfg: list, batch_norm: bool) -> nn.Sequential:
    """torchvision.models.vgg.make_layers."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(c_in, v, kernel_size=3, padding=1))
        layers += [nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(True)]
        c_in = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision.models.vgg.VGG, narrow."""

    def __init__(self, features: nn.Module, num_classes: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(8 * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock, its in-place sum included."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision.models.resnet.ResNet, narrow: one block per stage."""

    def __init__(self, block: type, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self._norm_layer = nn.BatchNorm2d  # torchvision keeps the class: the pickle names it
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, 1)
        self.layer2 = self._make_layer(block, 2 * width, 2)
        self.layer3 = self._make_layer(block, 2 * width, 2)
        self.layer4 = self._make_layer(block, 4 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4 * width * block.expansion, num_classes)

    def _make_layer(self, block: type, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layer = block(self.inplanes, planes, stride, downsample)
        self.inplanes = planes * block.expansion
        return nn.Sequential(layer, block(self.inplanes, planes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class Net(nn.Module):
    """A student's own architecture, which hw5 does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(4 * 6 * 6, 3)  # for 8x8 images

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Evil:
    """Unpickling this runs a shell command."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.system, (f"echo pwned > {self.target}",))


# ---------------------------------------------------------------------------------------- helpers


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so a parameter or buffer lost on the way shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.5)
    return model.eval()


def images(size: int) -> Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def one_line_error(path: Path, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        load_classifier(path, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    return msg


# ------------------------------------------------------------------------- not a checkpoint at all


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


NOT_CHECKPOINTS = {
    "empty": (b"", "empty"),
    "text": (b"epoch 10: accuracy 0.71\nsee train.log\n", "a text file"),
    "random bytes": (random.Random(0).randbytes(300), "binary data"),
    "jpeg": (jpeg_bytes(), "a JPEG image"),
    "web page": (b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
    "git lfs pointer": (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "git lfs"),
    "damaged zip": (b"PK\x03\x04junk", "zip"),
}


@pytest.mark.parametrize("case", list(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_says_what_it_looks_like(tmp_path, case):
    content, looks_like = NOT_CHECKPOINTS[case]
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    msg = one_line_error(path)
    assert "not a PyTorch checkpoint" in msg and looks_like in msg
    assert "--trust-pickle" not in msg  # never advise unpickling what is no pickle


def test_a_plain_pickle_is_not_taken_for_a_torch_save_file(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=2))
    msg = one_line_error(path, trust_pickle=True)
    assert "torch.save did not write" in msg


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's notices
@pytest.mark.parametrize("legacy", [False, True])
def test_checkpoint_format_reads_the_bytes(tmp_path, legacy):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(1)}, path, _use_new_zipfile_serialization=not legacy)
    assert checkpoint_format(path) == ("legacy" if legacy else "zip")
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), tmp_path / "ts.pt")
    assert checkpoint_format(tmp_path / "ts.pt") == "torchscript"


# ------------------------------------------------------------------- whole models, weights-only


@pytest.mark.parametrize("module", ["__main__", "hw3"])
@pytest.mark.parametrize("legacy", [False, True])
def test_hw3_classifier_pickled_by_a_script_loads_weights_only_as_model_classifier(
    tmp_path, module, legacy
):
    course = seeded(CourseClassifier())
    path = save_as(
        tmp_path / "model.pkl",
        course,
        {CourseClassifier: f"{module}.Classifier"},
        _use_new_zipfile_serialization=not legacy,
    )
    loaded = load_classifier(path)
    assert type(loaded.model) is Classifier and not loaded.model.training
    assert torch.equal(loaded.model(images(32)), course(images(32)))
    assert loaded.architecture == {
        "pickled_class": f"{module}.Classifier",
        "loaded_as": "model.Classifier",
        "unpickler": "allowlist" if legacy else "weights_only",
        "widths": [4, 6, 8, 8, 10],
        "hidden": [12, 14],
        "num_classes": 5,
        "in_channels": 3,
        "input_size": 32,
    }
    assert not hasattr(sys.modules["__main__"], "Classifier")  # nothing was added to __main__


TORCHVISION = {  # case -> (narrow model, its classes' torchvision names, input size)
    "alexnet": (
        lambda: AlexNetLike(num_classes=3, width=4),
        {AlexNetLike: "torchvision.models.alexnet.AlexNet"},
        64,
    ),
    "vgg_bn": (
        lambda: VGG(make_vgg_features([4, "M", 8, "M", 8, 8, "M"], batch_norm=True)),
        {VGG: "torchvision.models.vgg.VGG"},
        32,
    ),
    "resnet_basic": (
        lambda: ResNet(BasicBlock),
        {ResNet: "torchvision.models.resnet.ResNet", BasicBlock: "torchvision.models.resnet.BasicBlock"},
        32,
    ),
    "resnet_bottleneck": (
        lambda: ResNet(Bottleneck),
        {ResNet: "torchvision.models.resnet.ResNet", Bottleneck: "torchvision.models.resnet.Bottleneck"},
        32,
    ),
}  # fmt: skip


def torchvision_class(name: str) -> type:
    module, _, cls = name.rpartition(".")
    import_torchvision()
    return getattr(sys.modules[module], cls)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("case", list(TORCHVISION))
def test_torchvision_pickles_load_into_torchvisions_own_classes(tmp_path, case, legacy):
    build, names, size = TORCHVISION[case]
    model = seeded(build())
    path = save_as(
        tmp_path / f"{case}.pth", model, names, _use_new_zipfile_serialization=not legacy
    )
    loaded = load_classifier(path)
    top = next(iter(names.values()))
    assert type(loaded.model) is torchvision_class(top)
    want = [(n, type(m).__name__) for n, m in model.named_modules() if n]
    assert [(n, type(m).__name__) for n, m in loaded.model.named_modules() if n] == want
    blocks = {type(m) for m in loaded.model.modules()} - {type(loaded.model)}
    assert all(c.__module__.startswith(("torch.nn.", "torchvision.")) for c in blocks)
    torch.testing.assert_close(loaded.model(images(size)), model(images(size)), rtol=0, atol=0)
    assert loaded.architecture == {
        "pickled_class": top,
        "loaded_as": top,
        "unpickler": "allowlist" if legacy else "weights_only",
    }


def test_a_real_torchvision_resnet18_pickle_loads_into_torchvisions_class(tmp_path):
    models = import_torchvision().models
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = models.resnet18(num_classes=3).eval()
    torch.save(model, tmp_path / "resnet18.pth")
    loaded = load_classifier(tmp_path / "resnet18.pth")
    assert type(loaded.model) is models.ResNet
    torch.testing.assert_close(loaded.model(images(64)), model(images(64)), rtol=0, atol=0)
    assert loaded.architecture["unpickler"] == "weights_only"


def test_torch_nn_containers_and_data_parallel_load_as_themselves(tmp_path):
    seq = seeded(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(16, 2))
    )
    torch.save(seq, tmp_path / "seq.pt")
    loaded = load_classifier(tmp_path / "seq.pt")
    assert torch.equal(loaded.model(images(4)), seq(images(4)))
    assert loaded.architecture["loaded_as"] == "torch.nn.modules.container.Sequential"
    wrapped = nn.DataParallel(seeded(Classifier(widths=[4] * 5, hidden=[6], input_size=32)))
    torch.save(wrapped, tmp_path / "dp.pt")
    loaded = load_classifier(tmp_path / "dp.pt")
    assert type(loaded.model) is Classifier  # out of its DataParallel
    assert torch.equal(loaded.model(images(32)), wrapped.module(images(32)))


def test_a_main_classifier_with_other_layers_is_refused_in_one_line(tmp_path):
    path = save_as(
        tmp_path / "m.pkl", CourseClassifier(extra=True), {CourseClassifier: "__main__.Classifier"}
    )
    msg = one_line_error(path)
    assert "__main__.Classifier" in msg and "its dropout (Dropout" in msg


def test_a_torchvision_model_missing_a_part_is_refused_in_one_line(tmp_path):
    model = VGG(make_vgg_features([8, "M"], batch_norm=False))
    del model.avgpool
    path = save_as(tmp_path / "vgg.pth", model, {VGG: "torchvision.models.vgg.VGG"})
    msg = one_line_error(path)
    assert "torchvision.models.vgg.VGG" in msg and "avgpool" in msg


# --------------------------------------------------------------------------- refused, and trusted


def test_an_unknown_class_is_refused_in_one_line_naming_it(tmp_path):
    path = save_as(tmp_path / "net.pt", Net(), {Net: "__main__.Net"})
    msg = one_line_error(path)
    assert "__main__.Net" in msg and "--trust-pickle" in msg


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("where", ["bare", "inside a Classifier"])
def test_a_pickle_that_runs_a_command_is_refused_and_runs_nothing(tmp_path, where, legacy):
    target = tmp_path / "pwned"
    obj: object = {"payload": Evil(target)}
    if where == "inside a Classifier":
        obj = CourseClassifier()
        obj.note = Evil(target)
    names = {CourseClassifier: "__main__.Classifier"}
    path = save_as(tmp_path / "evil.pt", obj, names, _use_new_zipfile_serialization=not legacy)
    msg = one_line_error(path)
    assert "system" in msg and "--trust-pickle" in msg
    assert not target.exists()


def test_a_legacy_pickle_cannot_rebind_attributes_of_an_allowed_class(tmp_path):
    # GLOBAL collections.Counter, then BUILD (None, {"most_common": None}) on the class itself.
    payload = b"\x80\x02ccollections\nCounter\nN}X\x0b\x00\x00\x00most_commonNs\x86b."
    head = b"".join(pickle.dumps(v, protocol=2) for v in (MAGIC_NUMBER, 1001, {}))
    path = tmp_path / "rebind.pt"
    path.write_bytes(head + payload + pickle.dumps([], protocol=2))
    assert checkpoint_format(path) == "legacy"
    assert "--trust-pickle" in one_line_error(path)
    assert callable(Counter.most_common)


def test_trust_pickle_resolves_a_missing_main_class_to_model_py(tmp_path):
    course = seeded(CourseClassifier())
    course.class_weights = np.ones(5)  # numpy: not loadable weights-only
    path = save_as(tmp_path / "model.pkl", course, {CourseClassifier: "__main__.Classifier"})
    assert "numpy" in one_line_error(path)
    loaded = load_classifier(path, trust_pickle=True)
    assert type(loaded.model) is Classifier
    assert torch.equal(loaded.model(images(32)), course(images(32)))
    assert loaded.architecture["pickled_class"] == "__main__.Classifier"
    assert loaded.architecture["unpickler"] == "full"
    assert not hasattr(sys.modules["__main__"], "Classifier")


@pytest.mark.parametrize("trust", [False, True])
def test_a_main_class_resolves_to_the_model_file_given(tmp_path, trust):
    net = seeded(Net())
    if trust:
        net.meta = np.arange(3)  # only a full unpickle can load this one
    path = save_as(tmp_path / "net.pt", net, {Net: "__main__.Net"})
    spec = tmp_path / "arch.py"
    spec.write_text(
        "from torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())\n"
        "        self.head = nn.Linear(144, 3)\n\n"
        "    def forward(self, x):\n        return self.head(self.body(x))\n"
    )
    loaded = load_classifier(path, trust_pickle=trust, model_spec=f"{spec}:Net")
    assert type(loaded.model).__name__ == "Net" and type(loaded.model) is not Net
    assert torch.equal(loaded.model(images(8)), net(images(8)))
    assert loaded.architecture["unpickler"] == ("full" if trust else "weights_only")


def test_trust_pickle_names_a_main_class_nobody_defines(tmp_path):
    net = Net()
    net.meta = np.arange(3)
    path = save_as(tmp_path / "net.pt", net, {Net: "__main__.Net"})
    msg = one_line_error(path, trust_pickle=True)
    assert "__main__.Net" in msg and "--model path/to/file.py:Net" in msg


def test_trust_pickle_loads_the_real_class_where_model_py_does_not_fit(tmp_path, monkeypatch):
    course = seeded(CourseClassifier(extra=True))
    path = save_as(tmp_path / "m.pkl", course, {CourseClassifier: "hw3.Classifier"})
    assert "Dropout" in one_line_error(path)  # model.py's Classifier has no dropout
    hw3 = types.ModuleType("hw3")  # the student's hw3.py, importable where hw5 runs
    hw3.Classifier = CourseClassifier
    monkeypatch.setitem(sys.modules, "hw3", hw3)
    monkeypatch.setattr(CourseClassifier, "__module__", "hw3")
    loaded = load_classifier(path, trust_pickle=True)
    assert type(loaded.model) is CourseClassifier
    assert loaded.architecture["unpickler"] == "full"
    assert torch.equal(loaded.model(images(32)), course(images(32)))
