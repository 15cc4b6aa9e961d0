"""Checkpoints saved the ways students save them: the state_dict inside a training dict under any
key and depth, with DataParallel / torch.compile / Lightning prefixes, optimizer state and numpy
metrics beside it, GPU-tagged storages, the legacy format; whole models of any torch layer and of
a student's own class pickled from a script; models built by a function; NaN weights."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from hw5lib.errors import UserError
from hw5lib.model.loading import load_classifier
from hw5lib.model.tv import import_torchvision
from model import Classifier

NARROW = {"widths": [4, 4, 6, 6, 8], "hidden": [10], "num_classes": 3, "input_size": 32}


def narrow(seed: int = 0) -> Classifier:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Classifier(**NARROW).eval()


def images(size: int = 32, channels: int = 3) -> Tensor:
    return torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(1))


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def optimizer_state(model: nn.Module) -> dict:
    """A real SGD-with-momentum state after one step: tensors under int keys, numbers."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(images()).sum().backward()
    opt.step()
    model.zero_grad()
    return opt.state_dict()


def one_line_error(path: Path, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        load_classifier(path, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# case -> (the object saved around a state_dict ``sd``, the key, the prefix the manifest names)
CONTAINERS = {
    "bare": (lambda sd, m: sd, None, None),
    "course": (lambda sd, m: {"model_state_dict": sd, "epoch": 3}, None, None),
    "net with DataParallel keys and numpy metrics": (
        lambda sd, m: {"net": prefixed(sd, "module."), "acc": np.float64(0.71), "epoch": np.int64(40)},
        "net",
        "module.",
    ),
    "training dict with optimizer": (
        lambda sd, m: {"network": sd, "optimizer": optimizer_state(m), "epochs": 30, "accuracy": 0.7},
        "network",
        None,
    ),
    "lightning": (
        lambda sd, m: {"state_dict": prefixed(sd, "model."), "global_step": 100,
                       "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 1e-3}},
        "state_dict",
        "model.",
    ),
    "model": (lambda sd, m: {"model": sd, "best_acc": np.float32(0.5)}, "model", None),
    "compiled, nested": (
        lambda sd, m: {"ckpt": {"weights": prefixed(sd, "_orig_mod.")}, "note": "run 3"},
        "ckpt.weights",
        "_orig_mod.",
    ),
    "a wrapper module of the student's own": (
        lambda sd, m: {"state_dict": prefixed(sd, "module.backbone."), "epoch": 3},
        "state_dict",
        "module.backbone.",
    ),
    "compiled DataParallel in a list": (
        lambda sd, m: {"history": [0.1, 0.2], "snapshots": [prefixed(sd, "module._orig_mod.")]},
        "snapshots.0",
        "module._orig_mod.",
    ),
}  # fmt: skip


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("case", list(CONTAINERS))
def test_the_state_dict_is_found_in_any_container(tmp_path, case, legacy):
    wrap, key, prefix = CONTAINERS[case]
    model = narrow()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(sd, narrow(1).train()), path, _use_new_zipfile_serialization=not legacy)
    loaded = load_classifier(path)
    assert type(loaded.model) is Classifier
    assert torch.equal(loaded.model(images()), model(images()))
    record = {k: v for k, v in loaded.architecture.items() if k not in NARROW}
    want = {"in_channels": 3}
    want |= {"state_dict_key": key} if key else {}
    want |= {"stripped_prefix": prefix} if prefix else {}
    assert record == want


@pytest.mark.parametrize("legacy", [False, True])
def test_storages_saved_on_a_gpu_load_on_the_cpu(tmp_path, monkeypatch, legacy):
    model = narrow()
    path = tmp_path / "gpu.pth"
    with monkeypatch.context() as mp:  # torch.save tags every storage as a GPU run would
        mp.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"net": model.state_dict(), "epoch": 3}, path, _use_new_zipfile_serialization=not legacy)  # fmt: skip
    raw = path.read_bytes()
    if not legacy:
        with zipfile.ZipFile(path) as zf:
            raw = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert b"cuda:0" in raw and b"cpu" not in raw
    loaded = load_classifier(path)
    assert all(t.device.type == "cpu" for t in loaded.model.state_dict().values())
    assert torch.equal(loaded.model(images()), model(images()))


