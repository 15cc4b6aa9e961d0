"""Which explanation to trust: deletion/insertion AUC, the model-randomization sanity check,
localization against object masks, and seed stability, as one table."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import attributions, cam, metrics
from .context import Run
from .models import same_activation_model
from .stages import (
    cam_layer_name,
    ig_baseline,
    integrated_gradients_of,
    smoothgrad_maps,
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
            ig_like_trained(run, m, x, t)
        ),
        "Grad-CAM": lambda m, x, t: cam.grad_cam(m, x, t, layer, batch_size=bs),
        "LayerCAM": lambda m, x, t: cam.layer_cam(m, x, t, layer, batch_size=bs),
        "Edge detector (control)": lambda m, x, t: metrics.edge_map(x),
    }
    if scripted:  # no hooks into a TorchScript module: no CAMs
        del table["Grad-CAM"], table["LayerCAM"]
    if not cfg.randomize_sampled:  # cut by the budget: the two costliest to re-run
        del table["SmoothGrad"], table["Integrated Gradients"]
    return table


def ig_like_trained(run: Run, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """IG on the randomized model with the most steps any trained map needed: a random model's
    gradients never converge, and running it to the cap buys precision the rank comparison does
    not need."""
    steps = run.extra.get("ig_final_steps")
    if steps is None:
        return integrated_gradients_of(run, model, x, target).value
    baseline = ig_baseline(run, run.cfg.ig_baseline)
    return attributions.integrated_gradients(
        model, x, target, baseline=baseline, steps=int(steps), batch_size=run.cfg.batch_size
    )


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
        if run.deadline.passed():
            run.cuts.append(f"trust checks: no row for {name} and after, the budget was spent")
            break
        di = metrics.deletion_insertion(
            run.inference,
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
                    trained_maps=maps if name != "Edge detector (control)" else None,
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


def smoothgrad_stability(run: Run) -> float | None:
    """Mean predicted correlation of the SmoothGrad map with one from other noise, from its own
    two half-sums (``attributions.split_half_agreement``): no second run needed."""
    agreement = run.extra.get("smoothgrad_agreement")
    return None if agreement is None else float(agreement.mean() ** 2)  # type: ignore[union-attr]


def lime_stability(run: Run) -> float | None:
    """Mean predicted top-5 superpixel overlap of LIME with a rerun under another seed, from
    bootstrap resamples of each run's own samples (``lime_adapter.resampled_agreement``)."""
    results = run.extra.get("lime_results") or []
    values = [r.stability for r in results if r.stability is not None]  # type: ignore[attr-defined]
    run.extra["lime_stability_images"] = len(values)
    return float(np.mean(values)) if values else None


def cam_layer_rows(run: Run, masks: Tensor) -> list[dict]:
    """Grad-CAM pointing accuracy at each layer of the default block: the choice matters."""
    s = run.subject
    rows = []
    for name in cam.cam_layer_candidates(run.model, cam_layer_name(run)):
        model = same_activation_model(run.model, run.grad, name)
        maps = cam.grad_cam(model, s.x, s.target, name, batch_size=run.cfg.batch_size).cpu()
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
        f"Stability: SmoothGrad, the correlation of maps from two noise seeds predicted from its "
        f"two half-sums (Spearman-Brown); LIME, the top-5 superpixel overlap with a rerun under "
        f"another seed, predicted by refitting lime on bootstrap resamples of its own samples "
        f"({run.extra.get('lime_stability_images', 0)} images)."
    )
    return {"columns": TRUST_COLUMNS, "rows": table, "notes": notes}
