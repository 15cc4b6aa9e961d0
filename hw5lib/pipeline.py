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

from . import __version__, attributions, figures, filters, lime_adapter
from .data import FOOD11_CLASSES, Preprocess, find_split, label_of, load_inputs, load_split
from .errors import UserError
from .models import LoadedModel, load_classifier, resolve_layer
from .outputs import sha256_bytes, sha256_file, npz_bytes, atomic_write_bytes, json_bytes
from .sample import load_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Everything a report run depends on; recorded in the manifest."""

    data: Path
    out: Path
    checkpoint: Path
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
    filter_steps: int = 100
    activation_images: int = 4
    lime_samples: int = 1000
    smooth_samples: int = 50
    smooth_sigma: float = 0.15
    ig_steps: int = 32
    ig_baseline: str = "black"
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


def resolve_preprocess(cfg: RunConfig, loaded: LoadedModel) -> Preprocess:
    """Flags win over what the checkpoint recorded, which wins over the HW3 defaults."""
    base = loaded.preprocess or Preprocess()
    size = (cfg.size, cfg.size) if cfg.size else base.size
    return replace(
        base,
        size=size,
        channel_order=cfg.channel_order or base.channel_order,
        mean=cfg.mean if cfg.mean is not None else base.mean,
        std=cfg.std if cfg.std is not None else base.std,
    )


def resolve_classes(cfg: RunConfig, loaded: LoadedModel, num_outputs: int) -> list[str]:
    if cfg.classes == "food11":
        names = list(FOOD11_CLASSES)
    elif cfg.classes:
        names = [c.strip() for c in cfg.classes.split(",")]
    elif loaded.classes:
        names = list(loaded.classes)
    elif num_outputs == len(FOOD11_CLASSES):
        names = list(FOOD11_CLASSES)
    else:
        names = [str(i) for i in range(num_outputs)]
    if len(names) != num_outputs:
        raise UserError(f"{len(names)} class names given but the model has {num_outputs} outputs")
    return names


def choose_images(split_paths: list[Path], labels: list[int | None], per_class: int, num_classes: int) -> list[int]:
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


def predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Softmax probabilities [N,K] under inference mode."""
    out = []
    with torch.inference_mode():
        for s in attributions.chunks(len(x), batch_size):
            out.append(torch.softmax(model(x[s]), dim=1))
    return torch.cat(out)


def prepare(cfg: RunConfig) -> Run:
    loaded = load_classifier(cfg.checkpoint, trust_pickle=cfg.trust_pickle)
    device = pick_device(cfg.device)
    model = loaded.model.to(device).eval()
    pre = resolve_preprocess(cfg, loaded)
    split = load_split(find_split(cfg.data))
    num_outputs = int(model(torch.zeros(1, pre.channels, *pre.size, device=device)).shape[1])
    classes = resolve_classes(cfg, loaded, num_outputs)
    idx = choose_images(list(split.paths), list(split.labels), cfg.per_class, num_outputs)
    paths = [split.paths[i] for i in idx] + sorted(cfg.images)
    labels: list[int | None] = [label_of(p) for p in paths]
    labels = [lb if lb is not None and lb < num_outputs else None for lb in labels]
    x = load_inputs(paths, pre).to(device)
    prob = predict(model, x, cfg.batch_size).cpu()
    pred = prob.argmax(1)
    target = torch.tensor([lb if lb is not None else int(p) for lb, p in zip(labels, pred)])
    subject = Subject(
        paths=paths,
        x=x,
        pixels=pre.denormalize(x).permute(0, 2, 3, 1).numpy(),
        labels=labels,
        target=target.to(device),
        pred=pred,
        prob=prob,
        masks=object_masks(cfg.data, paths, pre.size),
    )
    return Run(cfg, loaded, model, pre, classes, subject, device)


# ---------------------------------------------------------------- stages


