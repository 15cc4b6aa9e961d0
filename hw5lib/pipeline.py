"""Set up a report run (model, preprocessing, the images to explain), run the stages of
stages.py and trust.py under one tqdm bar each, and write manifest.json and report.pdf.

Data flows one way: config -> inputs -> methods -> figures -> manifest. Every stage returns the
figure records it wrote; nothing here draws or differentiates by itself.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import __version__, metrics, report
from .context import Run, RunConfig, Subject
from .data import (
    CLASS_PRESETS,
    FOOD11_CLASSES,
    TRAIN_SPLITS,
    Preprocess,
    label_of,
    load_inputs,
    open_dataset,
)
from .errors import UserError
from .models import LoadedModel, load_classifier, resolve_layer
from .outputs import atomic_write_bytes, json_bytes, sha256_file
from .sample import load_mask
from .stages import (
    default_filter_layers,
    stage_cams,
    stage_confusion,
    stage_dream,
    stage_feature_grid,
    stage_filters,
    stage_grad_x_input,
    stage_integrated_gradients,
    stage_lime,
    stage_saliency,
    stage_smoothgrad,
    validate_cam_targets,
)
from .trust import stage_trust, trust_manifest

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- set-up


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_preprocess(cfg: RunConfig, loaded: LoadedModel, model_channels: int) -> Preprocess:
    """Flags win over what the checkpoint recorded, which wins over the HW3 defaults."""
    base = loaded.preprocess or Preprocess(channels=model_channels)
    size = (cfg.size, cfg.size) if cfg.size else base.size
    return replace(
        base,
        size=size,
        channels=cfg.channels or base.channels,
        channel_order=cfg.channel_order or base.channel_order,
        mean=cfg.mean if cfg.mean is not None else base.mean,
        std=cfg.std if cfg.std is not None else base.std,
    )


def resolve_classes(
    cfg: RunConfig, loaded: LoadedModel, num_outputs: int, folders: tuple[str, ...] | None
) -> list[str]:
    """--classes (names or a preset name), else the checkpoint's, else ImageFolder folder names,
    else Food-11's for an 11-way model, else numbers."""
    if cfg.classes in CLASS_PRESETS:
        names = list(CLASS_PRESETS[cfg.classes])
    elif cfg.classes:
        names = [c.strip() for c in cfg.classes.split(",")]
    elif loaded.classes:
        names = list(loaded.classes)
    elif folders and len(folders) == num_outputs:
        names = list(folders)
    elif num_outputs == len(FOOD11_CLASSES):
        names = list(FOOD11_CLASSES)
    else:
        names = [str(i) for i in range(num_outputs)]
    if len(names) != num_outputs:
        raise UserError(f"{len(names)} class names given but the model has {num_outputs} outputs")
    return names


def choose_images(
    split_paths: list[Path], labels: list[int | None], per_class: int, num_classes: int
) -> list[int]:
    """The first ``per_class`` images of each class in sorted file order; a folder without labels
    gives its first ``num_classes`` files."""
    if all(label is None for label in labels):
        return list(range(min(num_classes, len(split_paths))))
    chosen: list[int] = []
    for c in range(num_classes):
        chosen += [i for i, label in enumerate(labels) if label == c][:per_class]
    return chosen


def object_masks(data_root: Path, paths: list[Path], size: tuple[int, int]) -> np.ndarray | None:
    """Ground-truth masks of a generated sample set, resized to the model input (nearest)."""
    from PIL import Image

    masks = []
    for p in paths:
        m = load_mask(data_root, p)
        if m is None:
            return None
        im = Image.fromarray(m.astype(np.uint8) * 255).resize(size[::-1], Image.Resampling.NEAREST)
        masks.append(np.asarray(im) > 127)
    return np.stack(masks)


def check_layers(cfg: RunConfig, model: nn.Module) -> None:
    """Resolve every layer the user named before any stage runs: a typo fails in a second,
    not after minutes of figures."""
    for spec in (*cfg.filter_layers, cfg.cam_layer, cfg.feature_layer, cfg.dream_layer):
        if spec:
            resolve_layer(model, spec)


