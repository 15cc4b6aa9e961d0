"""Plan and run the report's stages, one tqdm bar each, and write manifest.json.

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import __version__, attributions, cam, dream, figures, filters, lime_adapter, metrics, report
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
from .models import LoadedModel, load_classifier, resolve_layer
from .outputs import atomic_write_bytes, json_bytes, npz_bytes, sha256_bytes, sha256_file
from .sample import load_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Everything a report run depends on; recorded in the manifest."""

    data: Path | None
    out: Path
    checkpoint: Path
    model: str | None = None
    model_args: dict | None = None
    channels: int | None = None
    targets: str = "label"
    training_indices: tuple[int, ...] = ()
    named_images: tuple[str, ...] = ()
    seed: int = 0
    trust_pickle: bool = False
    size: int | None = None
    channel_order: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: str | None = None
    images: tuple[Path, ...] = ()
    per_class: int = 1
    filter_layers: tuple[str, ...] = ()
    filters: tuple[int, ...] = ()
    filters_per_layer: int = 4
    filter_steps: int = 50
    activation_images: int = 4
    lime_samples: int = 1000
    smooth_samples: int = 50
    smooth_sigma: float = 0.15
    ig_steps: int = 32
    ig_baseline: str = "black"
    cam_layer: str | None = None
    cam_targets: str = "pred"
    feature_layer: str | None = None
    dream_layer: str | None = None
    dream_images: int = 3
    eval_limit: int | None = None
    trust: bool = True
    deletion_steps: int = 16
    randomize_top: int = 5
    batch_size: int = 64
    device: str = "auto"
    command: str = ""


@dataclass
class Subject:
    """The images being explained and what the model makes of them."""

    paths: list[Path]
    x: Tensor  # (N, C, H, W) model input
    pixels: np.ndarray  # (N, H, W, C) what the model saw, in [0,1], display channel order
    labels: list[int | None]
    target: Tensor  # (N,) the label where known, else the prediction
    pred: Tensor  # (N,)
    prob: Tensor  # (N, K)
    masks: np.ndarray | None  # (N, H, W) bool object masks, for generated sample sets

    def titles(self, classes: list[str]) -> list[str]:
        out = []
        for i, p in enumerate(self.paths):
            label = self.labels[i]
            head = classes[label] if label is not None else p.name
            out.append(f"{head}\npred {classes[self.pred[i]]} {float(self.prob[i].max()):.0%}")
        return out


@dataclass
class Run:
    cfg: RunConfig
    loaded: LoadedModel
    model: nn.Module
    pre: Preprocess
    classes: list[str]
    subject: Subject
    device: torch.device
    figures: list[dict] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    maps: dict[str, Tensor] = field(default_factory=dict)  # method -> [N,H,W], for the trust table
    extra: dict[str, object] = field(default_factory=dict)
    skipped: list[str] = field(
        default_factory=list
    )  # stages this model cannot run  # more manifest keys (accuracy, trust)

    def generator(self, stream: int) -> torch.Generator:
        """An independent, seeded random stream per stage: stages never share RNG state."""
        return torch.Generator().manual_seed(self.cfg.seed * 1000 + stream)

    def write(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.cfg.out / name, data)
        self.outputs[name] = sha256_bytes(data)

    def write_png(self, name: str, fig: object) -> None:
        data = figures.save_png(fig, self.cfg.out / name)  # type: ignore[arg-type]
        self.outputs[name] = sha256_bytes(data)

    def write_npz(self, name: str, **arrays: np.ndarray) -> None:
        self.write(name, npz_bytes(arrays))

    def add_figure(self, **record: object) -> None:
        self.figures.append(record)

    def to_input(self, pixels: Tensor) -> Tensor:
        return self.pre.normalize(pixels.cpu()).to(self.device)


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


# ---------------------------------------------------------------- stages


def mask_caption(run: Run, maps: np.ndarray) -> str:
    """Where masks exist: share of the positive map inside the object vs the object's area."""
    masks = run.subject.masks
    if masks is None:
        return ""
    inside = metrics.mass_inside(torch.as_tensor(maps), torch.from_numpy(masks)).mean()
    return (
        f" Mean share of the positive attribution inside the object mask: {inside:.2f}"
        f" (the object covers {masks.mean():.2f} of the image on average)."
    )


