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
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import __version__, lime_adapter, metrics, report
from .budget import (
    EXPECTED_SHARE,
    FIGURE_SECONDS,
    PLAN_MARGIN,
    Clock,
    Cut,
    Deadline,
    Rates,
    Work,
    measure_rates,
    plan,
)
from .context import Run, RunConfig, Subject
from .data import (
    CLASS_PRESETS,
    FOOD11_CLASSES,
    LABELLED_SPLITS,
    TRAIN_SPLITS,
    Preprocess,
    label_of,
    load_inputs,
    open_dataset,
)
from .errors import UserError
from .models import (
    LoadedModel,
    gradient_copy,
    inference_copy,
    load_classifier,
    resolve_layer,
)
from .outputs import atomic_write_bytes, json_bytes, sha256_file
from .sample import load_mask
from .stages import (
    default_filter_layers,
    ig_first_steps,
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
    write_convergence,
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
    if device.type == "cpu" and not isinstance(model, torch.jit.ScriptModule):
        # oneDNN's convolutions run ~1.3-1.5x faster on NHWC tensors (bench/RESULTS.md).
        model = model.to(memory_format=torch.channels_last)
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
    infer = inference_copy(model, x[: min(len(x), 8)])
    grad = gradient_copy(model, x[: min(len(x), 8)])
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
    return Run(cfg, loaded, model, pre, classes, subject, device, infer=infer, grad=grad)


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


@dataclass(frozen=True)
class Stage:
    name: str
    units: Callable[[Run], int]  # progress-bar steps
    fn: Callable[[Run, tqdm], None]
    cost: Callable[[Run, RunConfig], Work]  # the work it will do under a config, for --budget
    hooks: bool = False  # reads inside the model (no TorchScript)


def explained(run: Run) -> int:
    return len(run.subject.paths)


def share(run: Run, method: str) -> float:
    """Share of its cap an adaptive method is expected to spend: what it spent on the images
    done so far in this run, else the sample set's mean (budget.EXPECTED_SHARE)."""
    return float(run.extra.get(f"{method}_share", EXPECTED_SHARE[method]))  # type: ignore[arg-type]


def shares_at_cap(cfg: RunConfig) -> dict[str, float]:
    """Each adaptive method's share when nothing converges: its cap, except IG, whose doublings
    (8, 16, 32, ... while within --ig-steps) evaluate the gradients of every round."""
    first = ig_first_steps(cfg)
    rounds = [first * 2**k for k in range(32) if first * 2**k <= cfg.ig_steps]
    return {f"{m}_share": 1.0 for m in EXPECTED_SHARE} | {"ig_share": sum(rounds) / cfg.ig_steps}


def lime_expected(run: Run, cfg: RunConfig) -> float:
    """LIME samples per image: never fewer than the floor of its stopping rule."""
    floor = min(cfg.lime_samples, lime_adapter.MIN_SAMPLES)
    return max(floor, cfg.lime_samples * share(run, "lime"))


def filter_layer_names(run: Run, cfg: RunConfig) -> list[str]:
    return list(cfg.filter_layers) or default_filter_layers(run.model, cfg.filter_layer_count)


def eval_count(run: Run, cfg: RunConfig) -> int:
    """Images the confusion matrix will classify (the labelled split, or --eval-limit)."""
    if cfg.data is None:
        return 0
    if "labelled" not in run.extra:
        run.extra["labelled"] = len(open_dataset(cfg.data, LABELLED_SPLITS))
    total = int(run.extra["labelled"])  # type: ignore[call-overload]
    return total if cfg.eval_limit is None else min(total, cfg.eval_limit)


def cam_columns(run: Run, cfg: RunConfig) -> int:
    """Targets per image in the CAM figures."""
    if cfg.cam_targets == "all":
        return len(run.classes)
    return 1 if cfg.cam_targets in ("pred", "label") else len(cfg.cam_targets.split(","))


def trust_cost(run: Run, cfg: RunConfig) -> Work:
    if not cfg.trust:
        return Work()
    n = explained(run)
    rows = 10  # methods with a map, LIME, the random map
    # The randomized model reruns SmoothGrad until converged, IG at the trained maps' last step
    # count (trust.ig_like_trained).
    ig_steps = run.extra.get("ig_final_steps", cfg.ig_steps)
    sampled = n * (cfg.smooth_samples * share(run, "smoothgrad") + ig_steps)  # type: ignore[operator]
    return Work(
        forward=rows * n * (cfg.deletion_steps + 1) * 2,
        backward=4 * n + (sampled if cfg.randomize_sampled else 0) + 4 * n,  # + CAM layers
        seconds=3 * FIGURE_SECONDS,
    )


def dream_cost(run: Run, cfg: RunConfig) -> Work:
    octave_area = sum(1.4 ** (-2 * k) for k in range(3))  # 3 octaves, scale 1.4
    images = min(cfg.dream_images, explained(run))
    return Work(backward=images * 20 * octave_area, forward=2 * images, seconds=FIGURE_SECONDS)


STAGES: list[Stage] = [
    Stage(
        "Q1 saliency",
        lambda r: 1,
        stage_saliency,
        lambda r, c: Work(backward=explained(r), seconds=FIGURE_SECONDS),
    ),
    Stage(
        "Q2 filters",
        lambda r: len(filter_layer_names(r, r.cfg)),
        stage_filters,
        # Ascent runs the model only up to the layer: about half of it on average.
        # A filter still climbing is redone with twice the steps: 3 x steps at the cap.
        lambda r, c: Work(
            backward=0.5
            * len(filter_layer_names(r, c))
            * (len(c.filters) or c.filters_per_layer)
            * 3
            * c.filter_steps
            * (share(r, "filters") if c.adaptive else 1 / 3),
            forward=explained(r) * len(filter_layer_names(r, c)),
            seconds=FIGURE_SECONDS * (1 + len(filter_layer_names(r, c))),
        ),
        hooks=True,
    ),
    Stage(
        "Q3 LIME",
        explained,
        stage_lime,
        lambda r, c: Work(
            forward=explained(r) * lime_expected(r, c),
            seconds=0.3 * explained(r) + FIGURE_SECONDS,
        ),
    ),
    Stage(
        "Q4 SmoothGrad",
        lambda r: 1,
        stage_smoothgrad,
        lambda r, c: Work(
            backward=explained(r) * c.smooth_samples * share(r, "smoothgrad"),
            seconds=FIGURE_SECONDS,
        ),
    ),
    Stage(
        "Q4 Grad x Input",
        lambda r: 1,
        stage_grad_x_input,
        lambda r, c: Work(backward=explained(r), seconds=FIGURE_SECONDS),
    ),
    Stage(
        "Q4 Integrated Gradients",
        lambda r: 1,
        stage_integrated_gradients,
        lambda r, c: Work(
            backward=explained(r) * c.ig_steps * share(r, "ig"),
            forward=4 * explained(r),
            seconds=FIGURE_SECONDS,
        ),
    ),
    Stage(
        "Q3 confusion matrix",
        lambda r: 1,
        stage_confusion,
        lambda r, c: Work(
            forward=eval_count(r, c), seconds=0.004 * eval_count(r, c) + 2 * FIGURE_SECONDS
        ),
    ),
    Stage(
        "Q4 Grad-CAM, LayerCAM",
        lambda r: 2,
        stage_cams,
        lambda r, c: Work(
            backward=2 * explained(r) * (1 + cam_columns(r, c)), seconds=2 * FIGURE_SECONDS
        ),
        hooks=True,
    ),
    Stage(
        "Q4 feature maps",
        lambda r: 1,
        stage_feature_grid,
        lambda r, c: Work(forward=1, seconds=FIGURE_SECONDS),
        hooks=True,
    ),
    Stage("Q4 DeepDream", lambda r: 1, stage_dream, dream_cost, hooks=True),
    Stage("trust checks", lambda r: 11 if r.cfg.trust else 0, stage_trust, trust_cost),
]

# What the budget planner gives up, cheapest to lose first: cross-checks before figures, fewer
# samples than the matched precision only after whole optional stages are gone.
CUTS: list[Cut] = [
    Cut(
        "trust checks",
        "randomization check run for the single-pass methods only (not SmoothGrad, IG)",
        {"randomize_sampled": False},
    ),
    Cut(
        "Q3 confusion matrix",
        "accuracy on a stratified subset of 500 images",
        {"eval_limit": 500},
    ),
    Cut("Q4 DeepDream", "one image instead of three", {"dream_images": 1}),
    Cut(
        "trust checks",
        "deletion/insertion curves with 8 steps instead of 16",
        {"deletion_steps": 8},
    ),
    Cut("Q2 filters", "two layers instead of four", {"filter_layer_count": 2}),
    Cut("Q3 LIME", "600 samples per image, no more", {"lime_samples": 600}),
    Cut("trust checks", "trust checks not run", {"skip": True}),
    Cut("Q4 DeepDream", "DeepDream not run", {"skip": True}),
    Cut(
        "Q3 confusion matrix", "accuracy on a stratified subset of 100 images", {"eval_limit": 100}
    ),
    Cut("Q4 Integrated Gradients", "at most 16 steps", {"ig_steps": 16}),
    Cut("Q4 SmoothGrad", "at most 20 samples", {"smooth_samples": 20}),
    Cut("Q2 filters", "one layer", {"filter_layer_count": 1}),
    Cut("Q2 filters", "40 ascent steps", {"filter_steps": 40}),
    Cut("Q3 LIME", "300 samples per image (less precise than stock lime)", {"lime_samples": 300}),
    Cut("Q4 feature maps", "feature-map grid not drawn", {"skip": True}),
    Cut("Q4 Grad-CAM, LayerCAM", "Grad-CAM and LayerCAM not run", {"skip": True}),
]


@contextmanager
def timed(run: Run, name: str, clock: Clock = time.perf_counter) -> Iterator[None]:
    start = clock()
    try:
        yield
    finally:
        run.seconds[name] = clock() - start


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
        "budget": {"seconds": cfg.budget} if cfg.budget is not None else None,
        "cuts": [
            f"{name}: skipped, a TorchScript model takes no forward hooks (pass the model "
            "definition with --model and a state_dict to get it)"
            for name in run.skipped
        ]
        + run.cuts,
        "convergence": run.convergence,
        "outputs": dict(sorted(run.outputs.items())),
    }


