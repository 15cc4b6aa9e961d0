"""Student setups as students build them: their own network class in their own files, a training
script run as ``__main__`` that saves the checkpoint their way, and the data folder or CSV they
read. ``build_students`` writes them all into a folder; ``tests/test_students.py`` runs each
through ``hw5.py report`` with the flags the README tells that student to pass.

Each case is written from a class of input the course's students produce, not from one
published script: HW3-sample-style nets that flatten with ``.view``, layers outside the course's
list (RReLU, PReLU, ELU, functional ReLU), factories, torchvision models, containers (a
DataParallel dict, a training dict with the optimizer's state), GPU-tagged storages and the
legacy format, input sides other than 128, grayscale inputs, probability heads, both FER CSV
layouts. Training is replaced by seeded random weights (``stand_in_for_training``): He-scaled,
with non-trivial BatchNorm running statistics, so no forward is the identity.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tests.photos import jpeg, photo, png, turned_jpeg

REPO = Path(__file__).resolve().parent.parent

# The data a student points hw5 at.
PHOTOS, FER2013_CSV, LABEL_FEATURE_CSV = "photos", "fer2013.csv", "train.csv"
# What the model's last layer returns.
LOGITS, SIGMOID, SOFTMAX = "logits", "sigmoid", "softmax"


@dataclass(frozen=True)
class Student:
    """One student's setup, as built on disk.

    ``flags`` are what the README tells this student to pass (``{dir}`` is their folder);
    ``reference`` is the state_dict of the model their script saved, and ``build`` how to make
    it again (``file.py:Name`` in their folder, or ``module:callable``) with ``build_args``.
    """

    case: str
    folder: Path
    checkpoint: Path
    flags: tuple[str, ...]
    data: str
    side: int  # the input side the model was trained at
    channels: int
    head: str
    build: str
    build_args: dict = field(default_factory=dict)
    gpu: bool = False  # storages tagged cuda:0, as a file saved on a GPU machine
    legacy: bool = False  # torch.save(..., _use_new_zipfile_serialization=False)
    pickled_class: str | None = None  # the whole-model pickle names this class
    build_error: str | None = None  # the last line of the script's traceback, if it failed

    @property
    def reference(self) -> Path:
        return self.folder / "reference.pt"

    def cli_flags(self) -> list[str]:
        return [f.replace("{dir}", str(self.folder)) for f in self.flags]


@dataclass(frozen=True)
class Spec:
    """How to write one setup: the model file's source, the training script's tail (after the
    model file's source, as students paste their class into the script), and the result."""

    student: Student
    model_source: str
    script_tail: str


def stand_in_for_training(model: nn.Module, seed: int = 0, confidence: float = 4.0) -> nn.Module:
    """Seeded random weights in place of training: He-scaled weights, small biases, norm weights
    near 1, BatchNorm running statistics away from (0, 1), and the last Linear ``confidence``
    times larger, so that, as in a trained model, one class stands out."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # BatchNorm / PReLU weights
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        last.weight.mul_(confidence)
    return model


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip()


HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n"

# ---------------------------------------------------------------- (a) the HW3 sample's style

HW3_VIEW = _src("""
    class Classifier(nn.Module):
        def __init__(self):
            super(Classifier, self).__init__()
            # torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
            # input dimension [3, 128, 128]
            self.cnn = nn.Sequential(
                nn.Conv2d(3, 8, 3, 1, 1),  # [8, 128, 128]
                nn.BatchNorm2d(8),
                nn.ReLU(),
                nn.MaxPool2d(2, 2, 0),  # [8, 64, 64]
                nn.Conv2d(8, 16, 3, 1, 1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.MaxPool2d(2, 2, 0),  # [16, 32, 32]
                nn.Conv2d(16, 16, 3, 1, 1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.MaxPool2d(2, 2, 0),  # [16, 16, 16]
                nn.Conv2d(16, 32, 3, 1, 1),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.MaxPool2d(2, 2, 0),  # [32, 8, 8]
                nn.Conv2d(32, 32, 3, 1, 1),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.MaxPool2d(2, 2, 0),  # [32, 4, 4]
            )
            self.fc = nn.Sequential(
                nn.Linear(32 * 4 * 4, 64),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(64, 32),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(32, 11),
            )

        def forward(self, x):
            out = self.cnn(x)
            out = out.view(out.size()[0], -1)
            return self.fc(out)
""")

# ---------------------------------------------------------------- (b) six convs, RReLU

SIX_CONV_RRELU = _src("""
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.RReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.RReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.RReLU(),
                nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.RReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.RReLU(),
                nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.RReLU(),
                nn.MaxPool2d(2),
            )
            self.fc = nn.Sequential(
                nn.Dropout(0.3), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 11)
            )

        def forward(self, x):
            x = self.cnn(x)
            x = x.view(x.shape[0], -1)
            return self.fc(x)
""")

# ------------------------------------------- (c) and (h) the course's layout, the sample's style


def hw3_layout(widths: tuple[int, ...], hidden: tuple[int, int]) -> str:
    """The HW3 sample's Classifier as a student writes it out, narrowed: model.py's tree."""
    blocks = []
    for c_in, c_out in zip((3, *widths), widths, strict=False):
        blocks += [
            f"nn.Conv2d({c_in}, {c_out}, 3, 1, 1),",
            f"nn.BatchNorm2d({c_out}),",
            "nn.ReLU(),",
            "nn.MaxPool2d(2, 2, 0),",
        ]
    cnn = "\n                ".join(blocks)
    a, b = hidden
    return _src(f"""
    class Classifier(nn.Module):
        def __init__(self):
            super(Classifier, self).__init__()
            self.cnn = nn.Sequential(
                {cnn}
            )
            self.fc = nn.Sequential(
                nn.Linear({widths[-1]} * 4 * 4, {a}),
                nn.ReLU(),
                nn.Linear({a}, {b}),
                nn.ReLU(),
                nn.Linear({b}, 11),
            )

        def forward(self, x):
            out = self.cnn(x)
            out = out.view(out.size()[0], -1)
            return self.fc(out)
    """)


# ---------------------------------------------------------------- (d) FER, functional, Sigmoid

FER_SIGMOID = _src("""
    class EmotionNet(nn.Module):
        def __init__(self, num_classes=7):
            super(EmotionNet, self).__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(16)
            self.conv3 = nn.Conv2d(16, 32, 3, padding=1)
            self.bn3 = nn.BatchNorm2d(32)
            self.pool = nn.MaxPool2d(2, 2)
            self.dropout = nn.Dropout(0.25)
            self.fc1 = nn.Linear(32 * 6 * 6, 64)
            self.fc2 = nn.Linear(64, num_classes)
            self.sigmoid = nn.Sigmoid()

        def forward(self, x):
            x = self.pool(F.relu(self.bn1(self.conv1(x))))  # 48 -> 24
            x = self.pool(F.relu(self.bn2(self.conv2(x))))  # 24 -> 12
            x = self.pool(F.relu(self.bn3(self.conv3(x))))  # 12 -> 6
            x = x.view(-1, 32 * 6 * 6)
            x = self.dropout(F.relu(self.fc1(x)))
            return self.sigmoid(self.fc2(x))
""")

# ---------------------------------------------------------------- (e) a factory

VGG_FACTORY = _src("""
    cfgs = {
        "A": [8, "M", 16, "M", 32, "M", 32, "M"],
        "C": [8, 8, "M", 16, 16, "M", 32, 32, "M", 32, "M"],
    }


    class VGG(nn.Module):
        def __init__(self, features, num_classes=11):
            super(VGG, self).__init__()
            self.features = features
            self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
            self.classifier = nn.Sequential(
                nn.Linear(32 * 2 * 2, 64),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(64, num_classes),
            )

        def forward(self, x):
            x = self.features(x)
            x = self.avgpool(x)
            x = torch.flatten(x, 1)
            return self.classifier(x)


    def make_layers(cfg, batch_norm=False):
        layers = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
                if batch_norm:
                    layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                else:
                    layers += [conv2d, nn.ReLU(inplace=True)]
                in_channels = v
        return nn.Sequential(*layers)


    def get_vgg_model(cfg, bn):
        return VGG(make_layers(cfgs[cfg], batch_norm=bn))
""")

# ---------------------------------------------------------------- (g) other input sides

BIG_INPUT = _src("""
    class Net(nn.Module):
        \"\"\"Trained on 192x192 crops.\"\"\"

        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.LeakyReLU(0.1),
                nn.MaxPool2d(2),  # 96 -> 48
                nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.LeakyReLU(0.1),
                nn.MaxPool2d(2),  # 24
                nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.LeakyReLU(0.1),
                nn.MaxPool2d(2),  # 12
            )
            self.classifier = nn.Sequential(
                nn.Linear(16 * 12 * 12, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 11)
            )

        def forward(self, x):
            x = self.conv(x)
            x = x.reshape(x.size(0), -1)
            return self.classifier(x)