def save_attribution(
    run: Run,
    fid: str,
    section: str,
    method: str,
    title: str,
    caption: str,
    maps: Tensor,
    *,
    signed: bool = False,
    params: dict | None = None,
    raw: Tensor | None = None,
) -> None:
    """The figure, the raw arrays and the manifest record of one per-pixel attribution method."""
    s = run.subject
    run.maps[method] = maps.detach().cpu()
    arr = maps.detach().cpu().numpy().astype(np.float32)
    fig = figures.image_map_pairs(s.pixels, arr, s.titles(run.classes), title, signed=signed)
    run.write_png(f"{fid}.png", fig)
    run.write_npz(
        f"{fid}.npz",
        input=s.x.cpu().numpy().astype(np.float32),
        target=s.target.cpu().numpy(),
        attribution=(raw if raw is not None else maps).detach().cpu().numpy().astype(np.float32),
        map=arr,
        files=np.array([p.name for p in s.paths]),
    )
    run.add_figure(
        id=fid,
        section=section,
        title=title,
        png=f"{fid}.png",
        npz=f"{fid}.npz",
        caption=caption + mask_caption(run, arr),
        params=params or {},
    )


def stage_saliency(run: Run, bar: tqdm) -> None:
    s = run.subject
    maps = attributions.saliency(run.model, s.x, s.target, batch_size=run.cfg.batch_size)
    bar.update()
    save_attribution(
        run,
        "q1_saliency",
        "Q1",
        "Saliency",
        "Saliency maps: |d score / d pixel|",
        f"Vanilla gradient saliency (Simonyan et al., 2014) of the target class logit for "
        f"{len(s.paths)} images, max over color channels, each map scaled to its own range.",
        maps,
    )


def stage_filters(run: Run, bar: tqdm) -> None:
    cfg, s = run.cfg, run.subject
    layer_names = list(cfg.filter_layers) or default_filter_layers(run.model)
    names, images, chosen, gains = [], [], [], []
    first = len(run.figures)
    for k, spec in enumerate(layer_names):
        name, layer = resolve_layer(run.model, spec)
        acts = filters.layer_activations(run.model, layer, s.x, batch_size=cfg.batch_size)
        idx = list(cfg.filters) or filters.most_active_filters(acts, cfg.filters_per_layer)
        bad = [f for f in idx if f >= acts.shape[1]]
        if bad:
            raise UserError(f"layer {name} has {acts.shape[1]} filters; no filter {bad[0]}")
        result = filters.filter_ascent(
            run.model,
            layer,
            idx,
            shape=(run.pre.channels, *run.pre.size),
            to_input=run.to_input,
            steps=cfg.filter_steps,
            generator=run.generator(10 + k),
        )
        # Reached vs start image vs the best explained real image, per filter.
        real = acts[:, idx].mean(dim=(2, 3)).amax(dim=0).cpu()
        gain = torch.stack([result.activation[-1].cpu(), result.activation[0].cpu(), real], dim=1)
        names.append(name)
        images.append(result.pixels.permute(0, 2, 3, 1).cpu().numpy())
        chosen.append(idx)
        gains.append(gain.tolist())
        rows = min(cfg.activation_images, len(s.paths))
        amaps = acts[:rows, idx].relu().cpu().numpy()
        fid = f"q2_activations_{name.replace('.', '_')}"
        fig = figures.activation_grid(
            s.pixels[:rows],
            amaps,
            idx,
            s.titles(run.classes)[:rows],
            f"Activation maps of {name} filters {idx} on real images",
        )
        run.write_png(f"{fid}.png", fig)
        run.write_npz(
            f"{fid}.npz",
            input=s.x[:rows].cpu().numpy(),
            filters=np.array(idx),
            activation=acts[:rows, idx].cpu().numpy(),
            ascent_image=images[-1],
            ascent_curve=result.activation.cpu().numpy(),
        )
        run.add_figure(
            id=fid,
            section="Q2",
            title=f"Activation maps of layer {name}",
            caption=f"Output channels {idx} of {name} ({type(layer).__name__}) on {rows} images; "
            f"each filter's maps share one color scale. Mean activation per filter over the "
            f"explained images: {', '.join(f'{v:.3f}' for v in acts[:, idx].mean(dim=(0, 2, 3)).tolist())}.",
            png=f"{fid}.png",
            npz=f"{fid}.npz",
            params={"layer": name, "filters": idx},
        )
        bar.update()
    fig = figures.filter_grid(
        names, images, chosen, gains, "Filter visualization by gradient ascent"
    )
    run.write_png("q2_filters.png", fig)
    run.write_npz(
        "q2_filters.npz",
        **{f"{n.replace('.', '_')}_images": im for n, im in zip(names, images, strict=True)},
    )
    summary = "; ".join(
        f"{n}: filters {c} reach mean activation "
        + ", ".join(f"{end:.2f}" for end, _, _ in g)
        + " (start image "
        + ", ".join(f"{start:.2f}" for _, start, _ in g)
        + "; best real image "
        + ", ".join(f"{best:.2f}" for _, _, best in g)
        + ")"
        for n, c, g in zip(names, chosen, gains, strict=True)
    )
    # The filters figure leads Q2, before the activation maps of the same filters.
    run.figures.insert(
        first,
        dict(
            id="q2_filters",
            section="Q2",
            title="Filter visualization by gradient ascent",
            caption=f"Each image starts from near-gray noise and climbs one filter's mean activation for "
            f"{cfg.filter_steps} AdamW steps on a Fourier-parameterized image with random jitter, "
            f"rotation and scale (Olah et al., 2017), one row per layer. {summary}.",
            png="q2_filters.png",
            npz="q2_filters.npz",
            params={"layers": names, "filters": chosen, "steps": cfg.filter_steps},
        ),
    )