def plan_stage(run: Run, base: RunConfig, rates: Rates, index: int) -> bool:
    """Re-plan the stages from ``index`` on to the time left; set the stage's config and record
    its cuts. False when the stage is cut altogether."""
    stage = STAGES[index]
    costs = [(s.name, partial(s.cost, run)) for s in STAGES[index:] if s.name not in run.skipped]
    left = run.deadline.left()
    p = plan(base, costs, rates, left * PLAN_MARGIN, CUTS)
    run.cfg = p.cfg
    for cut in p.cuts:
        if cut.stage == stage.name:
            run.cuts.append(f"{stage.name}: {cut.what}, to fit the {base.budget:.0f} s budget")
    if stage.name in p.cfg.skip_stages:
        return False
    # A stage that may not finish in the time left is not started: a sampled method at its
    # cap (it need not converge early) must fit, or its figure would be cut off half-done.
    at_cap = replace(run, extra=run.extra | shares_at_cap(p.cfg))
    worst = stage.cost(at_cap, p.cfg).at(rates)
    if worst > left:
        run.cuts.append(
            f"{stage.name}: not run, it may need {worst:.0f} s and {max(left, 0):.0f} s of the "
            f"{base.budget:.0f} s budget were left"
        )
        return False
    return True


def run_report(
    cfg: RunConfig,
    *,
    progress: bool = True,
    clock: Clock = time.perf_counter,
    started: float | None = None,
) -> tuple[dict, dict[str, float]]:
    """Run every stage, write the figures, arrays and manifest.json; return them and timings.

    With ``cfg.budget`` the model's speed is measured first and every stage is planned to the
    time left (budget.py); past the deadline, stages stop and the manifest names what was cut.
    """
    if cfg.out.exists() and not cfg.out.is_dir():
        raise UserError(f"output path {cfg.out} exists and is not a folder")
    cfg.out.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(cfg.budget, clock, started)  # the clock runs from the command's start
    run = prepare(cfg)
    run.deadline = deadline
    run.seconds["load"] = deadline.elapsed()
    scripted = isinstance(run.model, torch.jit.ScriptModule)
    run.skipped = [s.name for s in STAGES if scripted and s.hooks]
    rates = None
    if cfg.budget is not None:
        probe = run.subject.x[: min(16, cfg.batch_size)].repeat(2, 1, 1, 1)[
            : min(16, cfg.batch_size)
        ]
        rates = measure_rates(run.inference, run.model, probe, clock=clock)
        run.extra["rates"] = rates.to_dict()
        run.seconds["measure speed"] = deadline.elapsed() - run.seconds["load"]
    for index, stage in enumerate(STAGES):
        if stage.name in run.skipped:
            continue
        if deadline.passed():
            run.cuts.append(f"{stage.name}: not run, the {cfg.budget:.0f} s budget was spent")
            continue
        if rates is not None and not plan_stage(run, cfg, rates, index):
            continue
        with (
            timed(run, stage.name, clock),
            tqdm(
                total=stage.units(run),
                desc=stage.name,
                disable=not progress,
                file=sys.stderr,
                leave=False,
            ) as bar,
        ):
            stage.fn(run, bar)
    run.cfg = cfg
    write_convergence(run)
    man = manifest(run)
    atomic_write_bytes(cfg.out / "manifest.json", json_bytes(man))
    with timed(run, "report.pdf", clock):
        report.write_report(man, cfg.out, cfg.out / "report.pdf")
    run.seconds["total"] = deadline.elapsed()
    atomic_write_bytes(
        cfg.out / "timings.json",
        json_bytes(
            {
                "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
                "rates": run.extra.get("rates"),
            }
        ),
    )
    return man, run.seconds


__all__ = ["RunConfig", "run_report", "sha256_file"]
