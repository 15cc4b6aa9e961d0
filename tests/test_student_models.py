"""Students' own networks as they write them, run as they run them: their class in their own
file (``--model file.py:Name``), a state_dict, only the flags the README asks for. A speed trick
never breaks their forward (``.view`` flattening), the input side is found, the default layers
are spatial whatever the activations, a probability head is explained at its logit, and a
forward that fails in their code is one line naming their file and line."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from hw5lib.cli import main
from hw5lib.errors import UserError
from hw5lib.inputs.sample import SampleInfo
from hw5lib.model.hooks import hook_count
from hw5lib.model.layers import default_filter_layers
from hw5lib.model.probe import channels_last, infer_side, output_head, spatial_outputs

FAST = ["--lime-samples", "30", "--filter-steps", "3", "--smooth-samples", "2", "--ig-steps", "4",
        "--per-class", "0", "--filters-per-layer", "2", "--no-trust", "--quiet"]  # fmt: skip
FIGURES = {
    "q1_saliency", "q2_filters", "q3_lime", "q3_confusion", "q3_examples", "q4_smoothgrad",
    "q4_grad_x_input", "q4_integrated_gradients", "q4_shap", "q4_grad_cam", "q4_layercam",
    "q4_feature_maps", "q4_deepdream", "appendix_convergence",
}  # fmt: skip

# The networks, as a student's training script defines them (HW3's sample: conv-bn-relu-pool
# blocks, then `out.view(out.size()[0], -1)`).
STUDENT_SOURCE = '''
import torch
import torch.nn.functional as F
from torch import nn


def block(i, o, act=nn.ReLU):
    return [nn.Conv2d(i, o, 3, 1, 1), nn.BatchNorm2d(o), act(), nn.MaxPool2d(2, 2, 0)]


class Classifier(nn.Module):
    """The HW3 sample's layout for a given side and head, flattened with .view."""

    def __init__(self, side=32, n=11, channels=3, head=None, flatten="view"):
        super().__init__()
        layers, c = [], channels
        for w in (4, 8, 8):
            layers += block(c, w)
            c = w
        self.cnn = nn.Sequential(*layers)
        s = side // 8
        fc = [nn.Linear(8 * s * s, 16), nn.ReLU(), nn.Linear(16, n)]
        self.fc = nn.Sequential(*fc, *([head] if head is not None else []))
        self.flatten = flatten

    def forward(self, x):
        out = self.cnn(x)
        if self.flatten == "view":
            out = out.view(out.size()[0], -1)
        else:
            out = out.flatten(1)
        return self.fc(out)


class Flat(Classifier):
    def __init__(self):
        super().__init__(flatten="flatten")


class Side192(Classifier):
    def __init__(self):
        super().__init__(side=192)


class Side48(Classifier):
    def __init__(self):
        super().__init__(side=48)


class Fer44(Classifier):
    """FER2013 cropped to 44, gray, a Sigmoid head."""

    def __init__(self):
        super().__init__(side=44, channels=1, head=nn.Sigmoid())


class SigmoidHead(Classifier):
    def __init__(self):
        super().__init__(head=nn.Sigmoid())


class SoftmaxHead(Classifier):
    def __init__(self):
        super().__init__(head=nn.Softmax(dim=1))


class LogSoftmaxHead(Classifier):
    def __init__(self):
        super().__init__(head=nn.LogSoftmax(dim=1))


class SixConvRReLU(nn.Module):
    """Six convs with RReLU, ReLU only in the dense head (listed first), .view flatten."""

    def __init__(self, n=11):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, n))
        c = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.RReLU()]
        self.cnn = nn.Sequential(
            *c(3, 4), *c(4, 4), nn.MaxPool2d(2), *c(4, 8), *c(8, 8), nn.MaxPool2d(2),
            *c(8, 8), *c(8, 8), nn.MaxPool2d(2),
        )

    def forward(self, x):
        out = self.cnn(x)
        out = out.view(out.size()[0], -1)
        return self.fc(out)


class FunctionalNet(nn.Module):
    """Activations and pools in forward (F.relu), no activation modules; a softmax at the end."""

    def __init__(self, n=11):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Linear(8 * 12 * 12, n)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.softmax(self.out(x.view(x.size(0), -1)), dim=1)


class Basic(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)  # the same ReLU called twice


