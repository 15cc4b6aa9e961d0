"""Which SHAP estimator: Captum's ShapleyValueSampling (ours, hw5lib.methods.shap_values),
Captum's KernelShap and shap's Partition explainer, on the full-size Classifier.

    .venv/bin/python bench/shap_choice.py [--images 3] [--evals 1000] [--coarse 128]

shap is not a dependency: it is looked for in /tmp/shaplib (``pip install --target /tmp/shaplib
shap``), appended to sys.path so the venv's numpy, scipy and torch still win.

Per image (the model's predicted class, its logit; hidden segments show their mean colour, as
LIME's): (1) on the image's SLIC superpixels (LIME's), each estimator at ``--evals`` model
evaluations: seconds, deletion/insertion AUC of its map, and the efficiency gap |sum of values -
(f(x) - f(all hidden))|; (2) on a 3x3 grid of patches, exact Shapley values by enumerating the
512 coalitions, and each estimator's error against them at ``--coarse`` evaluations (shap's
Partition's limit is the Owen value of its hierarchy, not the Shapley value). The stopping rule
runs with a cap of 2x ``--evals``, to show where it stops.
Full model: /tmp/rf/classifier.pth and /tmp/rf/food (bench/realfood.py); else the bundled demo.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from captum.attr import KernelShap
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append("/tmp/shaplib")

from hw5lib.cli import BUNDLED_CHECKPOINT, BUNDLED_DATA, ensure_sample  # noqa: E402
from hw5lib.inputs.datasets import open_dataset  # noqa: E402
from hw5lib.inputs.images import load_inputs  # noqa: E402
from hw5lib.methods import faithfulness, lime_adapter, shap_values  # noqa: E402
from hw5lib.model.layers import inference_copy  # noqa: E402
from hw5lib.model.loading import load_classifier  # noqa: E402

Score = Callable[[Tensor], Tensor]  # coalitions [B,S] -> scores [B]
GRID = 3  # the coarse partition: GRID x GRID patches, 2^9 coalitions


def exact_shapley(score: Score, m: int) -> np.ndarray:
    """Shapley values by enumerating all 2^m coalitions (one batch of forwards)."""
    table = torch.tensor([[(c >> j) & 1 for j in range(m)] for c in range(2**m)]).float()
    f = torch.cat([score(table[i : i + 128]) for i in range(0, 2**m, 128)]).double().numpy()
    phi = np.zeros(m)
    for i in range(m):
        for c in range(2**m):
            if not (c >> i) & 1:
                k = bin(c).count("1")
                weight = math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m)
                phi[i] += weight * (f[c | (1 << i)] - f[c])
    return phi


def kernel_shap(score: Score, m: int, evals: int, seed: int) -> np.ndarray:
    """Captum's KernelShap on the coalition vector: ``evals`` sampled coalitions."""
    torch.manual_seed(seed)  # captum draws from the global stream
    ks = KernelShap(score)
    out = ks.attribute(torch.ones(1, m), baselines=0.0, n_samples=evals, perturbations_per_eval=128)
    return out[0].double().numpy()


def ours(score: Score, segments: Tensor, evals: int, seed: int) -> tuple[np.ndarray, int]:
    one = shap_values.explain_one(
        score, segments, seed=seed, batch_size=128, max_evaluations=evals, permutations=None,
        adaptive=True,
    )  # fmt: skip
    return one.values.numpy(), one.evaluations


def partition_tabular(score: Score, centres: np.ndarray, evals: int) -> np.ndarray:
    """shap's Partition explainer over the m segments, its hierarchy a Ward clustering of the
    segments' centres (neighbours grouped first, as its Image masker groups pixels)."""
    import shap
    from scipy.cluster.hierarchy import linkage

    m = len(centres)
    masker = shap.maskers.Partition(np.zeros((1, m)), clustering=linkage(centres, "ward"))

    def f(z: np.ndarray) -> np.ndarray:
        return score(torch.from_numpy(np.asarray(z, dtype=np.float32))).double().numpy()

    explainer = shap.explainers.Partition(f, masker)
    return explainer(np.ones((1, m)), max_evals=evals, silent=True).values[0]