def infer_channels(model: nn.Module) -> int:
    """Input channels of the first Conv2d (1 for a grayscale model); 3 if there is none."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def named_images(cfg: RunConfig) -> list[Path]:
    """The preset's named images (``dog.jpg``...) found in the data folder, in the given order."""
    root = cfg.data if cfg.data and cfg.data.is_dir() else None
    return [root / n for n in cfg.named_images if root and (root / n).is_file()]


def training_picks(cfg: RunConfig) -> list[Path]:
    """Images picked by index into the sorted training split, as the course's sample code does."""
    if not cfg.training_indices or cfg.data is None:
        return []
    train = open_dataset(cfg.data, TRAIN_SPLITS)
    missing = [i for i in cfg.training_indices if i >= len(train)]
    if missing:
        log.warning("training split has %d images; skipping indices %s", len(train), missing)
    return [train.paths[i] for i in cfg.training_indices if i < len(train)]


def mask_root(data: Path | None) -> Path | None:
    if data is None:
        return None
    return data.parent if data.suffix.lower() == ".csv" else data


def prepare(cfg: RunConfig) -> Run:
    loaded = load_classifier(
        cfg.checkpoint,
        trust_pickle=cfg.trust_pickle,
        model_spec=cfg.model,
        model_args=cfg.model_args,
    )
    device = pick_device(cfg.device)
    model = loaded.model.to(device).eval()
    check_layers(cfg, model)
    pre = resolve_preprocess(cfg, loaded, infer_channels(model))
    split = open_dataset(cfg.data) if cfg.data is not None else None
    with torch.inference_mode():
        num_outputs = int(model(torch.zeros(1, pre.channels, *pre.size, device=device)).shape[1])
    classes = resolve_classes(cfg, loaded, num_outputs, split.classes if split else None)
    validate_cam_targets(cfg.cam_targets, num_outputs)
    paths: list[Path] = []
    labels: list[int | None] = []
    if split is not None and cfg.per_class > 0:
        idx = choose_images(list(split.paths), list(split.labels), cfg.per_class, num_outputs)
        paths += [split.paths[i] for i in idx]
        labels += [split.labels[i] for i in idx]
    extra = [*training_picks(cfg), *named_images(cfg), *sorted(cfg.images)]
    paths += extra
    labels += [label_of(p) for p in extra]
    if not paths:
        raise UserError("nothing to explain: give a data folder or --images")
    labels = [lb if lb is not None and lb < num_outputs else None for lb in labels]
    x = load_inputs(paths, pre).to(device)
    prob = metrics.predict(model, x, batch_size=cfg.batch_size)[0].cpu()
    pred = prob.argmax(1)
    target = explained_targets(cfg.targets, labels, pred, num_outputs)
    root = mask_root(cfg.data)
    subject = Subject(
        paths=paths,
        x=x,
        pixels=pre.denormalize(x).permute(0, 2, 3, 1).numpy(),
        labels=labels,
        target=target.to(device),
        pred=pred,
        prob=prob,
        masks=object_masks(root, paths, pre.size) if root else None,
    )
    return Run(cfg, loaded, model, pre, classes, subject, device)


def explained_targets(
    spec: str, labels: list[int | None], pred: Tensor, num_classes: int
) -> Tensor:
    """The class each per-image method explains: the label (the prediction where there is
    none), the prediction, or one fixed class index."""
    if spec == "label":
        return torch.tensor(
            [lb if lb is not None else int(p) for lb, p in zip(labels, pred, strict=True)]
        )
    if spec == "pred":
        return pred.clone()
    if spec.isdigit() and int(spec) < num_classes:
        return torch.full((len(labels),), int(spec))
    raise UserError(
        f"--targets must be label, pred or a class index below {num_classes}, not {spec!r}"
    )


