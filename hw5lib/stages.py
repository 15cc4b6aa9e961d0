"""The report's figure stages (Q1-Q4): each takes the Run and a tqdm bar, computes with the
method modules, and writes its PNG, .npz and manifest record through the Run."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import attributions, cam, dream, figures, filters, lime_adapter, metrics
from .context import Run, RunConfig
from .data import (
    LABELLED_SPLITS,
    load_inputs,
    open_dataset,
)
from .errors import UserError
from .models import resolve_layer, same_activation_model

log = logging.getLogger(__name__)


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
    maps = attributions.saliency(run.gradients, s.x, s.target, batch_size=run.cfg.batch_size)
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
    layer_names = list(cfg.filter_layers) or default_filter_layers(
        run.model, cfg.filter_layer_count
    )
    names, images, chosen, gains = [], [], [], []
    tried = kept = 0  # filters redone because still climbing; redos kept, as they climbed higher
    spent: list[float] = []
    first = len(run.figures)
    for k, spec in enumerate(layer_names):
        if k and run.deadline.passed():
            run.cuts.append(f"Q2 filters: layers {layer_names[k:]} not run, the budget was spent")
            break
        name, _ = resolve_layer(run.model, spec)
        # The BatchNorm-folded copy is faster and has the same activation at most layers.
        model = same_activation_model(run.model, run.grad, name)
        layer = resolve_layer(model, name)[1]
        acts = filters.layer_activations(model, layer, s.x, batch_size=cfg.batch_size)
        idx = list(cfg.filters) or filters.most_active_filters(acts, cfg.filters_per_layer)
        bad = [f for f in idx if f >= acts.shape[1]]
        if bad:
            raise UserError(f"layer {name} has {acts.shape[1]} filters; no filter {bad[0]}")
        result = filters.filter_ascent(
            model,
            layer,
            idx,
            shape=(run.pre.channels, *run.pre.size),
            to_input=run.to_input,
            steps=cfg.filter_steps,
            generator=run.generator(10 + k),
            redo_climbing=cfg.adaptive,
            stop=run.deadline.passed,
        )
        if result.stopped:
            run.cuts.append(
                f"Q2 filters: ascent on {name} stopped after {int(result.steps.max())} of "
                f"{cfg.filter_steps} steps, the budget was spent"
            )
        # Reached vs start image vs the best explained real image, per filter.
        real = acts[:, idx].mean(dim=(2, 3)).amax(dim=0).cpu()
        gain = torch.stack([result.final.cpu(), result.activation[0].cpu(), real], dim=1)
        names.append(name)
        kept += int((result.steps > cfg.filter_steps).sum())
        tried += result.redone
        spent.append(result.work / (3 * cfg.filter_steps * len(idx)))
        run.extra["filters_share"] = float(np.mean(spent))  # of the cap: every filter redone
        run.extra.setdefault("ascent_curves", []).extend(result.curves())  # type: ignore[union-attr]
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
            ascent_steps=result.recorded.numpy(),
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
    redo_note = (
        f"{tried} {'filter' if tried == 1 else 'filters'} still climbing at the end "
        f"{'was' if tried == 1 else 'were'} redone from a new start with "
        f"{2 * cfg.filter_steps} steps; the {kept} that climbed higher are shown"
        if tried
        else "every filter had stopped climbing by the end"
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
            f"rotation and scale (Olah et al., 2017), one row per layer; {redo_note}. {summary}.",
            png="q2_filters.png",
            npz="q2_filters.npz",
            params={
                "layers": names,
                "filters": chosen,
                "steps": cfg.filter_steps,
                "redone": tried,
                "redone_kept": kept,
            },
        ),
    )


def default_filter_layers(model: nn.Module, count: int = 4) -> list[str]:
    """Activation layers of the conv trunk (before the first Linear, in definition order),
    ``count`` of them spread from first to last; the convs if there is no activation layer."""
    modules = list(model.named_modules())
    head = next((i for i, (_, m) in enumerate(modules) if isinstance(m, nn.Linear)), len(modules))
    acts = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU)
    trunk = [n for n, m in modules[:head] if isinstance(m, acts)]
    pool = (
        trunk
        or [n for n, m in modules if isinstance(m, acts)]
        or [n for n, m in modules if isinstance(m, nn.Conv2d)]
    )
    if not pool:
        raise UserError("the model has no Conv2d or activation layer; pass --filter-layers")
    picks = np.unique(np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int))
    return [pool[i] for i in picks]


def smoothgrad_of(
    run: Run, model: nn.Module, x: Tensor, target: Tensor, stream: int
) -> attributions.Converged:
    """SmoothGrad of saliency with the run's settings and the noise of random ``stream``: until
    converged (at most --smooth-samples), or exactly that many with --no-adaptive."""
    cfg = run.cfg
    return attributions.smoothgrad_until_converged(
        attributions.saliency,
        model,
        x,
        target,
        max_samples=cfg.smooth_samples,
        min_samples=min(10, cfg.smooth_samples) if cfg.adaptive else cfg.smooth_samples,
        sigma=cfg.smooth_sigma,
        generator=run.generator(stream),
        batch_size=cfg.batch_size,
        stop=run.deadline.passed,
    )


def smoothgrad_maps(run: Run, model: nn.Module, x: Tensor, target: Tensor, stream: int) -> Tensor:
    return smoothgrad_of(run, model, x, target, stream).value


# Bootstrap refit pairs per image behind the trust table's LIME stability: ten pairs put the
# mean over a report's images within a few hundredths of its value with more pairs.
LIME_STABILITY_ROUNDS = 10


def lime_of(run: Run, i: int, label: int, seed: int) -> lime_adapter.LimeResult:
    """LIME for explained image ``i`` (gray images go to lime as RGB and back); with the trust
    checks on, also its predicted agreement with a rerun (no extra model forwards)."""
    s = run.subject
    rgb = np.repeat(s.pixels[i], 3, axis=-1) if s.pixels.shape[-1] == 1 else s.pixels[i]
    return lime_adapter.explain(
        run.inference,
        rgb,
        label,
        to_input=run.to_input,
        channels=run.pre.channels,
        samples=run.cfg.lime_samples,
        seed=seed,
        adaptive=run.cfg.adaptive,
        stop=run.deadline.passed,
        stability_rounds=LIME_STABILITY_ROUNDS if run.cfg.trust else 0,
    )


def stage_lime(run: Run, bar: tqdm) -> None:
    cfg, s = run.cfg, run.subject
    results = []
    for i in range(len(s.paths)):
        try:
            results.append(lime_of(run, i, int(s.target[i]), cfg.seed))
        except lime_adapter.OutOfTime:
            run.cuts.append(
                f"Q3 LIME: {len(s.paths) - i} of {len(s.paths)} images not explained, "
                "the budget was spent"
            )
            break
        run.extra["lime_share"] = np.mean([r.samples for r in results]) / cfg.lime_samples
        bar.update()
    if not results:
        return
    used = [r.samples for r in results]
    run.convergence["LIME"] = {
        "rule": f"antithetic samples in rounds of {lime_adapter.ROUND_SAMPLES}, at least "
        f"{lime_adapter.MIN_SAMPLES}, until as precise as {lime_adapter.MATCHED_SAMPLES} "
        f"independent ones and the top {lime_adapter.TOP_K} separated by "
        f">= {lime_adapter.TOP_SEPARATION:g} standard error; cap {cfg.lime_samples}",
        "samples": used,
        "needed": [[round(t[1], 1) for t in r.trace] for r in results],
        "separation": [[round(t[2], 2) for t in r.trace] for r in results],
    }
    n = len(results)
    s = replace(s, pixels=s.pixels[:n], x=s.x[:n], target=s.target[:n], paths=s.paths[:n])
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
    complete = n == len(run.subject.paths)
    if complete:  # the trust table compares methods on the same images
        run.maps["LIME"] = torch.from_numpy(maps).float()
        run.extra["lime_results"] = results
    sampling = (
        f"{min(used)}-{max(used)} (mean {np.mean(used):.0f}) antithetic perturbed samples per "
        f"image, stopped once as precise as {lime_adapter.MATCHED_SAMPLES} independent ones "
        f"and the top {lime_adapter.TOP_K} settled"
        if cfg.adaptive
        else f"{cfg.lime_samples} antithetic perturbed samples per image"
    )
    run.add_figure(
        id="q3_lime",
        section="Q3",
        title="LIME explanations",
        caption=f"LIME (Ribeiro et al., 2016) with {sampling}, over SLIC superpixels "
        f"(n_segments=100, compactness=1, sigma=1, numbered from 0); the 5 most "
        f"positive superpixels are green, the 5 most negative red. Mean R^2 of lime's local linear "
        f"model: {np.mean([r.score for r in results]):.2f}."
        + (mask_caption(run, maps) if complete else ""),
        png="q3_lime.png",
        npz="q3_lime.npz",
        params={"samples": used, "cap": cfg.lime_samples, "seed": cfg.seed},
    )


def stage_smoothgrad(run: Run, bar: tqdm) -> None:
    cfg, s = run.cfg, run.subject
    result = smoothgrad_of(run, run.gradients, s.x, s.target, 30)
    maps = result.value
    run.extra["smoothgrad_share"] = float(result.used.float().mean()) / cfg.smooth_samples
    run.extra["smoothgrad_agreement"] = result.quality
    run.convergence["SmoothGrad"] = {
        "rule": f"rounds of 10 samples, at least 10, until the split-half predicted correlation "
        f"with the exact expectation is >= 0.98; cap {cfg.smooth_samples}",
        "samples": result.used.tolist(),
        "agreement": [[round(v, 4) for v in row] for row in result.trace],
    }
    bar.update()
    save_attribution(
        run,
        "q4_smoothgrad",
        "Q4",
        "SmoothGrad",
        "SmoothGrad",
        f"SmoothGrad (Smilkov et al., 2017): saliency averaged over {samples_text(result.used)} "
        f"copies of each image with Gaussian noise of std {cfg.smooth_sigma} x its value range"
        f" (predicted correlation with the exact expectation: min "
        f"{float(result.quality.min()):.3f}).",
        maps,
        params={
            "samples": result.used.tolist(),
            "cap": cfg.smooth_samples,
            "sigma": cfg.smooth_sigma,
        },
    )


def stage_grad_x_input(run: Run, bar: tqdm) -> None:
    s = run.subject
    raw = attributions.grad_x_input(run.gradients, s.x, s.target, batch_size=run.cfg.batch_size)
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
    result = integrated_gradients_of(run, run.gradients, s.x, s.target)
    raw, err = result.value, result.quality
    run.extra["ig_share"] = float(result.used.float().mean()) / cfg.ig_steps
    run.extra["ig_final_steps"] = int(result.final.max())
    run.convergence["Integrated Gradients"] = {
        "rule": f"Gauss-Legendre steps 8, 16, 32, ... until the completeness error is <= "
        f"{IG_TOLERANCE}; cap {cfg.ig_steps}",
        "gradients": result.used.tolist(),
        "completeness_error": [[round(v, 5) for v in row] for row in result.trace],
    }
    bar.update()
    save_attribution(
        run,
        "q4_integrated_gradients",
        "Q4",
        "Integrated Gradients",
        f"Integrated Gradients ({cfg.ig_baseline} baseline)",
        f"Integrated Gradients (Sundararajan et al., 2017) from a {cfg.ig_baseline} baseline, "
        f"Gauss-Legendre steps doubled from 8 until the completeness error is at most "
        f"{IG_TOLERANCE:.0%} ({samples_text(result.used)} gradients per image), summed over "
        f"channels. Completeness error "
        f"|sum - (f(x) - f(baseline))| / |f(x) - f(baseline)|: median {float(err.median()):.4f}, "
        f"max {float(err.max()):.4f}.",
        attributions.channel_sum(raw),
        signed=True,
        raw=raw,
        params={
            "baseline": cfg.ig_baseline,
            "gradients": result.used.tolist(),
            "cap": cfg.ig_steps,
        },
    )


IG_TOLERANCE = 0.01  # completeness error at which IG stops adding steps


def ig_first_steps(cfg: RunConfig) -> int:
    """IG's first step count: 8, doubled until converged; the cap itself with --no-adaptive."""
    return min(8, cfg.ig_steps) if cfg.adaptive else cfg.ig_steps