def test_two_state_dicts_that_fit_ask_which_and_checkpoint_key_chooses(tmp_path):
    first, ema = narrow(0), narrow(1)
    path = tmp_path / "two.pth"
    torch.save({"run": {"model": first.state_dict(), "ema": ema.state_dict()}, "epoch": 9}, path)
    msg = one_line_error(path)
    assert "--checkpoint-key" in msg and "'run.model'" in msg and "'run.ema'" in msg
    loaded = load_classifier(path, checkpoint_key="run.ema")
    assert torch.equal(loaded.model(images()), ema(images()))
    assert loaded.architecture["state_dict_key"] == "run.ema"
    msg = one_line_error(path, checkpoint_key="ema")
    assert "--checkpoint-key ema" in msg and "'run.ema'" in msg


def test_a_container_whose_state_dict_does_not_fit_names_the_mismatch(tmp_path):
    sd = narrow().state_dict()
    del sd["fc.2.bias"]
    torch.save({"net": prefixed(sd, "module."), "acc": 0.5}, tmp_path / "bad.pth")
    msg = one_line_error(tmp_path / "bad.pth")
    assert "missing: fc.2.bias" in msg and "--model" in msg


# ---------------------------------------------------------------- --model: classes and factories


FACTORY = """
from torch import nn

CFG = {"A": [4, "M", 8, "M"], "C": [4, 4, "M", 8, 8, "M"]}


class VGGish(nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(32, 16), nn.RReLU(), nn.Linear(16, classes))

    def forward(self, x):
        out = self.pool(self.features(x))
        return self.classifier(out.view(out.size()[0], -1))


def make_layers(cfg, batch_norm):
    layers, c = [], 3
    for v in CFG[cfg]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(c, v, 3, padding=1)]
        layers += [nn.BatchNorm2d(v)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
        c = v
    return nn.Sequential(*layers)


def get_vgg_model(cfg, head, classes=5):
    return VGGish(make_layers(cfg, batch_norm=head == "C"), classes)
"""


def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "vgg_factory.py"
    path.write_text(FACTORY)
    return path


def factory_module(path: Path) -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("student_vgg_factory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args", [["C", "C"], {"cfg": "C", "head": "C", "classes": 5}])
def test_model_can_be_a_factory_function_with_positional_or_keyword_args(tmp_path, args):
    net = factory_module(factory_file(tmp_path)).get_vgg_model("C", "C").eval()
    path = tmp_path / "vgg.pth"
    torch.save({"net": prefixed(net.state_dict(), "module."), "acc": 0.9}, path)
    spec = f"{tmp_path / 'vgg_factory.py'}:get_vgg_model"
    loaded = load_classifier(path, model_spec=spec, model_args=args)
    assert type(loaded.model).__name__ == "VGGish"
    assert torch.equal(loaded.model(images(16)), net(images(16)))
    assert loaded.architecture["model"] == spec and loaded.architecture["args"] == args
    assert loaded.architecture["stripped_prefix"] == "module."


def test_a_factory_that_returns_no_module_is_one_line(tmp_path):
    (tmp_path / "f.py").write_text("def build():\n    return 3\n")
    torch.save(narrow().state_dict(), tmp_path / "w.pth")
    msg = one_line_error(tmp_path / "w.pth", model_spec=f"{tmp_path / 'f.py'}:build")
    assert "build" in msg and "not an nn.Module" in msg


def test_model_can_be_a_torchvision_function(tmp_path):
    models = import_torchvision().models
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = models.resnet18(num_classes=11).eval()
    path = tmp_path / "resnet.pth"
    torch.save({"model": prefixed(net.state_dict(), "module."), "epoch": 5}, path)
    spec = "torchvision.models:resnet18"
    loaded = load_classifier(path, model_spec=spec, model_args={"num_classes": 11})
    assert type(loaded.model) is models.ResNet
    torch.testing.assert_close(loaded.model(images(64)), net(images(64)), rtol=0, atol=0)
    assert loaded.architecture["model"] == spec


# ------------------------------------------------- whole models: any torch layer, students' classes


