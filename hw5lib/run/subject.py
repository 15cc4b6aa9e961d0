"""Set up a report run: the model and its faster copies, the preprocessing, the class names and
the images to explain (the Subject), resolved once before any stage runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from hw5lib.config import RunConfig
from hw5lib.errors import UserError
from hw5lib.inputs.conventions import Convention
from hw5lib.inputs.datasets import (
    ImageSet,
    csv_images,
    open_dataset,
    within_classes,
)
from hw5lib.inputs.explained import Subject
from hw5lib.inputs.input_check import check_input
from hw5lib.inputs.input_verdict import ADOPTED, REPLAYED, InputCheck, preprocess_source, unchecked
from hw5lib.inputs.masks import object_masks
from hw5lib.inputs.user_preprocess import fit_display, import_reader, with_reader
from hw5lib.methods import metrics
from hw5lib.model.layers import gradient_copy, inference_copy, resolve_layer
from hw5lib.model.loading import LoadedModel, load_classifier
from hw5lib.model.preprocess import CLASS_PRESETS, FOOD11_CLASSES, Preprocess
from hw5lib.model.probe import (
    channels_last,
    infer_side,
    probe_output,
    require_spatial,
    take_off_head,
)
from hw5lib.run.image_choice import (
    explained_inputs,
    explained_targets,
    labels_out_of_range,
    mask_root,
)
from hw5lib.stages.context import Run
from hw5lib.stages.costs import Deadline
from hw5lib.stages.q4_cams import validate_cam_targets

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """--device: auto takes a GPU when there is one; asking for one that is not there is a
    user error, not torch's AssertionError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device must be cpu, cuda, cuda:N or auto, not {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"--device {name}: no CUDA GPU is usable here (none found, or torch is a CPU "
            "build); use --device cpu, or auto to take a GPU only when there is one"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu, cuda, cuda:N or auto, not {name!r}")
    return device


def resolve_preprocess(
    cfg: RunConfig, loaded: LoadedModel, model_channels: int, side: int | None = None
) -> Preprocess:
    """Flags win over what the checkpoint recorded, which wins over the side the probe found
    (``side``), which wins over the HW3 defaults."""
    base = loaded.preprocess or Preprocess(channels=model_channels)
    if side is not None and loaded.preprocess is None:
        base = replace(base, size=(side, side))
    size = (cfg.size, cfg.size) if cfg.size else base.size
    return replace(
        base,
        size=size,
        channels=cfg.channels or base.channels,
        channel_order=cfg.channel_order or base.channel_order,
        reader=cfg.reader or base.reader,
        mean=cfg.mean if cfg.mean is not None else base.mean,
        std=cfg.std if cfg.std is not None else base.std,
    )


def preprocess_given(cfg: RunConfig) -> bool:
    """Did the user (or a preset) set any part of the input convention?"""
    given = (cfg.channel_order, cfg.reader, cfg.mean, cfg.std, cfg.preprocess)
    return any(v is not None for v in given)


def user_reading(cfg: RunConfig, pre: Preprocess, split: ImageSet | None) -> Preprocess:
    """--preprocess: ``pre`` reading with the user's function, at the size it returns."""
    if not cfg.preprocess:
        return pre
    first = [*(split.paths if split is not None else ()), *sorted(cfg.images)]
    return with_reader(pre, import_reader(cfg.preprocess), first)


def user_display(cfg: RunConfig, pre: Preprocess, x: Tensor, paths: Sequence[Path]) -> Preprocess:
    """--preprocess: how the function's inputs ``x`` of the explained ``paths`` are shown."""
    if pre.function is None:
        return pre
    stats = pre.mean is not None or pre.std is not None  # --mean/--std, recorded or replayed
    return fit_display(pre, x, paths, order_given=cfg.channel_order is not None, stats_given=stats)


def check_convention(
    cfg: RunConfig,
    loaded: LoadedModel,
    model: nn.Module,
    pre: Preprocess,
    split: ImageSet | None,
    num_outputs: int,
    deadline: Deadline | None,
    replayed: Preprocess | None = None,
) -> tuple[Preprocess, InputCheck]:
    """The preprocessing to use after the input check (input_check.py): the resolved one, or
    the best-scoring convention where nothing was recorded or given; under --replay the one the
    replayed run used (the check still runs and is recorded, but decides nothing)."""
    source = preprocess_source(preprocess_given(cfg), loaded.preprocess is not None)
    if replayed is not None:
        pre = replace(
            pre,
            channel_order=replayed.channel_order,
            reader=replayed.reader,
            mean=replayed.mean,
            std=replayed.std,
        )
        source = REPLAYED
    if not cfg.input_check:
        check = unchecked(Convention.of(pre), source, "--no-input-check")
    else:
        check = check_input(
            model,
            split,
            pre,
            source,
            num_outputs,
            batch_size=cfg.batch_size,
            clock=deadline.clock if deadline else time.perf_counter,
        )
    log.info("input check: %s", check.note)
    return (check.chosen.apply(pre) if source == ADOPTED else pre), check


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