def mask_caption(run: Run, maps: np.ndarray) -> str:
    """Where masks exist: share of the positive map inside the object vs the object's area."""
    masks = run.subject.masks
    if masks is None:
        return ""
    pos = np.clip(maps, 0, None)
    inside = (pos * masks).sum(axis=(1, 2)) / np.maximum(pos.sum(axis=(1, 2)), 1e-12)
    return (
        f" Mean share of the map inside the object mask: {inside.mean():.2f}"
        f" (the object covers {masks.mean():.2f} of the image on average)."
    )


def save_attribution(run: Run, fid: str, section: str, title: str, caption: str, maps: Tensor,
                     *, signed: bool = False, params: dict | None = None, raw: Tensor | None = None) -> None:
    s = run.subject
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
    run.add_figure(id=fid, section=section, title=title, png=f"{fid}.png", npz=f"{fid}.npz",
                   caption=caption + mask_caption(run, np.abs(arr) if signed else arr),
                   params=params or {})


def stage_saliency(run: Run, bar: tqdm) -> None:
    s = run.subject
    maps = attributions.saliency(run.model, s.x, s.target, batch_size=run.cfg.batch_size)
    bar.update()
    save_attribution(
        run, "q1_saliency", "Q1", "Saliency maps: |d score / d pixel|",
        f"Vanilla gradient saliency (Simonyan et al., 2014) of the target class logit for "
        f"{len(s.paths)} images, max over color channels, each map scaled to its own range.",
        maps,
    )


def stage_filters(run: Run, bar: tqdm) -> None:
    cfg, s = run.cfg, run.subject
    layer_names = list(cfg.filter_layers) or default_filter_layers(run.model)
    names, images, chosen, gains = [], [], [], []
    for k, spec in enumerate(layer_names):
        name, layer = resolve_layer(run.model, spec)
        acts = filters.layer_activations(run.model, layer, s.x, batch_size=cfg.batch_size)
        idx = list(cfg.filters) or filters.most_active_filters(acts, cfg.filters_per_layer)
        bad = [f for f in idx if f >= acts.shape[1]]
        if bad:
            raise UserError(f"layer {name} has {acts.shape[1]} filters; no filter {bad[0]}")
        result = filters.filter_ascent(
            run.model, layer, idx, shape=(run.pre.channels, *run.pre.size), to_input=run.to_input,
            steps=cfg.filter_steps, generator=run.generator(10 + k),
        )
        gain = (result.activation[-1] / result.activation[0].abs().clamp_min(1e-6)).cpu()
        names.append(name)
        images.append(result.pixels.permute(0, 2, 3, 1).cpu().numpy())
        chosen.append(idx)
        gains.append(gain.tolist())
        rows = min(cfg.activation_images, len(s.paths))
        amaps = acts[:rows, idx].relu().cpu().numpy()
        fid = f"q2_activations_{name.replace('.', '_')}"
        fig = figures.activation_grid(
            s.pixels[:rows], amaps, idx, s.titles(run.classes)[:rows],
            f"Activation maps of {name} filters {idx} on real images",
        )
        run.write_png(f"{fid}.png", fig)
        run.write_npz(f"{fid}.npz", input=s.x[:rows].cpu().numpy(), filters=np.array(idx),
                      activation=acts[:rows, idx].cpu().numpy(), ascent_image=images[-1],
                      ascent_curve=result.activation.cpu().numpy())
        run.add_figure(
            id=fid, section="Q2", title=f"Activation maps of layer {name}",
            caption=f"Output channels {idx} of {name} ({type(layer).__name__}) on {rows} images; "
            f"each filter's maps share one color scale. Mean activation per filter over the "
            f"explained images: {', '.join(f'{v:.3f}' for v in acts[:, idx].mean(dim=(0, 2, 3)).tolist())}.",
            png=f"{fid}.png", npz=f"{fid}.npz", params={"layer": name, "filters": idx},
        )
        bar.update()
    fig = figures.filter_grid(names, images, chosen, gains, "Filter visualization by gradient ascent")
    run.write_png("q2_filters.png", fig)
    run.write_npz("q2_filters.npz", **{f"{n.replace('.', '_')}_images": im for n, im in zip(names, images)})
    summary = "; ".join(
        f"{n}: filters {c}, activation x{min(g):.1f}-x{max(g):.1f} of its value on the start noise"
        for n, c, g in zip(names, chosen, gains)
    )
    run.add_figure(
        id="q2_filters", section="Q2", title="Filter visualization by gradient ascent",
        caption=f"Each image starts from near-gray noise and is optimized for {cfg.filter_steps} Adam "
        f"steps to maximize one filter's mean activation (one row per layer). {summary}.",
        png="q2_filters.png", npz="q2_filters.npz",
        params={"layers": names, "filters": chosen, "steps": cfg.filter_steps},
    )