def partition_image(model, x: Tensor, baseline: Tensor, label: int, evals: int) -> np.ndarray:
    """shap's documented image use: Partition over its Image masker (a hierarchy of
    rectangles, hidden pixels from ``baseline``), per-pixel values summed over channels."""
    import shap

    hwc = x.permute(1, 2, 0).numpy()
    masker = shap.maskers.Image(baseline.permute(1, 2, 0).numpy(), hwc.shape)

    def f(images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        with torch.no_grad():
            return model(batch)[:, label].double().numpy()

    explainer = shap.explainers.Partition(f, masker)
    values = explainer(hwc[None], max_evals=evals, batch_size=128, silent=True).values[0]
    return values.sum(axis=-1)  # (H, W)


def centres_of(segments: Tensor) -> np.ndarray:
    seg = segments.numpy()
    rows, cols = np.indices(seg.shape)
    ids = range(int(seg.max()) + 1)
    return np.array([[rows[seg == s].mean(), cols[seg == s].mean()] for s in ids])


def rel_error(est: np.ndarray, exact: np.ndarray) -> float:
    """Largest error over the exact values' largest magnitude."""
    return float(np.abs(est - exact).max() / max(np.abs(exact).max(), 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--evals", type=int, default=1000)
    ap.add_argument("--coarse", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    if Path("/tmp/rf/classifier.pth").exists():
        ckpt, data_root = Path("/tmp/rf/classifier.pth"), Path("/tmp/rf/food")
    else:
        ensure_sample(BUNDLED_DATA)
        ckpt, data_root = BUNDLED_CHECKPOINT, BUNDLED_DATA
    loaded = load_classifier(ckpt)
    pre = loaded.preprocess
    split = open_dataset(data_root)
    paths = list(split.paths)[:: max(1, len(split.paths) // args.images)][: args.images]
    x = load_inputs(paths, pre)
    model = inference_copy(loaded.model.eval(), x[:2])
    pixels = pre.denormalize(x).permute(0, 2, 3, 1).numpy()
    with torch.no_grad():
        target = model(x).argmax(1)
    segs = torch.from_numpy(
        np.stack([lime_adapter.segment(lime_adapter.as_rgb(p)) for p in pixels])
    ).long()
    base = shap_values.segment_means(x, segs)
    h, w = x.shape[-2:]
    grid = (torch.arange(h)[:, None] * GRID // h) * GRID + torch.arange(w)[None] * GRID // w
    print(f"{ckpt}: {len(x)} images {tuple(x.shape[1:])}, {torch.get_num_threads()} threads")
    rows: dict[str, dict[str, list[float]]] = {}

    def add(method: str, key: str, value: float) -> None:
        rows.setdefault(method, {}).setdefault(key, []).append(value)

    for i in range(len(x)):
        label = int(target[i])

        def scorer(segments: Tensor, i: int = i, label: int = label) -> Score:
            def of_coalitions(on: Tensor) -> Tensor:
                with torch.no_grad():
                    images = shap_values.coalition_images(x[i], base[i], segments, on)
                    return model(images)[:, label]

            return of_coalitions

        with torch.no_grad():
            gap = float(model(torch.stack([x[i], base[i]]))[:, label].diff().neg())
        s = int(segs[i].max()) + 1
        # (1) the image's superpixels at --evals evaluations
        score = scorer(segs[i])
        maps: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        v, used = ours(score, segs[i], 2 * args.evals, seed=0)  # where the rule stops, cap 2x
        add("ours (SVS, rule)", "seconds", time.perf_counter() - t0)
        add("ours (SVS, rule)", "evals", used)
        maps["ours (SVS, rule)"] = v[segs[i].numpy()]
        add("ours (SVS, rule)", "efficiency", abs(v.sum() - gap) / abs(gap))
        t0 = time.perf_counter()
        one = shap_values.explain_one(
            score, segs[i], seed=0, batch_size=128, max_evaluations=args.evals,
            permutations=2 * (args.evals // (2 * s + 1)), adaptive=False,
        )  # fmt: skip
        v, used = one.values, one.evaluations
        add("SVS, fixed count", "seconds", time.perf_counter() - t0)
        add("SVS, fixed count", "evals", used)
        maps["SVS, fixed count"] = v.numpy()[segs[i].numpy()]
        add("SVS, fixed count", "efficiency", abs(v.numpy().sum() - gap) / abs(gap))
        t0 = time.perf_counter()
        v = kernel_shap(score, s, args.evals, seed=0)
        add("Captum KernelShap", "seconds", time.perf_counter() - t0)
        add("Captum KernelShap", "evals", args.evals)
        maps["Captum KernelShap"] = v[segs[i].numpy()]
        add("Captum KernelShap", "efficiency", abs(v.sum() - gap) / abs(gap))
        t0 = time.perf_counter()
        pv = partition_image(model, x[i], base[i], label, args.evals)
        add("shap Partition (Image masker)", "seconds", time.perf_counter() - t0)
        add("shap Partition (Image masker)", "evals", args.evals)
        maps["shap Partition (Image masker)"] = pv
        add("shap Partition (Image masker)", "efficiency", abs(pv.sum() - gap) / abs(gap))
        stacked = torch.from_numpy(np.stack(list(maps.values()))).float()[:, None]  # (R,1,H,W)
        di = faithfulness.deletion_insertion_rows(
            model, x[i : i + 1], target[i : i + 1], stacked, batch_size=128
        )
        for r, name in enumerate(maps):
            add(name, "deletion", float(di["deletion"][r, 0]))
            add(name, "insertion", float(di["insertion"][r, 0]))
        # (2) a 3x3 grid: exact Shapley values, and each estimator at --coarse evaluations
        coarse = scorer(grid)
        exact = exact_shapley(coarse, GRID * GRID)
        seeds = range(3)
        runs = [ours(coarse, grid, args.coarse, seed=k) for k in seeds]
        add(
            "ours (SVS, rule)",
            "coarse error",
            float(np.mean([rel_error(v, exact) for v, _ in runs])),
        )
        add("ours (SVS, rule)", "coarse evals", float(np.mean([u for _, u in runs])))
        errs = [rel_error(kernel_shap(coarse, GRID * GRID, args.coarse, k), exact) for k in seeds]
        add("Captum KernelShap", "coarse error", float(np.mean(errs)))
        centres = centres_of(grid)
        # deterministic, and at 9 segments 128 evaluations already reach its Owen values (4x
        # gave the same error in a trial run): its error is the Owen-Shapley gap
        est = partition_tabular(coarse, centres, args.coarse)
        add("shap Partition (Image masker)", "coarse error", rel_error(est, exact))
        print(f"image {i}: {s} superpixels, label {label}, f(x)-f(hidden) {gap:.3f}", flush=True)
        for name, cols in rows.items():
            cells = "  ".join(f"{k} {np.mean(v):.4g}" for k, v in cols.items())
            print(f"  {name}: {cells}", flush=True)


if __name__ == "__main__":
    main()