def integrated_gradients_of(
    run: Run, model: nn.Module, x: Tensor, target: Tensor
) -> attributions.Converged:
    """IG with the run's baseline: steps doubled until converged (at most --ig-steps), or
    exactly --ig-steps with --no-adaptive."""
    cfg = run.cfg
    return attributions.integrated_gradients_until_converged(
        model,
        x,
        target,
        baseline=ig_baseline(run, cfg.ig_baseline),
        max_steps=cfg.ig_steps,
        first_steps=ig_first_steps(cfg),
        tolerance=IG_TOLERANCE,
        batch_size=cfg.batch_size,
        stop=run.deadline.passed,
    )


def samples_text(used: Tensor) -> str:
    lo, hi = int(used.min()), int(used.max())
    return str(lo) if lo == hi else f"{lo}-{hi} (mean {float(used.float().mean()):.0f})"


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
                run.inference,
                load_inputs(paths[s], run.pre).to(run.device),
                batch_size=cfg.batch_size,
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
    """--cam-layer, else the automatic choice; found once per run (the choice costs a probe
    forward pass, and four stages ask)."""
    if "cam_layer" not in run.extra:
        run.extra["cam_layer"] = (
            resolve_layer(run.model, run.cfg.cam_layer)[0]
            if run.cfg.cam_layer
            else cam.default_cam_layer(run.model, (run.pre.channels, *run.pre.size))
        )
    return str(run.extra["cam_layer"])