def test_a_pickle_of_any_torch_layer_loads_weights_only(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.RReLU(0.1, 0.3),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Flatten(2),  # (N, 4, 64 * 64)
            nn.Conv1d(4, 2, 5, stride=64),
            nn.Softplus(beta=2.0),
            nn.Unflatten(2, (8, 8)),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(2, 3),
            nn.Hardtanh(),
        ).eval()
    torch.save(model, tmp_path / "seq.pt")
    loaded = load_classifier(tmp_path / "seq.pt")
    assert loaded.architecture["unpickler"] == "weights_only"
    assert [type(m) for m in loaded.model] == [type(m) for m in model]
    assert torch.equal(loaded.model(images()), model(images()))


STUDENT = '''
import sys

import torch
from torch import nn


class Net(nn.Module):
    """Six convs with RReLU, a Softplus head, and the HW3 sample code's .view flattening."""

    def __init__(self, classes=4):
        super().__init__()
        layers, c = [], 3
        for i, w in enumerate((4, 4, 6, 6, 8, 8)):
            layers += [nn.Conv2d(c, w, 3, 1, 1), nn.BatchNorm2d(w), nn.RReLU()]
            layers += [nn.MaxPool2d(2)] if i % 2 else []
            c = w
        self.cnn = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(8 * 4 * 4, 16), nn.Softplus(), nn.Linear(16, classes))

    def forward(self, x):
        out = self.cnn(x)
        out = out.view(out.size()[0], -1)
        return self.fc(out)


if __name__ == "__main__":
    torch.manual_seed(0)
    model = Net().eval()
    torch.save(model, sys.argv[1], _use_new_zipfile_serialization=sys.argv[2] == "zip")
    torch.save(model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))),
               sys.argv[1] + ".out")
'''


def pickled_from_a_script(tmp_path: Path, fmt: str = "zip") -> tuple[Path, Path]:
    """``python net.py`` trains (here: seeds) a Net and saves it whole: ``__main__.Net``."""
    script = tmp_path / "net.py"
    script.write_text(textwrap.dedent(STUDENT))
    path = tmp_path / "model.pkl"
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, str(script), str(path), fmt], check=True, env=env)
    return script, path


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_main_class_of_torch_layers_loads_weights_only_into_the_model_given(tmp_path, fmt):
    script, path = pickled_from_a_script(tmp_path, fmt)
    loaded = load_classifier(path, model_spec=f"{script}:Net")
    assert type(loaded.model).__name__ == "Net"
    assert loaded.architecture["pickled_class"] == "__main__.Net"
    assert loaded.architecture["unpickler"] == ("weights_only" if fmt == "zip" else "allowlist")
    want = torch.load(f"{path}.out", weights_only=True)
    assert torch.equal(loaded.model(images()), want)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_own_layers_in_the_course_template_load_without_flags(tmp_path, fmt):
    """cnn and fc of the HW3 template, with six RReLU convs and a Softplus: model.py's forward
    is the template's, so the pickle loads weights-only with no flag."""
    _, path = pickled_from_a_script(tmp_path, fmt)
    loaded = load_classifier(path)
    assert type(loaded.model) is Classifier
    assert [type(m).__name__ for m in loaded.model.cnn][2] == "RReLU"
    assert loaded.architecture["pickled_class"] == "__main__.Net"
    assert loaded.architecture["input_size"] == 32  # the side its first Linear fits
    assert loaded.architecture["num_classes"] == 4
    want = torch.load(f"{path}.out", weights_only=True)
    assert torch.equal(loaded.model(images()), want)


def test_a_class_whose_forward_is_not_the_template_is_refused_naming_it(tmp_path):
    from tests.pickles import save_as

    class Net(nn.Module):  # a third child: its forward is not model.py's
        def __init__(self) -> None:
            super().__init__()
            self.cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.RReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Sequential(nn.Linear(4, 2))

    path = save_as(tmp_path / "m.pkl", Net(), {Net: "hw3.MyCNN"})
    msg = one_line_error(path)
    assert "hw3.MyCNN" in msg and "model.py's Classifier" in msg
    assert "--model path/to/file.py:MyCNN" in msg and "--trust-pickle" in msg