def default_filter_layers(model: nn.Module, count: int = 4) -> list[str]:
    """Activation layers after the conv layers, ``count`` of them spread from first to last."""
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU))
    ]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    pool = names or convs
    if not pool:
        raise UserError("the model has no Conv2d or activation layer; pass --filter-layers")
    # Only activations that come before the classifier head: the ones inside the conv trunk.
    trunk = [n for n in pool if n.split(".")[0] == convs[-1].split(".")[0]] if convs else pool
    pool = trunk or pool
    picks = np.unique(np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int))
    return [pool[i] for i in picks]


def smoothgrad_maps(run: Run, model: nn.Module, x: Tensor, target: Tensor, stream: int) -> Tensor:
    """SmoothGrad of saliency with the run's settings and the noise of random ``stream``."""
    return attributions.smoothgrad(
        attributions.saliency,
        model,
        x,
        target,
        samples=run.cfg.smooth_samples,
        sigma=run.cfg.smooth_sigma,
        generator=run.generator(stream),
        batch_size=run.cfg.batch_size,
    )


def lime_of(run: Run, i: int, label: int, seed: int) -> lime_adapter.LimeResult:
    """LIME for explained image ``i`` (gray images go to lime as RGB and back)."""
    s = run.subject
    rgb = np.repeat(s.pixels[i], 3, axis=-1) if s.pixels.shape[-1] == 1 else s.pixels[i]
    return lime_adapter.explain(
        run.model,
        rgb,
        label,
        to_input=run.to_input,
        channels=run.pre.channels,
        samples=run.cfg.lime_samples,
        seed=seed,
    )


def stage_lime(run: Run, bar: tqdm) -> None:
    cfg, s = run.cfg, run.subject
    results = []
    for i in range(len(s.paths)):
        results.append(lime_of(run, i, int(s.target[i]), cfg.seed))
        bar.update()
    segs = np.stack([r.segments for r in results])
    width = max(len(r.weights) for r in results)
    weights = np.zeros((len(results), width))
    for i, r in enumerate(results):
        weights[i, : len(r.weights)] = r.weights
    fig = figures.lime_figure(
        s.pixels,
        segs,
        [r.weights for r in results],
        s.titles(run.classes),
        "LIME: superpixels for (green) and against (red) the class",
    )
    run.write_png("q3_lime.png", fig)
    run.write_npz(
        "q3_lime.npz",
        input=s.x.cpu().numpy(),
        target=s.target.cpu().numpy(),
        segments=segs,
        weights=weights,
        score=np.array([r.score for r in results]),
    )
    # The superpixel explanation as a per-pixel map, for the mask share and the trust table.
    maps = np.stack([r.weights[r.segments] for r in results])
    run.maps["LIME"] = torch.from_numpy(maps).float()
    run.extra["lime_results"] = results
    run.add_figure(
        id="q3_lime",
        section="Q3",
        title="LIME explanations",
        caption=f"LIME (Ribeiro et al., 2016) with {cfg.lime_samples} perturbed samples per image over "
        f"SLIC superpixels (n_segments=100, compactness=1, sigma=1, numbered from 0); the 5 most "
        f"positive superpixels are green, the 5 most negative red. Mean R^2 of lime's local linear "
        f"model: {np.mean([r.score for r in results]):.2f}." + mask_caption(run, maps),
        png="q3_lime.png",
        npz="q3_lime.npz",
        params={"samples": cfg.lime_samples, "seed": cfg.seed},
    )