class TinyResNet(nn.Module):
    """torchvision's ResNet layout, nested blocks, global pooling: any side runs."""

    def __init__(self, n=11):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Basic(8), Basic(8))
        self.layer2 = nn.Sequential(nn.MaxPool2d(2), Basic(8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, n)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Broken(Classifier):
    def forward(self, x):
        out = self.cnn(x)
        return self.fc(out.view(out.size()[0], 3, -1))  # the student's bug
'''


def student_module(tmp_path: Path) -> dict[str, type[nn.Module]]:
    """STUDENT_SOURCE written as the student's file and imported, by class name."""
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(STUDENT_SOURCE))
    scope: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    return {k: v for k, v in scope.items() if isinstance(v, type) and issubclass(v, nn.Module)}


def saved(tmp_path: Path, name: str, seed: int = 0) -> tuple[nn.Module, Path, str]:
    """A seeded instance of the student's class ``name``, its state_dict file, its --model."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = student_module(tmp_path)[name]().eval()
        for m in model.modules():  # non-trivial running statistics, as after training
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), ckpt)
    return model, ckpt, f"{tmp_path / 'my_model.py'}:{name}"


def report(data: Path, out: Path, ckpt: Path, spec: str, *flags: str) -> int:
    """``hw5.py report`` on two images of ``data`` (the confusion matrix on all of it)."""
    images = [str(data / "validation" / name) for name in ("0_0.jpg", "3_0.jpg")]
    return main(["report", str(data), str(out), "--checkpoint", str(ckpt), "--model", spec,
                 *FAST, *flags, "--images", *images])  # fmt: skip


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def figures(out: Path) -> set[str]:
    return {p.stem for p in out.glob("*.png") if not p.stem.startswith("q2_activations_")}


def npz(out: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(out / f"{name}.npz") as z:
        return dict(z)


def assert_every_figure(out: Path, capsys: pytest.CaptureFixture) -> dict:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    man = manifest(out)
    assert figures(out) == FIGURES
    assert not man["failures"] and not man["cuts"], (man["failures"], man["cuts"])
    return man


# ----------------------------------------------------------------- 1: fast paths checked


def test_view_flatten_net_runs_every_figure_and_matches_the_same_net_flattened_safely(
    small_sample: SampleInfo, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, ckpt, spec = saved(tmp_path, "Classifier")
    assert report(small_sample.root, tmp_path / "view", ckpt, spec) == 0
    man = assert_every_figure(tmp_path / "view", capsys)
    fast = man["model"]["fast_paths"]
    assert fast["channels_last"].startswith("off: forward raised RuntimeError: view size")
    assert man["model"]["input_size"] == {"side": 32, "source": "probed"}
    # The same weights behind a layout-proof flatten: channels_last on, the same figures.
    _, flat_ckpt, flat_spec = saved(tmp_path, "Flat")
    assert report(small_sample.root, tmp_path / "flat", flat_ckpt, flat_spec) == 0
    flat = assert_every_figure(tmp_path / "flat", capsys)
    assert flat["model"]["fast_paths"]["channels_last"] == "on"
    assert man["dataset"]["predictions"] == flat["dataset"]["predictions"]
    np.testing.assert_allclose(
        man["dataset"]["confidence"], flat["dataset"]["confidence"], atol=1e-5
    )
    for name in ("q1_saliency", "q4_grad_cam", "q4_integrated_gradients"):
        a, b = npz(tmp_path / "view", name), npz(tmp_path / "flat", name)
        np.testing.assert_allclose(a["attribution"], b["attribution"], rtol=1e-3, atol=1e-5)
    # ... and they are the plain model's own outputs on the inputs it explained.
    x = torch.from_numpy(npz(tmp_path / "view", "q1_saliency")["input"])
    with torch.no_grad():
        want = model(x).softmax(1).amax(1).numpy()
    np.testing.assert_allclose(man["dataset"]["confidence"], want, atol=1e-5)


class ViewInBackward(torch.autograd.Function):
    """Identity whose backward reads its saved input through .view, as a student's custom op:
    the forward runs in any layout, the backward only in the default one."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x * 1

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * x.view(len(x), -1).isfinite().all()


class BackwardView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(ViewInBackward.apply(self.conv(x)).reshape(len(x), -1))


def test_channels_last_is_kept_only_where_forward_and_backward_still_run() -> None:
    x = torch.rand(2, 3, 8, 8)
    record: dict[str, str] = {}
    model = BackwardView().eval()
    assert channels_last(model, x, record) is model  # its backward raised: the plain model
    assert record["channels_last"].startswith("off: forward raised RuntimeError: view size")
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).eval()
    fast = channels_last(plain, x, record)
    assert record["channels_last"] == "on" and fast is not plain
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert plain[0].weight.is_contiguous()  # the user's model itself is left as it was


def test_forward_raising_in_the_users_file_is_one_line_naming_file_and_line(
    small_sample: SampleInfo, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, ckpt, spec = saved(tmp_path, "Broken")
    line = next(
        i + 1
        for i, text in enumerate((tmp_path / "my_model.py").read_text().splitlines())
        if "the student's bug" in text
    )
    assert report(small_sample.root, tmp_path / "out", ckpt, spec, "--size", "32") == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"hw5: error: your model's forward raised at my_model.py:{line}: ")
    assert "RuntimeError" in err[0]
    assert main(["-v", "layers", "--checkpoint", str(ckpt), "--model", spec, "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and f"my_model.py:{line}" in err  # -v shows where


# ----------------------------------------------------------------------- 2: input size


@pytest.mark.parametrize(("name", "side", "channels"), [("Side192", 192, 3), ("Fer44", 44, 1),
                                                         ("Side48", 48, 3)])  # fmt: skip
def test_layers_command_finds_the_input_side_without_size(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, side: int, channels: int
) -> None:
    _, ckpt, spec = saved(tmp_path, name)
    assert main(["layers", "--checkpoint", str(ckpt), "--model", spec]) == 0
    out = capsys.readouterr().out
    assert f"({channels}x{side}x{side} input)" in out.splitlines()[0]
    assert re.search(r"^fc\.0 .* Linear +16$", out, re.M), out


def test_size_flag_wins_and_a_model_that_takes_any_size_keeps_the_default(tmp_path: Path) -> None:
    mods = student_module(tmp_path)
    assert infer_side(mods["TinyResNet"]().eval(), 3, 128) == (128, "default")
    assert infer_side(mods["Side192"]().eval(), 3, 128) == (192, "probed")
    _, ckpt, spec = saved(tmp_path, "Side48")
    code = main(["layers", "--checkpoint", str(ckpt), "--model", spec, "--size", "64"])
    assert code == 2  # --size wins: at 64 this model's Linear cannot take the trunk's output


def test_192_side_model_runs_report_without_size(
    small_sample: SampleInfo, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, ckpt, spec = saved(tmp_path, "Side192")
    assert report(small_sample.root, tmp_path / "out", ckpt, spec) == 0
    man = manifest(tmp_path / "out")
    assert "Traceback" not in capsys.readouterr().err
    assert man["model"]["input_size"] == {"side": 192, "source": "probed"}
    assert man["model"]["input"] == [3, 192, 192]
    assert not man["failures"]


# ------------------------------------------------------------------ 3: default layers


def test_six_conv_rrelu_net_gets_spatial_default_layers_and_every_figure(
    small_sample: SampleInfo, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, ckpt, spec = saved(tmp_path, "SixConvRReLU")
    # What failed: the old choice took an activation outside the conv trunk (fc.1, 2-D), and
    # Q2 filters and DeepDream raised IndexError on it.
    layers = default_filter_layers(model, 4, (3, 32, 32))
    spatial = dict(spatial_outputs(model, (3, 32, 32)))
    assert layers == ["cnn.2", "cnn.9", "cnn.12", "cnn.19"]
    assert all(name in spatial and isinstance(model.get_submodule(name), nn.RReLU)
               for name in layers)  # fmt: skip
    assert hook_count(model) == 0
    assert report(small_sample.root, tmp_path / "out", ckpt, spec) == 0
    man = assert_every_figure(tmp_path / "out", capsys)
    acts = {p.stem for p in (tmp_path / "out").glob("q2_activations_*.png")}
    assert acts == {f"q2_activations_{n.replace('.', '_')}" for n in layers}
    assert man["model"]["input_size"]["side"] == 32


def test_default_layers_of_functional_and_nested_nets_are_spatial(tmp_path: Path) -> None:
    mods = student_module(tmp_path)
    functional = mods["FunctionalNet"]().eval()
    assert default_filter_layers(functional, 4, (3, 48, 48)) == ["conv1", "conv2"]
    resnet = mods["TinyResNet"]().eval()
    layers = default_filter_layers(resnet, 4, (3, 32, 32))
    assert layers[0] == "relu" and len(layers) == 4
    assert set(layers) <= set(dict(spatial_outputs(resnet, (3, 32, 32))))
    assert hook_count(resnet) == 0


def test_course_classifier_keeps_its_default_layers() -> None:
    from model import Classifier

    assert default_filter_layers(Classifier().eval(), 4, (3, 128, 128)) == [
        "cnn.2", "cnn.6", "cnn.14", "cnn.18",
    ]  # fmt: skip


def test_naming_a_layer_that_is_not_spatial_is_one_line_listing_those_that_are(
    small_sample: SampleInfo, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, ckpt, spec = saved(tmp_path, "Classifier")
    out = tmp_path / "out"
    assert report(small_sample.root, out, ckpt, spec, "--filter-layers", "fc.1") == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("hw5: error: --filter-layers fc.1:"), err
    assert "not a spatial feature map" in err[0] and "cnn.2, cnn.3" in err[0]
    assert not (out / "q1_saliency.png").exists()


def test_functional_net_runs_every_figure(
    small_sample: SampleInfo, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, ckpt, spec = saved(tmp_path, "FunctionalNet")
    assert report(small_sample.root, tmp_path / "out", ckpt, spec) == 0
    man = assert_every_figure(tmp_path / "out", capsys)
    assert man["model"]["input_size"] == {"side": 48, "source": "probed"}
    assert man["model"]["output"]["kind"] == "softmax"
    assert man["model"]["output"]["found"] == "values"


# --------------------------------------------------------------- 4: probability heads


@pytest.mark.parametrize(
    ("name", "kind", "layer"),
    [("SigmoidHead", "sigmoid", "fc.3"), ("SoftmaxHead", "softmax", "fc.3"),
     ("LogSoftmaxHead", "log_softmax", "fc.3")],
)  # fmt: skip
def test_probability_head_is_explained_at_its_logit_and_shown_as_its_own_probability(
    small_sample: SampleInfo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    name: str,
    kind: str,
    layer: str,
) -> None:
    model, ckpt, spec = saved(tmp_path, name)
    assert report(small_sample.root, tmp_path / "out", ckpt, spec) == 0
    man = assert_every_figure(tmp_path / "out", capsys)
    head = man["model"]["output"]
    assert (head["kind"], head["layer"], head["found"]) == (kind, layer, "structure")
    assert head["explained"] == f"the input to the final {layer} ({kind})"
    sal = npz(tmp_path / "out", "q1_saliency")
    x, target = torch.from_numpy(sal["input"]), torch.from_numpy(sal["target"]).long()
    with torch.no_grad():
        out = model(x)
    own = out.exp() if kind == "log_softmax" else out  # the model's own probabilities
    np.testing.assert_allclose(man["dataset"]["confidence"], own.amax(1).numpy(), atol=1e-5)
    # Saliency is the gradient of the logit, the input to the head, not of the probability.
    logits = nn.Sequential(model.cnn, nn.Flatten(), *list(model.fc)[:-1])
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(logits(x).gather(1, target[:, None]).sum(), x)
    np.testing.assert_allclose(sal["attribution"], grad.abs().amax(1).numpy(), rtol=1e-3,
                               atol=1e-6)  # fmt: skip


def test_output_head_is_found_by_structure_or_by_values(tmp_path: Path) -> None:
    x = torch.rand(4, 3, 32, 32)
    mods = student_module(tmp_path)
    sig = mods["SigmoidHead"]().eval()
    assert (output_head(sig, x).kind, output_head(sig, x).layer) == ("sigmoid", "fc.3")
    assert output_head(mods["Classifier"]().eval(), x).kind == "logits"
    functional = mods["FunctionalNet"]().eval()
    found = output_head(functional, torch.rand(4, 3, 48, 48))
    assert (found.kind, found.layer, found.found) == ("softmax", None, "values")
    assert hook_count(sig) == 0 and hook_count(functional) == 0


def test_model_returning_no_class_scores_is_one_line() -> None:
    from hw5lib.model.probe import run_forward

    with pytest.raises(UserError, match=r"returns \(1, 4, 8, 8\).*\(N, classes\)"):
        run_forward(nn.Conv2d(3, 4, 3, padding=1), torch.zeros(1, 3, 8, 8))