def default_filter_layers(model: nn.Module, count: int = 4) -> list[str]:
    """Activation layers after the conv layers, ``count`` of them spread from first to last."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU))]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    pool = names or convs
    if not pool:
        raise UserError("the model has no Conv2d or activation layer; pass --filter-layers")
    # Only activations that come before the classifier head: the ones inside the conv trunk.
    trunk = [n for n in pool if n.split(".")[0] == convs[-1].split(".")[0]] if convs else pool
    pool = trunk or pool
    picks = np.unique(np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int))
    return [pool[i] for i in picks]


def stage_lime(run: Run, bar: tqdm) -> None:
    cfg, s = run.cfg, run.subject
    results = []
    for i in range(len(s.paths)):
        rgb = np.repeat(s.pixels[i], 3, axis=-1) if s.pixels.shape[-1] == 1 else s.pixels[i]
        results.append(lime_adapter.explain(
            run.model, rgb, int(s.target[i]), to_input=run.to_input, channels=run.pre.channels,
            samples=cfg.lime_samples, seed=cfg.seed,
        ))
        bar.update()
    segs = np.stack([r.segments for r in results])
    width = max(len(r.weights) for r in results)
    weights = np.zeros((len(results), width))
    for i, r in enumerate(results):
        weights[i, : len(r.weights)] = r.weights
    fig = figures.lime_figure(s.pixels, segs, [r.weights for r in results], s.titles(run.classes),
                              "LIME: superpixels for (green) and against (red) the class")
    run.write_png("q3_lime.png", fig)
    run.write_npz("q3_lime.npz", input=s.x.cpu().numpy(), target=s.target.cpu().numpy(),
                  segments=segs, weights=weights, score=np.array([r.score for r in results]))
    # The superpixel explanation as a per-pixel map, for the mask share in the caption.
    maps = np.stack([r.weights[r.segments] for r in results])
    run.add_figure(
        id="q3_lime", section="Q3", title="LIME explanations",
        caption=f"LIME (Ribeiro et al., 2016) with {cfg.lime_samples} perturbed samples per image over "
        f"SLIC superpixels (n_segments=100, compactness=1, sigma=1, numbered from 0); the 5 most "
        f"positive superpixels are green, the 5 most negative red. Mean R^2 of lime's local linear "
        f"model: {np.mean([r.score for r in results]):.2f}." + mask_caption(run, maps),
        png="q3_lime.png", npz="q3_lime.npz", params={"samples": cfg.lime_samples, "seed": cfg.seed},
    )


def stage_smoothgrad(run: Run, bar: tqdm) -> None:
    cfg, s = run.cfg, run.subject
    maps = attributions.smoothgrad(
        attributions.saliency, run.model, s.x, s.target, samples=cfg.smooth_samples,
        sigma=cfg.smooth_sigma, generator=run.generator(30), batch_size=cfg.batch_size,
    )
    bar.update()
    save_attribution(
        run, "q4_smoothgrad", "Q4", "SmoothGrad",
        f"SmoothGrad (Smilkov et al., 2017): saliency averaged over {cfg.smooth_samples} copies "
        f"of each image with Gaussian noise of std {cfg.smooth_sigma} x its value range.",
        maps, params={"samples": cfg.smooth_samples, "sigma": cfg.smooth_sigma},
    )


def stage_grad_x_input(run: Run, bar: tqdm) -> None:
    s = run.subject
    raw = attributions.grad_x_input(run.model, s.x, s.target, batch_size=run.cfg.batch_size)
    bar.update()
    save_attribution(
        run, "q4_grad_x_input", "Q4", "Gradient x Input",
        "Gradient x Input (Shrikumar et al., 2016) summed over channels: red pixels raise the "
        "class score to first order, blue ones lower it.",
        attributions.channel_sum(raw), signed=True, raw=raw,
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
        run, "q4_integrated_gradients", "Q4", f"Integrated Gradients ({cfg.ig_baseline} baseline)",
        f"Integrated Gradients (Sundararajan et al., 2017) from a {cfg.ig_baseline} baseline with "
        f"{cfg.ig_steps} Gauss-Legendre steps, summed over channels. Completeness error "
        f"|sum - (f(x) - f(baseline))| / |f(x) - f(baseline)|: median {float(err.median()):.4f}, "
        f"max {float(err.max()):.4f}.",
        attributions.channel_sum(raw), signed=True, raw=raw,
        params={"baseline": cfg.ig_baseline, "steps": cfg.ig_steps},
    )


def ig_baseline(run: Run, kind: str) -> Tensor:
    x = run.subject.x
    if kind == "black":
        return run.to_input(torch.zeros_like(x.cpu()))
    if kind == "blur":
        return attributions.blurred(x)
    raise UserError(f"--ig-baseline must be 'black' or 'blur', not {kind!r}")


Stage = tuple[str, Callable[[Run], int], Callable[[Run, tqdm], None]]
STAGES: list[Stage] = [
    ("Q1 saliency", lambda r: 1, stage_saliency),
    ("Q2 filters", lambda r: len(r.cfg.filter_layers or default_filter_layers(r.model)), stage_filters),
    ("Q3 LIME", lambda r: len(r.subject.paths), stage_lime),
    ("Q4 SmoothGrad", lambda r: 1, stage_smoothgrad),
    ("Q4 Grad x Input", lambda r: 1, stage_grad_x_input),
    ("Q4 Integrated Gradients", lambda r: 1, stage_integrated_gradients),
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
            "explained_split": find_split(cfg.data).name,
            "images": [str(p) for p in run.subject.paths],
            "targets": run.subject.target.cpu().tolist(),
            "predictions": run.subject.pred.tolist(),
            "confidence": [round(float(v), 6) for v in run.subject.prob.max(1).values],
        },
        "preprocess": run.pre.to_dict(),
        "parameters": params,
        "figures": run.figures,
        "outputs": dict(sorted(run.outputs.items())),
    }


def run_report(cfg: RunConfig, *, progress: bool = True) -> tuple[dict, dict[str, float]]:
    """Run every stage, write the figures, arrays and manifest.json; return them and timings."""
    if cfg.out.exists() and not cfg.out.is_dir():
        raise UserError(f"output path {cfg.out} exists and is not a folder")
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run = prepare(cfg)
    run.seconds["load"] = time.perf_counter() - start
    for name, units, stage in STAGES:
        with timed(run, name), tqdm(total=units(run), desc=name, disable=not progress,
                                    file=sys.stderr, leave=False) as bar:
            stage(run, bar)
    man = manifest(run)
    atomic_write_bytes(cfg.out / "manifest.json", json_bytes(man))
    run.seconds["total"] = time.perf_counter() - start
    return man, run.seconds


__all__ = ["RunConfig", "run_report", "sha256_file"]