def stage_smoothgrad(run: Run, bar: tqdm) -> None:
    cfg, s = run.cfg, run.subject
    maps = smoothgrad_maps(run, run.model, s.x, s.target, 30)
    bar.update()
    save_attribution(
        run,
        "q4_smoothgrad",
        "Q4",
        "SmoothGrad",
        "SmoothGrad",
        f"SmoothGrad (Smilkov et al., 2017): saliency averaged over {cfg.smooth_samples} copies "
        f"of each image with Gaussian noise of std {cfg.smooth_sigma} x its value range.",
        maps,
        params={"samples": cfg.smooth_samples, "sigma": cfg.smooth_sigma},
    )


def stage_grad_x_input(run: Run, bar: tqdm) -> None:
    s = run.subject
    raw = attributions.grad_x_input(run.model, s.x, s.target, batch_size=run.cfg.batch_size)
    bar.update()
    save_attribution(
        run,
        "q4_grad_x_input",
        "Q4",
        "Gradient x Input",
        "Gradient x Input",
        "Gradient x Input (Shrikumar et al., 2016) summed over channels: red pixels raise the "
        "class score to first order, blue ones lower it.",
        attributions.channel_sum(raw),
        signed=True,
        raw=raw,
    )


def stage_integrated_gradients(run: Run, bar: tqdm) -> None:
    cfg, s = run.cfg, run.subject
    baseline = ig_baseline(run, cfg.ig_baseline)
    raw = attributions.integrated_gradients(
        run.model, s.x, s.target, baseline=baseline, steps=cfg.ig_steps, batch_size=cfg.batch_size
    )
    err = attributions.completeness_error(run.model, s.x, s.target, baseline, raw)
    bar.update()
    save_attribution(
        run,
        "q4_integrated_gradients",
        "Q4",
        "Integrated Gradients",
        f"Integrated Gradients ({cfg.ig_baseline} baseline)",
        f"Integrated Gradients (Sundararajan et al., 2017) from a {cfg.ig_baseline} baseline with "
        f"{cfg.ig_steps} Gauss-Legendre steps, summed over channels. Completeness error "
        f"|sum - (f(x) - f(baseline))| / |f(x) - f(baseline)|: median {float(err.median()):.4f}, "
        f"max {float(err.max()):.4f}.",
        attributions.channel_sum(raw),
        signed=True,
        raw=raw,
        params={"baseline": cfg.ig_baseline, "steps": cfg.ig_steps},
    )


def ig_baseline(run: Run, kind: str) -> Tensor:
    x = run.subject.x
    if kind == "black":
        return run.to_input(torch.zeros_like(x.cpu()))
    if kind == "blur":
        return metrics.gaussian_blur(x)
    raise UserError(f"--ig-baseline must be 'black' or 'blur', not {kind!r}")


# ---------------------------------------------------------------- Q3 accuracy, Q4 CAMs and more