def test_a_main_class_that_does_not_match_the_model_given_is_refused_naming_it(tmp_path):
    _, path = pickled_from_a_script(tmp_path)
    other = tmp_path / "other.py"
    other.write_text(textwrap.dedent(STUDENT).replace("nn.Softplus()", "nn.ReLU()"))
    msg = one_line_error(path, model_spec=f"{other}:Net")
    assert "__main__.Net" in msg and "fc.1" in msg and "Softplus" in msg and "ReLU" in msg


# ------------------------------------------------------------------------------ non-finite weights


def test_non_finite_weights_are_named_in_one_warning_and_recorded(tmp_path, caplog):
    sd = narrow().state_dict()
    sd["fc.0.weight"][0, 0] = float("nan")
    sd["cnn.0.bias"][1] = float("inf")
    torch.save({"net": sd}, tmp_path / "nan.pth")
    with caplog.at_level(logging.WARNING, logger="hw5lib.model.loading"):
        loaded = load_classifier(tmp_path / "nan.pth")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "non-finite weights in cnn.0.bias, fc.0.weight" in warnings[0]
    assert "not finite" in warnings[0]
    assert loaded.architecture["non_finite_weights"] == ["cnn.0.bias", "fc.0.weight"]


def test_finite_weights_record_nothing(tmp_path, caplog):
    torch.save(narrow().state_dict(), tmp_path / "ok.pth")
    with caplog.at_level(logging.WARNING, logger="hw5lib.model.loading"):
        loaded = load_classifier(tmp_path / "ok.pth")
    assert "non_finite_weights" not in loaded.architecture and not caplog.records


def test_a_whole_model_inside_a_training_dict_loads(tmp_path):
    model = narrow()
    torch.save(
        {"model": model, "optimizer": optimizer_state(narrow(1).train()), "epoch": np.int64(7)},
        tmp_path / "whole.pth",
    )
    loaded = load_classifier(tmp_path / "whole.pth")
    assert type(loaded.model) is Classifier and loaded.architecture["model_key"] == "model"
    assert torch.equal(loaded.model(images()), model(images()))


@pytest.mark.parametrize("name", ["__main__.MyCNN", "hw3.Net", "train_food.Classifier"])
def test_the_course_classifier_under_any_class_name_loads_without_flags(tmp_path, name):
    from tests.pickles import save_as

    class Student(nn.Module):  # the course's layers, the student's name
        def __init__(self) -> None:
            super().__init__()
            self.cnn = narrow().cnn
            self.fc = narrow().fc

        def forward(self, x: Tensor) -> Tensor:
            out = self.cnn(x)
            return self.fc(out.view(out.size()[0], -1))

    model = Student().eval()
    path = save_as(tmp_path / "m.pkl", model, {Student: name})
    loaded = load_classifier(path)
    assert type(loaded.model) is Classifier
    assert loaded.architecture["pickled_class"] == name
    assert torch.equal(loaded.model(images()), model(images()))


def test_a_student_pickle_of_protocol_4_names_its_class_too(tmp_path):
    import pickletools

    from tests.pickles import save_as

    script = tmp_path / "net.py"
    script.write_text(textwrap.dedent(STUDENT))
    net_class = factory_module(script).Net
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = net_class().eval()
    path = save_as(tmp_path / "p4.pkl", model, {net_class: "__main__.Net"}, pickle_protocol=4)
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert "STACK_GLOBAL" in ops and "GLOBAL" not in ops
    loaded = load_classifier(path, model_spec=f"{script}:Net")
    assert loaded.architecture["pickled_class"] == "__main__.Net"
    assert torch.equal(loaded.model(images()), model(images()))


def test_the_cli_asks_for_checkpoint_key_in_one_line_and_takes_it(tmp_path, capsys):
    from hw5lib.cli import main

    path = tmp_path / "two.pth"
    torch.save({"model": narrow(0).state_dict(), "ema": narrow(1).state_dict()}, path)
    assert main(["layers", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hw5: error:") and "--checkpoint-key" in err[0]
    assert main(["layers", "--checkpoint", str(path), "--checkpoint-key", "ema"]) == 0
    assert "cnn.0" in capsys.readouterr().out
    args = ["layers", "--checkpoint", str(path), "--checkpoint-key", "ema"]
    assert (
        main([*args, "--model", "torchvision.models:resnet18", "--model-args", '{"nope": 1}']) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet18(**{'nope': 1}) failed" in err[0] and "--model-args" in err[0]