def stage_cams(run: Run, bar: tqdm) -> None:
    s = run.subject
    layer = cam_layer_name(run)
    model = same_activation_model(run.model, run.grad, layer)  # faster, same map
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
            fn(model, xs, flat, layer, batch_size=run.cfg.batch_size)
            .cpu()
            .reshape(n, t, *s.x.shape[-2:])
        )
        bar.update()
        # The trust table scores the map of the explained target, as for the other methods.
        run.maps[method] = fn(model, s.x, s.target, layer, batch_size=run.cfg.batch_size).cpu()
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
    candidates = default_filter_layers(run.model)
    layer = run.cfg.dream_layer or candidates[len(candidates) // 2]
    name, module = resolve_layer(run.model, layer)
    n = min(run.cfg.dream_images, len(s.paths))
    out = dream.deep_dream(
        run.model, s.x[:n], module, generator=run.generator(40), stop=run.deadline.passed
    )
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


def write_convergence(run: Run) -> None:
    """Appendix figure: how each sampled or iterated method converged in this run."""
    conv = run.convergence
    if not conv and "ascent_curves" not in run.extra:
        return
    lime = conv.get("LIME") or {}
    smooth = conv.get("SmoothGrad") or {}
    ig = conv.get("Integrated Gradients") or {}
    curves = list(run.extra.get("ascent_curves", []))  # type: ignore[call-overload]
    fig = figures.convergence_figure(
        lime.get("samples"),  # type: ignore[union-attr]
        run.cfg.lime_samples,
        smooth.get("agreement"),  # type: ignore[union-attr]
        10,
        ig.get("completeness_error"),  # type: ignore[union-attr]
        8,
        curves,
        "Convergence of the sampled and iterated methods in this run",
    )
    run.write_png("appendix_convergence.png", fig)
    rules = "; ".join(f"{k}: {v['rule']}" for k, v in conv.items())  # type: ignore[index]
    run.add_figure(
        id="appendix_convergence",
        section="Appendix",
        title="Convergence of the sampled and iterated methods",
        caption="Each method stops once converged rather than at a fixed count. "
        + rules
        + ". The filter-ascent panel shows each filter's mean activation over its final value; "
        "a filter still rising at the end of its schedule is redone from a new start with one "
        "twice as long, and the higher result kept. "
        "Agreement with generous references (1000-sample LIME, 200-sample SmoothGrad, 300-step "
        "IG, 400-step ascent) is measured in bench/RESULTS.md.",
        png="appendix_convergence.png",
        npz=None,
        params={},
    )