def stratified(labels: list[int], limit: int | None) -> list[int]:
    """All indices, or ``limit`` of them spread evenly over each class (deterministic)."""
    if limit is None or limit >= len(labels):
        return list(range(len(labels)))
    classes = sorted(set(labels))
    per = max(1, limit // len(classes))
    out = []
    for c in classes:
        idx = [i for i, lb in enumerate(labels) if lb == c]
        picks = np.linspace(0, len(idx) - 1, min(per, len(idx))).round().astype(int)
        out += [idx[i] for i in np.unique(picks)]
    return sorted(out)


def stage_confusion(run: Run, bar: tqdm) -> None:
    """Accuracy on the labelled split, the confusion matrix, and per class the most confident
    correct image and the most confident mistake, each tied to its confusion-matrix cell."""
    cfg = run.cfg
    if cfg.data is None:
        run.extra["accuracy"] = None
        return
    split = open_dataset(cfg.data, LABELLED_SPLITS)
    pairs = [
        (p, lb)
        for p, lb in zip(split.paths, split.labels, strict=True)
        if lb is not None and lb < len(run.classes)
    ]
    bar.update()
    if not pairs:
        run.extra["accuracy"] = None
        return
    idx = stratified([lb for _, lb in pairs], cfg.eval_limit)
    paths = [pairs[i][0] for i in idx]
    labels = torch.tensor([pairs[i][1] for i in idx])
    probs = torch.cat(
        [
            metrics.predict(
                run.model, load_inputs(paths[s], run.pre).to(run.device), batch_size=cfg.batch_size
            )[0].cpu()
            for s in attributions.chunks(len(paths), 256)
        ]
    )
    preds = probs.argmax(1)
    k = len(run.classes)
    cm = metrics.confusion_matrix(labels, preds, k)
    acc = metrics.per_class_accuracy(cm)
    overall = float(np.trace(cm) / cm.sum())
    subset = (
        "all of " + split.root.name
        if len(idx) == len(pairs)
        else (f"a stratified subset of {len(idx)} of {len(pairs)} images in {split.root.name}")
    )
    conf = metrics.top_confusions(cm, 5)
    run.extra["accuracy"] = {
        "overall": round(overall, 6),
        "evaluated": len(idx),
        "subset": subset,
        "per_class": [None if np.isnan(a) else round(float(a), 6) for a in acc],
    }
    run.extra["top_confusions"] = [
        {"true": run.classes[t], "pred": run.classes[p], "count": n} for t, p, n in conf
    ]
    fig = figures.confusion_figure(
        cm, run.classes, f"Confusion matrix ({subset}), accuracy {overall:.1%}"
    )
    run.write_png("q3_confusion.png", fig)
    run.write_npz(
        "q3_confusion.npz",
        confusion=cm,
        per_class_accuracy=acc,
        labels=labels.numpy(),
        preds=preds.numpy(),
    )
    best = int(np.nanargmax(acc)) if not np.isnan(acc).all() else 0
    worst = int(np.nanargmin(acc)) if not np.isnan(acc).all() else 0
    confusions = (
        "; ".join(f"{run.classes[t]} -> {run.classes[p]}: {n}" for t, p, n in conf) or "none"
    )
    run.add_figure(
        id="q3_confusion",
        section="Q3",
        title="Confusion matrix",
        caption=f"Predictions on {subset} (rows: true class, columns: predicted; color is the row "
        f"share, numbers are counts). Overall accuracy {overall:.1%}; best class {run.classes[best]} "
        f"({acc[best]:.0%}), worst {run.classes[worst]} ({acc[worst]:.0%}). Top confusions: {confusions}.",
        png="q3_confusion.png",
        npz="q3_confusion.npz",
        params={"evaluated": len(idx)},
    )
    examples = metrics.select_examples(labels, preds, probs)
    tiles, titles = [], []
    h, w = run.pre.size
    blank = np.full((h, w, run.pre.channels), np.nan, dtype=np.float32)
    chosen = []
    for c in range(k):
        for kind in ("correct", "mistake"):
            ex = examples[c][kind]
            if ex is None:
                tiles.append(blank)
                titles.append(f"{run.classes[c]}\nno {kind}")
                continue
            chosen.append(paths[ex["index"]])
            t, p = ex["cell"]
            tiles.append(None)
            titles.append(
                f"{kind}: {run.classes[t]}\n-> {run.classes[p]} {ex['prob']:.0%} cell({t},{p})"
            )
    pix = (
        run.pre.denormalize(load_inputs(chosen, run.pre)).permute(0, 2, 3, 1).numpy()
        if chosen
        else []
    )
    it = iter(pix)
    tiles = [next(it) if t is None else t for t in tiles]
    fig = figures.example_grid(
        np.stack(tiles), titles, 6, "Most confident correct image and mistake per class"
    )
    run.write_png("q3_examples.png", fig)
    run.add_figure(
        id="q3_examples",
        section="Q3",
        title="Most confident correct image and mistake per class",
        caption="For each true class, the image the model got right with the highest confidence and "
        "the wrong prediction it made with the highest confidence; cell(t,p) names the confusion "
        "matrix cell each one illustrates.",
        png="q3_examples.png",
        npz=None,
        params={"files": [p.name for p in chosen]},
    )


def validate_cam_targets(spec: str, num_classes: int) -> list[int]:
    """``pred``, ``label``, ``all`` or class indices; returns the indices (empty for the words)."""
    if spec in ("pred", "label", "all"):
        return []
    try:
        wanted = [int(v) for v in spec.split(",")]
    except ValueError:
        raise UserError(
            f"--cam-targets must be pred, label, all or class indices, not {spec!r}"
        ) from None
    if any(not 0 <= v < num_classes for v in wanted):
        raise UserError(f"--cam-targets: class indices must be in 0..{num_classes - 1}")
    return wanted


def cam_target_columns(run: Run) -> tuple[Tensor, list[list[str]]]:
    """Targets [N,T] for the CAM figures: the prediction, every class, or a list of classes."""
    s, k = run.subject, len(run.classes)
    spec = run.cfg.cam_targets
    if spec == "pred":
        t = s.pred.view(-1, 1)
    elif spec == "label":
        t = s.target.cpu().view(-1, 1)
    elif spec == "all":
        t = torch.arange(k).repeat(len(s.paths), 1)
    else:
        t = torch.tensor(validate_cam_targets(spec, k)).repeat(len(s.paths), 1)
    names = [[run.classes[int(c)] for c in row] for row in t]
    return t, names


def cam_layer_name(run: Run) -> str:
    if run.cfg.cam_layer:
        return resolve_layer(run.model, run.cfg.cam_layer)[0]
    return cam.default_cam_layer(run.model, (run.pre.channels, *run.pre.size))


def stage_cams(run: Run, bar: tqdm) -> None:
    s = run.subject
    layer = cam_layer_name(run)
    targets, names = cam_target_columns(run)
    n, t = targets.shape
    xs = s.x.repeat_interleave(t, dim=0)
    flat = targets.reshape(-1).to(run.device)
    for method, fn, paper in (
        ("Grad-CAM", cam.grad_cam, "Selvaraju et al., 2017: channel weights are the mean gradient"),
        (
            "LayerCAM",
            cam.layer_cam,
            "Jiang et al., 2021: every element weighted by its positive gradient",
        ),
    ):
        maps = (
            fn(run.model, xs, flat, layer, batch_size=run.cfg.batch_size)
            .cpu()
            .reshape(n, t, *s.x.shape[-2:])
        )
        bar.update()
        # The trust table scores the map of the explained target, as for the other methods.
        run.maps[method] = fn(run.model, s.x, s.target, layer, batch_size=run.cfg.batch_size).cpu()
        fid = "q4_" + method.lower().replace("-", "_")
        fig = figures.cam_grid(
            s.pixels,
            maps.numpy(),
            s.titles(run.classes),
            [[f"{method}: {c}" for c in row] for row in names],
            f"{method} at {layer}",
        )
        run.write_png(f"{fid}.png", fig)
        run.write_npz(
            f"{fid}.npz", input=s.x.cpu().numpy(), target=targets.numpy(), attribution=maps.numpy()
        )
        run.add_figure(
            id=fid,
            section="Q4",
            title=f"{method} at {layer}",
            caption=f"{method} ({paper}) at layer {layer}, upsampled bilinearly and overlaid on the "
            f"image, for target(s) '{run.cfg.cam_targets}'."
            + mask_caption(run, run.maps[method].numpy()),
            png=f"{fid}.png",
            npz=f"{fid}.npz",
            params={"layer": layer, "targets": run.cfg.cam_targets},
        )


def stage_feature_grid(run: Run, bar: tqdm) -> None:
    s = run.subject
    layer = (
        resolve_layer(run.model, run.cfg.feature_layer)[0]
        if run.cfg.feature_layer
        else cam_layer_name(run)
    )
    acts = cam.feature_maps(run.model, s.x[:1], layer)[0].cpu().numpy()
    bar.update()
    fig = figures.feature_grid(
        acts, f"All {len(acts)} channels of {layer} for {s.paths[0].name} (ReLU'd)"
    )
    run.write_png("q4_feature_maps.png", fig)
    run.write_npz("q4_feature_maps.npz", input=s.x[:1].cpu().numpy(), activation=acts)
    active = int((acts.reshape(len(acts), -1).max(1) > 0).sum())
    run.add_figure(
        id="q4_feature_maps",
        section="Q4",
        title=f"Feature maps of {layer}",
        caption=f"Every channel of {layer} for {s.paths[0].name} (class {run.classes[int(s.target[0])]}), "
        f"16 per row, each on its own color scale; {active} of {len(acts)} channels are non-zero anywhere.",
        png="q4_feature_maps.png",
        npz="q4_feature_maps.npz",
        params={"layer": layer},
    )


def stage_dream(run: Run, bar: tqdm) -> None:
    s = run.subject
    layer = (
        run.cfg.dream_layer
        or default_filter_layers(run.model)[len(default_filter_layers(run.model)) // 2]
    )
    name, module = resolve_layer(run.model, layer)
    n = min(run.cfg.dream_images, len(s.paths))
    out = dream.deep_dream(run.model, s.x[:n], module, generator=run.generator(40))
    bar.update()
    before = filters.layer_activations(run.model, module, s.x[:n]).pow(2).mean().item()
    after = filters.layer_activations(run.model, module, out).pow(2).mean().item()
    dreamt = run.pre.denormalize(out).permute(0, 2, 3, 1).numpy()
    fig = figures.before_after(
        s.pixels[:n], dreamt, s.titles(run.classes)[:n], f"DeepDream on {name}"
    )
    run.write_png("q4_deepdream.png", fig)
    run.write_npz("q4_deepdream.npz", input=s.x[:n].cpu().numpy(), dream=out.cpu().numpy())
    run.add_figure(
        id="q4_deepdream",
        section="Q4",
        title=f"DeepDream on {name}",
        caption=f"DeepDream (Mordvintsev et al., 2015): gradient ascent on the image to amplify the "
        f"mean square activation of {name}, over 3 octaves with jitter, each pixel kept within 0.3 "
        f"of the original. The layer's mean square activation rose from {before:.3f} to {after:.3f}.",
        png="q4_deepdream.png",
        npz="q4_deepdream.npz",
        params={"layer": name},
    )


def method_table(run: Run) -> dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]]:
    """Each map method as explain(model, x, target) -> [N,H,W], to rerun on a randomized model."""
    bs, cfg = run.cfg.batch_size, run.cfg
    scripted = isinstance(run.model, torch.jit.ScriptModule)
    layer = None if scripted else cam_layer_name(run)
    table = {
        "Saliency": lambda m, x, t: attributions.saliency(m, x, t, batch_size=bs),
        "SmoothGrad": lambda m, x, t: smoothgrad_maps(run, m, x, t, 30),
        "Gradient x Input": lambda m, x, t: attributions.channel_sum(
            attributions.grad_x_input(m, x, t, batch_size=bs)
        ),
        "Integrated Gradients": lambda m, x, t: attributions.channel_sum(
            attributions.integrated_gradients(
                m,
                x,
                t,
                baseline=ig_baseline(run, cfg.ig_baseline),
                steps=cfg.ig_steps,
                batch_size=bs,
            )
        ),
        "Grad-CAM": lambda m, x, t: cam.grad_cam(m, x, t, layer, batch_size=bs),
        "LayerCAM": lambda m, x, t: cam.layer_cam(m, x, t, layer, batch_size=bs),
        "Edge detector (control)": lambda m, x, t: metrics.edge_map(x),
    }
    if scripted:  # no hooks into a TorchScript module: no CAMs
        del table["Grad-CAM"], table["LayerCAM"]
    return table