Stage = tuple[str, Callable[[Run], int], Callable[[Run, tqdm], None]]
STAGES: list[Stage] = [
    ("Q1 saliency", lambda r: 1, stage_saliency),
    (
        "Q2 filters",
        lambda r: len(r.cfg.filter_layers or default_filter_layers(r.model)),
        stage_filters,
    ),
    ("Q3 LIME", lambda r: len(r.subject.paths), stage_lime),
    ("Q4 SmoothGrad", lambda r: 1, stage_smoothgrad),
    ("Q4 Grad x Input", lambda r: 1, stage_grad_x_input),
    ("Q4 Integrated Gradients", lambda r: 1, stage_integrated_gradients),
    ("Q3 confusion matrix", lambda r: 1, stage_confusion),
    ("Q4 Grad-CAM, LayerCAM", lambda r: 2, stage_cams),
    ("Q4 feature maps", lambda r: 1, stage_feature_grid),
    ("Q4 DeepDream", lambda r: 1, stage_dream),
    ("trust checks", lambda r: 11 if r.cfg.trust else 0, stage_trust),
]


@contextmanager
def timed(run: Run, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        run.seconds[name] = time.perf_counter() - start


def manifest(run: Run) -> dict:
    cfg = run.cfg
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}
    params["images"] = [str(p) for p in cfg.images]
    for k in ("data", "out", "checkpoint", "command"):
        params.pop(k)
    c, h, w = run.pre.channels, *run.pre.size
    return {
        "tool": {"name": "hw5", "version": __version__},
        "run": {
            "seed": cfg.seed,
            "device": run.device.type,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": f"{platform.system()}-{platform.machine()}",
            "command": cfg.command,
        },
        "model": {
            "name": type(run.model).__name__,
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "architecture": run.loaded.architecture,
            "input": [c, h, w],
            "classes": run.classes,
        },
        "checkpoint": {"path": str(cfg.checkpoint), "sha256": run.loaded.sha256},
        "dataset": {
            "root": str(cfg.data),
            "explained_split": open_dataset(cfg.data).root.name if cfg.data else None,
            "images": [str(p) for p in run.subject.paths],
            "targets": run.subject.target.cpu().tolist(),
            "predictions": run.subject.pred.tolist(),
            "confidence": [round(float(v), 6) for v in run.subject.prob.max(1).values],
        },
        "preprocess": run.pre.to_dict(),
        "parameters": params,
        "figures": run.figures,
        "accuracy": run.extra.get("accuracy"),
        "top_confusions": run.extra.get("top_confusions", []),
        "trust": trust_manifest(run),
        "cuts": [
            f"{name}: skipped, a TorchScript model takes no forward hooks (pass the model "
            "definition with --model and a state_dict to get it)"
            for name in run.skipped
        ],
        "outputs": dict(sorted(run.outputs.items())),
    }


# Stages that read inside the model: TorchScript modules take no forward hooks.
NEEDS_LAYER_HOOKS = {stage_filters, stage_cams, stage_feature_grid, stage_dream}


def run_report(cfg: RunConfig, *, progress: bool = True) -> tuple[dict, dict[str, float]]:
    """Run every stage, write the figures, arrays and manifest.json; return them and timings."""
    if cfg.out.exists() and not cfg.out.is_dir():
        raise UserError(f"output path {cfg.out} exists and is not a folder")
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run = prepare(cfg)
    run.seconds["load"] = time.perf_counter() - start
    scripted = isinstance(run.model, torch.jit.ScriptModule)
    for name, units, stage in STAGES:
        if scripted and stage in NEEDS_LAYER_HOOKS:
            run.skipped.append(name)
            continue
        with (
            timed(run, name),
            tqdm(
                total=units(run), desc=name, disable=not progress, file=sys.stderr, leave=False
            ) as bar,
        ):
            stage(run, bar)
    man = manifest(run)
    atomic_write_bytes(cfg.out / "manifest.json", json_bytes(man))
    with timed(run, "report.pdf"):
        report.write_report(man, cfg.out, cfg.out / "report.pdf")
    run.seconds["total"] = time.perf_counter() - start
    return man, run.seconds


__all__ = ["RunConfig", "run_report", "sha256_file"]