def check_layers(
    cfg: RunConfig, model: nn.Module, input_shape: tuple[int, int, int] | None = None
) -> None:
    """Resolve every layer the user named before any stage runs: a typo, or a layer whose
    output is not a spatial map, fails in a second, not after minutes of figures."""
    named = {
        "--filter-layers": cfg.filter_layers,
        "--cam-layer": (cfg.cam_layer,),
        "--feature-layer": (cfg.feature_layer,),
        "--dream-layer": (cfg.dream_layer,),
    }
    layers = {
        f"{option} {spec}:": resolve_layer(model, spec)[0]
        for option, specs in named.items()
        for spec in specs
        if spec
    }
    if layers and input_shape is not None:
        require_spatial(model, layers, input_shape)


def input_side(
    cfg: RunConfig, loaded: LoadedModel, model: nn.Module, data_side: int | None = None
) -> dict:
    """The input side and where it came from: --size, the checkpoint's record, or a probe of
    the model (a CSV's own side or the HW3 128 first, then the side its first Linear implies,
    then common sides)."""
    if cfg.size:
        return {"side": cfg.size, "source": "--size"}
    if loaded.preprocess is not None:
        return {"side": loaded.preprocess.size[0], "source": "checkpoint"}
    default = data_side or int(loaded.architecture.get("input_size", Preprocess().size[0]))
    side, source = infer_side(model, infer_channels(model), default)
    if source != "default":
        log.info("input size %dx%d: the first side the model runs at (no --size given)", side, side)
    return {"side": side, "source": source}


def infer_channels(model: nn.Module) -> int:
    """Input channels of the first Conv2d (1 for a grayscale model); 3 if there is none."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def prepare(
    cfg: RunConfig, deadline: Deadline | None = None, replayed: Preprocess | None = None
) -> Run:
    """Load the model, choose the preprocessing and the images to explain; ``replayed`` is the
    input convention of a --replay'd run."""
    device = pick_device(cfg.device)
    loaded = load_classifier(
        cfg.checkpoint,
        trust_pickle=cfg.trust_pickle,
        model_spec=cfg.model,
        model_args=cfg.model_args,
        checkpoint_key=cfg.checkpoint_key,
    )
    model = loaded.model.to(device).eval()
    table = csv_images(cfg.data)
    size = input_side(cfg, loaded, model, table.side if table else None)
    pre = resolve_preprocess(cfg, loaded, infer_channels(model), size["side"])
    split = open_dataset(cfg.data) if cfg.data is not None else None
    pre = user_reading(cfg, pre, split)
    # One forward: the number of classes, and whether the model ends in probabilities.
    head, out = probe_output(model, torch.zeros(1, pre.channels, *pre.size, device=device))
    num_outputs = int(out.shape[1])
    if head.kind != "logits":
        log.info("the model outputs %s: gradient methods explain %s", head.kind, head.explained)
        model = take_off_head(model, head)
    outside = labels_out_of_range(cfg, split, num_outputs)
    split = within_classes(split, num_outputs) if split is not None else None
    # Seeded random pixels: each fast path is checked against the plain model on them.
    noise = torch.rand(
        8, pre.channels, *pre.size, generator=torch.Generator().manual_seed(cfg.seed)
    )
    probe = pre.normalize(noise).to(device)
    check_layers(cfg, model, (pre.channels, *pre.size))
    fast_paths: dict[str, str] = {}
    model = channels_last(model, probe[:2], fast_paths)
    classes = resolve_classes(cfg, loaded, num_outputs, split.classes if split else None)
    # Built before the images are chosen: the input check's forwards run through it too
    # (about 2x a plain forward of the HW3 Classifier on the CPU).
    infer = inference_copy(model, probe, record=fast_paths)
    pre, check = check_convention(cfg, loaded, infer, pre, split, num_outputs, deadline, replayed)
    validate_cam_targets(cfg.cam_targets, num_outputs)
    paths, labels, x, skipped = explained_inputs(cfg, split, num_outputs, pre)
    pre = user_display(cfg, pre, x, paths)
    x = x.to(device)
    prob = metrics.predict(model, x, batch_size=cfg.batch_size, head=head.kind)[0].cpu()
    pred = prob.argmax(1)
    target = explained_targets(cfg.targets, labels, pred, num_outputs)
    root = mask_root(cfg.data)
    grad = gradient_copy(model, x[: min(len(x), 8)], record=fast_paths)
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
    run = Run(cfg, loaded, model, pre, classes, subject, device, infer=infer, grad=grad)
    run.input_check = check
    run.fast_paths, run.input_size, run.output = fast_paths, size, head
    run.out_of_range = outside
    run.skip_images(skipped)
    return run