def stage_trust(run: Run, bar: tqdm) -> None:
    """Which map to believe: deletion/insertion AUC vs a random map, the model-randomization
    sanity check, localization against object masks, and stability across seeds."""
    s, cfg = run.subject, run.cfg
    if not cfg.trust:
        return
    methods = method_table(run)
    run.maps["Edge detector (control)"] = metrics.edge_map(s.x).cpu()
    run.maps["Random map (baseline)"] = metrics.random_maps(
        run.maps["Saliency"].shape, run.generator(50)
    )
    masks = torch.from_numpy(s.masks) if s.masks is not None else None
    rows = []
    for name in [*methods, "LIME", "Random map (baseline)"]:
        if name not in run.maps:
            continue
        maps = run.maps[name]
        di = metrics.deletion_insertion(
            run.model,
            s.x,
            s.target,
            maps.to(run.device),
            steps=cfg.deletion_steps,
            baseline="zero",
            insertion_baseline="blur",
            batch_size=cfg.batch_size,
        )
        row = {
            "method": name,
            "deletion": float(di["deletion"].mean()),
            "insertion": float(di["insertion"].mean()),
        }
        if name in methods:
            try:
                check = metrics.randomization_check(
                    methods[name],
                    run.model,
                    s.x,
                    s.target,
                    n_top=cfg.randomize_top,
                    generator=run.generator(60),
                )
            except TypeError as err:  # a layer type (or TorchScript) we cannot re-initialize
                run.extra["randomization_skipped"] = str(err)
            else:
                row["randomization"] = check["mean"]
                row["flagged"] = check["flagged"]
                run.extra["randomized_layers"] = check["randomized_layers"]
        if masks is not None:
            row["pointing"] = float(metrics.pointing_game(maps, masks).float().mean())
            row["mass_inside"] = float(metrics.mass_inside(maps, masks).mean())
        rows.append(row)
        bar.update()
    stability = {"SmoothGrad": smoothgrad_stability(run), "LIME": lime_stability(run)}
    for row in rows:
        row["stability"] = stability.get(row["method"])
    if masks is not None:
        rows += [] if isinstance(run.model, torch.jit.ScriptModule) else cam_layer_rows(run, masks)
    bar.update()
    run.extra["trust_rows"] = rows
    run.extra["mask_fraction"] = (
        float(metrics.mask_fraction(masks).mean()) if masks is not None else None
    )