""")

SMALL_GRAY = _src("""
    class SmallNet(nn.Module):
        \"\"\"Grayscale 44x44 crops (the FER recipe, on Food-11).\"\"\"

        def __init__(self):
            super(SmallNet, self).__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3), nn.ELU(), nn.MaxPool2d(2),  # 44 -> 42 -> 21
                nn.Conv2d(8, 16, 3), nn.ELU(), nn.MaxPool2d(2),  # 19 -> 9
            )
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(16 * 9 * 9, 11)

        def forward(self, x):
            return self.fc(self.flatten(self.features(x)))
""")

# ---------------------------------------------------------------- (i) the 2019 course's FER net

FACE_2019 = _src("""
    class FaceCNN(nn.Module):
        def __init__(self):
            super(FaceCNN, self).__init__()
            self.conv1 = nn.Sequential(
                nn.Conv2d(1, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.PReLU(), nn.MaxPool2d(2)
            )
            self.conv2 = nn.Sequential(
                nn.Conv2d(8, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.PReLU(), nn.MaxPool2d(2)
            )
            self.conv3 = nn.Sequential(
                nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.PReLU(), nn.MaxPool2d(2)
            )
            self.fc = nn.Sequential(
                nn.Flatten(),
                nn.Dropout(0.2),
                nn.Linear(16 * 6 * 6, 32),
                nn.PReLU(),
                nn.Linear(32, 7),
            )

        def forward(self, x):
            return self.fc(self.conv3(self.conv2(self.conv1(x))))
""")

# ---------------------------------------------------------------- (j) a Softmax head

SOFTMAX_HEAD = _src("""
    class Net(nn.Module):
        def __init__(self, n_classes=11):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(4),
                nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                nn.MaxPool2d(4),
            )
            self.head = nn.Sequential(
                nn.Flatten(), nn.Linear(16 * 8 * 8, n_classes), nn.Softmax(dim=1)
            )

        def forward(self, x):
            return self.head(self.body(x))
""")


def specs(root: Path) -> list[Spec]:
    """Every setup, each in its own folder under ``root``."""

    def student(case: str, checkpoint: str, **kw) -> Student:
        return Student(case=case, folder=root / case, checkpoint=root / case / checkpoint, **kw)

    ref = "{dir}/"
    return [
        Spec(
            student(
                # .view flatten under a memory-format change (issue 21 item 1)
                "hw3_view_flatten_main_pickle",
                "model.pkl",
                flags=("--model", ref + "hw3_model.py:Classifier"),
                data=PHOTOS,
                side=128,
                channels=3,
                head=LOGITS,
                build="hw3_model.py:Classifier",
                pickled_class="__main__.Classifier",
            ),
            HW3_VIEW,
            """
            model = Classifier()
            stand_in_for_training(model, seed=1)  # 30 epochs on Food-11
            model.eval()
            torch.save(model, "model.pkl")
            """,
        ),
        Spec(
            student(
                # torch layers outside the short list; RReLU trunk, ReLU head (items 3, 6)
                "six_conv_rrelu_main_pickle",
                "classifier.pkl",
                flags=(),
                data=PHOTOS,
                side=128,
                channels=3,
                head=LOGITS,
                build="net.py:Classifier",
                pickled_class="__main__.Classifier",
            ),
            SIX_CONV_RRELU,
            """
            model = Classifier()
            stand_in_for_training(model, seed=2)
            torch.save(model, "classifier.pkl")
            """,
        ),
        Spec(
            student(
                # {"net": module.-prefixed state_dict, ...} from a GPU (item 2)
                "data_parallel_net_dict",
                "ckpt_best.pth",
                flags=(),
                data=PHOTOS,
                side=128,
                channels=3,
                head=LOGITS,
                build="hw3.py:Classifier",
                gpu=True,
            ),
            hw3_layout((8, 16, 16, 16, 16), (32, 16)),
            """
            model = Classifier()
            model = nn.DataParallel(model)  # the lab's two GPUs
            stand_in_for_training(model, seed=3)
            best_acc, epoch = 0.8, 30
            torch.save({"net": model.state_dict(), "acc": best_acc, "epoch": epoch}, "ckpt_best.pth")
            """,
        ),
        Spec(
            student(
                # training dict with optimizer state; Sigmoid head; 48x48 gray (items 2, 8)
                "fer_training_dict_sigmoid",
                "fer_model.pth",
                flags=("--preset", "expression", "--model", ref + "emotion_net.py:EmotionNet"),
                data=FER2013_CSV,
                side=48,
                channels=1,
                head=SIGMOID,
                build="emotion_net.py:EmotionNet",
                gpu=True,
            ),
            FER_SIGMOID,
            """
            model = EmotionNet()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            criterion = nn.BCELoss()
            images, targets = torch.rand(4, 1, 48, 48), torch.eye(7)[[0, 3, 4, 6]]
            loss = criterion(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            stand_in_for_training(model, seed=4)
            model.eval()
            torch.save(
                {
                    "network": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epochs": 50,
                    "accuracy": 0.61,
                },
                "fer_model.pth",
            )
            """,
        ),
        Spec(
            student(
                # a function that builds the model (item 4)
                "vgg_factory_function",
                "vgg_C_bn.pth",
                flags=(
                    "--model",
                    ref + "vgg.py:get_vgg_model",
                    "--model-args",
                    '{"cfg": "C", "bn": true}',
                ),
                data=PHOTOS,
                side=128,
                channels=3,
                head=LOGITS,
                build="vgg.py:get_vgg_model",
                build_args={"cfg": "C", "bn": True},
            ),
            VGG_FACTORY,
            """
            model = get_vgg_model("C", True)
            stand_in_for_training(model, seed=5)
            torch.save(model.state_dict(), "vgg_C_bn.pth")
            """,
        ),
        Spec(
            student(
                # --model torchvision.models:resnet18 (item 4)
                "torchvision_resnet18_state_dict",
                "resnet18_food11.pth",
                flags=(
                    "--model",
                    "torchvision.models:resnet18",
                    "--model-args",
                    '{"num_classes": 11}',
                    "--size",
                    "64",
                    "--reader",
                    "pil",
                    "--channel-order",
                    "rgb",
                    "--mean",
                    "0.485,0.456,0.406",
                    "--std",
                    "0.229,0.224,0.225",
                ),
                data=PHOTOS,
                side=64,
                channels=3,
                head=LOGITS,
                build="torchvision.models:resnet18",
                build_args={"num_classes": 11},
                gpu=True,
            ),
            # PyPI's torchvision is the CUDA build: hw5 imports it beside the CPU torch.
            "from hw5lib.model.tv import import_torchvision\n\ntorchvision = import_torchvision()\n",
            """
            # transforms.Resize((64, 64)), ToTensor(), Normalize(ImageNet mean, std)
            model = torchvision.models.resnet18(num_classes=11)
            stand_in_for_training(model, seed=6)
            torch.save(model.state_dict(), "resnet18_food11.pth")
            """,
        ),
        Spec(
            student(
                # first Linear sized for 192, no --size (item 5)
                "input_192_state_dict",
                "best_192.pth",
                flags=("--model", ref + "big_input.py:Net"),
                data=PHOTOS,
                side=192,
                channels=3,
                head=LOGITS,
                build="big_input.py:Net",
            ),
            BIG_INPUT,
            """
            model = Net()
            stand_in_for_training(model, seed=7)
            torch.save(model.state_dict(), "best_192.pth")
            """,
        ),
        Spec(
            student(
                # 44x44 gray, no --size (item 5); cuda:0 storages (item 2)
                "input_44_gray_gpu_main_pickle",
                "small.pt",
                flags=("--model", ref + "small_gray.py:SmallNet"),
                data=PHOTOS,
                side=44,
                channels=1,
                head=LOGITS,
                build="small_gray.py:SmallNet",
                gpu=True,
                pickled_class="__main__.SmallNet",
            ),
            SMALL_GRAY,
            """
            model = SmallNet()
            stand_in_for_training(model, seed=8)
            torch.save(model, "small.pt")
            """,
        ),
        Spec(
            student(
                # pre-1.6 non-zip format, cuda:0 storages (item 2)
                "legacy_format_gpu_state_dict",
                "hw3_legacy.pth",
                flags=(),
                data=PHOTOS,
                side=128,
                channels=3,
                head=LOGITS,
                build="hw3.py:Classifier",
                gpu=True,
                legacy=True,
            ),
            hw3_layout((8, 8, 16, 16, 16), (32, 32)),
            """
            model = Classifier()
            stand_in_for_training(model, seed=9)
            torch.save(model.state_dict(), "hw3_legacy.pth", _use_new_zipfile_serialization=False)
            """,
        ),
        Spec(
            student(
                # the 2019 course's train.csv (item 9)
                "label_feature_csv_2019",
                "model_2019.pth",
                flags=("--preset", "expression", "--model", ref + "face_cnn.py:FaceCNN"),
                data=LABEL_FEATURE_CSV,
                side=48,
                channels=1,
                head=LOGITS,
                build="face_cnn.py:FaceCNN",
            ),
            FACE_2019,
            """
            model = FaceCNN()
            stand_in_for_training(model, seed=10)
            torch.save(model.state_dict(), "model_2019.pth")
            """,
        ),
        Spec(
            student(
                # a Softmax head (item 8)
                "softmax_head_state_dict",
                "softmax_net.pt",
                flags=("--model", ref + "softmax_net.py:Net"),
                data=PHOTOS,
                side=128,
                channels=3,
                head=SOFTMAX,
                build="softmax_net.py:Net",
            ),
            SOFTMAX_HEAD,
            """
            model = Net()
            stand_in_for_training(model, seed=11)
            torch.save(model.state_dict(), "softmax_net.pt")
            """,
        ),
    ]


# The one subprocess that runs every training script as ``python train.py`` would: as the
# module ``__main__`` (so a pickled class is ``__main__.Name``), from the student's folder. It
# saves what the script left in ``model`` as reference.pt (the test's reference), and for a
# GPU-saved file tags every storage ``cuda:0`` while the script runs, as torch.save on a GPU.
# A script that raises leaves its error in build_error.txt; the others still run.
RUNNER = _src("""
    import json, os, runpy, sys, traceback

    import torch
    import torch.serialization as serialization

    sys.path.insert(0, sys.argv[1])
    from tests.students import stand_in_for_training

    for entry in json.loads(sys.argv[2]):
        os.chdir(entry["folder"])
        tag = serialization.location_tag
        if entry["gpu"]:
            serialization.location_tag = lambda storage: "cuda:0"
        try:
            done = runpy.run_path(
                "train.py",
                init_globals={"stand_in_for_training": stand_in_for_training},
                run_name="__main__",
            )
        except Exception:
            lines = traceback.format_exc().strip().splitlines()
            open("build_error.txt", "w").write(lines[-1])
            continue
        finally:
            serialization.location_tag = tag
        model = done["model"]
        torch.save(getattr(model, "module", model).state_dict(), "reference.pt")
""")


def write_student(spec: Spec) -> None:
    """The model file (the class or factory, what ``--model`` names) and train.py (the same
    source pasted in, then the script's own lines)."""
    s = spec.student
    s.folder.mkdir(parents=True)
    model_file = s.build.partition(":")[0]
    if model_file.endswith(".py"):
        (s.folder / model_file).write_text(HEADER + spec.model_source)
    tail = _src(spec.script_tail)
    (s.folder / "train.py").write_text(HEADER + spec.model_source + "\n\n" + tail)


def build_students(root: Path) -> dict[str, Student]:
    """Write every setup under ``root`` and run their training scripts (one subprocess)."""
    all_specs = specs(root)
    for spec in all_specs:
        write_student(spec)
    runner = root / "run_training_scripts.py"
    runner.write_text(RUNNER)
    entries = [{"folder": str(s.student.folder), "gpu": s.student.gpu} for s in all_specs]
    done = subprocess.run(
        [sys.executable, str(runner), str(REPO), json.dumps(entries)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    built = {}
    for spec in all_specs:
        s = spec.student
        error = s.folder / "build_error.txt"
        built[s.case] = replace(s, build_error=error.read_text()) if error.exists() else s
    return built


# ---------------------------------------------------------------- the data they read

# Food-11 names: classes present in validation/ (one explained image each: few, so the run is
# quick) and the modes a scrape has, in turn over the files.
VALIDATION_LABELS = (0, 4, 7, 10)
FILE_MODES = (
    (".jpg", lambda im: jpeg(im.convert("L"))),  # grayscale JPEG
    (".png", lambda im: png(im.convert("P"))),  # palette
    (".jpg", lambda im: jpeg(im.convert("CMYK"))),
    (".jpg", turned_jpeg),  # stored on its side, EXIF orientation 6
    (".jpg", lambda im: jpeg(im)),
)


def write_food_photos(root: Path) -> Path:
    """A tiny Food-11-layout folder of real photographs: training/ one image per class of 11,
    validation/ two per class of VALIDATION_LABELS, every file in one of FILE_MODES."""
    k = 0
    for split, labels, per_class in (
        ("training", range(11), 1),
        ("validation", VALIDATION_LABELS, 2),
    ):
        (root / split).mkdir(parents=True)
        for label in labels:
            for n in range(per_class):
                suffix, encode = FILE_MODES[k % len(FILE_MODES)]
                (root / split / f"{label}_{n}{suffix}").write_bytes(encode(photo(k)))
                k += 1
    return root


def face_pixels(k: int, side: int = 48) -> str:
    """A photo as a FER CSV row's pixels: ``side`` x ``side`` gray, space-separated integers."""
    gray = photo(k).convert("L").resize((side, side), Image.Resampling.BILINEAR)
    return " ".join(str(v) for v in np.asarray(gray).ravel())


def write_fer2013_csv(path: Path) -> Path:
    """FER2013's layout: ``emotion,pixels,Usage``; Training rows of all 7 classes, PublicTest
    rows (the explained split) of three."""
    rows = [(label, "Training") for label in range(7)]
    rows += [(label, "PublicTest") for label in (0, 3, 6) for _ in range(2)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["emotion", "pixels", "Usage"])
    w.writerows([label, face_pixels(k), usage] for k, (label, usage) in enumerate(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())
    return path


def write_label_feature_csv(path: Path) -> Path:
    """The 2019 course's train.csv: ``label,feature``, the pixels space-separated, no Usage."""
    lines = ["label,feature"]
    lines += [f"{label},{face_pixels(k)}" for k, label in enumerate((0, 0, 3, 3, 5, 5))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- the student's own model, again


def rebuild(student: Student) -> nn.Module:
    """The model the student's script saved, built from their source and reference.pt."""
    import importlib
    import importlib.util

    where, _, name = student.build.partition(":")
    if where.endswith(".py"):
        path = student.folder / where
        spec = importlib.util.spec_from_file_location(f"student_{student.case}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    model = getattr(module, name)(**student.build_args)
    model.load_state_dict(torch.load(student.reference, map_location="cpu", weights_only=True))
    return model.eval()