def smoothgrad_stability(run: Run) -> float:
    """Mean rank correlation of SmoothGrad maps drawn with two different noise seeds."""
    s = run.subject
    other = smoothgrad_maps(run, run.model, s.x, s.target, 31)
    return float(metrics.rank_correlation(run.maps["SmoothGrad"], other.cpu()).mean())


def lime_stability(run: Run, images: int = 4) -> float | None:
    """Mean top-5 superpixel overlap of LIME run with two seeds (on the first ``images``)."""
    results = run.extra.get("lime_results")
    if not results:
        return None
    overlaps = []
    for i, first in enumerate(results[:images]):
        second = lime_of(run, i, first.label, run.cfg.seed + 1)
        overlaps.append(metrics.topk_overlap(first.weights, second.weights, 5))
    run.extra["lime_stability_images"] = min(images, len(results))
    return float(np.mean(overlaps))


def cam_layer_rows(run: Run, masks: Tensor) -> list[dict]:
    """Grad-CAM pointing accuracy at each layer of the default block: the choice matters."""
    s = run.subject
    rows = []
    for name in cam.cam_layer_candidates(run.model, cam_layer_name(run)):
        maps = cam.grad_cam(run.model, s.x, s.target, name, batch_size=run.cfg.batch_size).cpu()
        rows.append(
            {
                "method": f"Grad-CAM @ {name}",
                "pointing": float(metrics.pointing_game(maps, masks).float().mean()),
                "mass_inside": float(metrics.mass_inside(maps, masks).mean()),
            }
        )
    return rows


TRUST_COLUMNS = [
    "method",
    "deletion AUC (low=good)",
    "insertion AUC (high=good)",
    "randomization rank corr.",
    "flagged",
    "pointing",
    "mass inside",
    "stability",
]


def trust_manifest(run: Run) -> dict | None:
    rows = run.extra.get("trust_rows")
    if not rows:
        return None
    keys = [
        "method",
        "deletion",
        "insertion",
        "randomization",
        "flagged",
        "pointing",
        "mass_inside",
        "stability",
    ]
    table = [
        [
            None if r.get(k) is None else (round(r[k], 4) if isinstance(r[k], float) else r[k])
            for k in keys
        ]
        for r in rows
    ]
    frac = run.extra.get("mask_fraction")
    notes = (
        f"Deletion/insertion: softmax probability of the target as the most important pixels are "
        f"set to zero / revealed on a blurred copy, {run.cfg.deletion_steps} steps (Petsiuk et al., "
        f"2018); compare with the random map. Randomization: Spearman correlation between the map of "
        f"the trained model and of a copy whose top {run.cfg.randomize_top} parameterized layers "
        f"({', '.join(run.extra.get('randomized_layers', []))}) were re-initialized (Adebayo et al., "
        f"2018); 'flagged' when |corr| > 0.5, i.e. the map barely depends on the weights. "
    )
    if frac is not None:
        notes += (
            f"Pointing: share of images whose map maximum lies on the object; mass inside: share "
            f"of positive attribution on the object, which covers {frac:.2f} of the image. "
        )
    if "randomization_skipped" in run.extra:
        notes += f"Randomization check skipped: {run.extra['randomization_skipped']}. "
    notes += (
        f"Stability: SmoothGrad, rank correlation of maps from two noise seeds; LIME, top-5 "
        f"superpixel overlap of two seeds on {run.extra.get('lime_stability_images', 0)} images."
    )
    return {"columns": TRUST_COLUMNS, "rows": table, "notes": notes}


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
