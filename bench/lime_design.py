"""LIME sampling designs at equal sample counts: agreement with three stock 1000-sample runs.

    .venv/bin/python bench/lime_design.py [--images 40] [--full N]

Per image: three stock lime runs (seeds 1000, 7, 11; lime's own draw and fit, its per-sample loop
vectorized) as references; then each design's first COUNTS[-1] samples are drawn once and lime's
fit refit on prefixes of COUNTS samples (a prefix is what a run stopped at that count drew), and
at the count where the adaptive stopping rule would stop from each of FLOORS. Prints top-5
overlap and rank correlation against the references (mean over images; in brackets the mean
sample count) after each image. ``--full N``: the same on N images of the
full-size Classifier (/tmp/rf/classifier.pth, /tmp/rf/food) instead of the bundled demo model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sklearn.metrics
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hw5lib import tolerances  # noqa: E402
from hw5lib.arguments import BUNDLED_CHECKPOINT, BUNDLED_DATA, ensure_sample  # noqa: E402
from hw5lib.inputs.datasets import open_dataset  # noqa: E402
from hw5lib.inputs.images import load_inputs  # noqa: E402
from hw5lib.methods import (  # noqa: E402
    lime_adapter,
    lime_stopping,
)
from hw5lib.model.loading import load_classifier  # noqa: E402

COUNTS = (200, 300, 400, 500, 600, 800, 1000)
# Floors of the stopping rule simulated per design (rounds of ROUND_SAMPLES, cap COUNTS[-1]).
FLOORS = (300, 400, 500, 600)
REF_SEEDS = (1000, 7, 11)


def antithetic(rs: np.random.RandomState, n: int, f: int) -> np.ndarray:
    """The sampler before the foldover design: rounds of ROUND_SAMPLES random masks, each with
    its complement (row, 1 - row); row 0 the image itself."""
    rounds = []
    for _ in range(-(-n // lime_stopping.ROUND_SAMPLES)):
        half = rs.randint(0, 2, lime_stopping.ROUND_SAMPLES // 2 * f).reshape(-1, f)
        rounds.append(np.stack([half, 1 - half], axis=1).reshape(-1, f))
    data = np.concatenate(rounds)[:n]
    data[0] = 1
    return data


DESIGNS = {"antithetic": antithetic, "foldover": lime_stopping.foldover_masks}


def responses(fn: Callable, data: np.ndarray, segments, image, fudged) -> np.ndarray:
    """The model's outputs for the perturbed images of ``data``'s on/off rows."""
    outs = []
    for start in range(0, len(data), 250):
        keep = data[start : start + 250][:, segments].astype(bool)
        outs.append(fn(np.where(keep[..., None], image[None], fudged[None])))
    return np.concatenate(outs)


def stopped(base: object, data: np.ndarray, labels: np.ndarray, label: int, floor: int) -> int:
    """The sample count at which the adaptive rule (lime_adapter) would stop, from ``floor``."""
    distances = sklearn.metrics.pairwise_distances(data, data[:1], metric="cosine").ravel()
    kernel = base.kernel_fn(distances)  # type: ignore[attr-defined]
    step = lime_stopping.ROUND_SAMPLES
    for n in range(floor, len(data), step):
        cov = lime_stopping.weights_covariance(data[:n], labels[:n, label], kernel[:n])
        fit = lime_adapter.lime_weights(base, data[:n], labels[:n], label)  # type: ignore[arg-type]
        sep = lime_stopping.top_separation(fit, None if cov is None else cov[0])
        if n >= lime_stopping.matched_sample_count(cov) and sep >= lime_stopping.TOP_SEPARATION:
            return n
    return len(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--full", type=int, default=0)
    ap.add_argument("--designs", default=",".join(DESIGNS))
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    torch.manual_seed(0)
    from lime import lime_base, lime_image

    if args.full:
        ckpt, data_root, images = Path("/tmp/rf/classifier.pth"), Path("/tmp/rf/food"), args.full
    else:
        ensure_sample(BUNDLED_DATA)
        ckpt, data_root, images = BUNDLED_CHECKPOINT, BUNDLED_DATA, args.images
    loaded = load_classifier(ckpt)
    model, pre = loaded.model.eval(), loaded.preprocess
    split = open_dataset(data_root)
    paths = list(split.paths)[:: max(1, len(split.paths) // images)][:images]
    x = load_inputs(paths, pre)
    pixels = pre.denormalize(x).permute(0, 2, 3, 1).numpy()
    with torch.no_grad():
        target = model(x).argmax(1)
    fn = lime_adapter.classifier_fn(model, pre.normalize, pre.channels)
    explainer = lime_image.LimeImageExplainer(random_state=0)
    base: lime_base.LimeBase = explainer.base
    designs = args.designs.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    top5: dict[tuple[str, int], list[float]] = {}
    rank: dict[tuple[str, int], list[float]] = {}
    used: dict[tuple[str, str], list[int]] = {}
    stock5, stockr, feats = [], [], []
    for i in range(len(x)):
        label = int(target[i])
        segments = lime_adapter.segment(pixels[i])
        f = int(segments.max()) + 1
        feats.append(f)
        image = pixels[i].astype(np.float32)
        fudged = image.copy()
        for s in range(f):  # lime's default hide: each superpixel's mean colour
            fudged[segments == s] = image[segments == s].mean(axis=0)

        def fit(data: np.ndarray, hide: tuple = (segments, image, fudged)) -> tuple:
            return data, responses(fn, data, *hide)

        refs = []
        for seed in REF_SEEDS:  # stock lime's own draw and fit, its per-sample loop vectorized
            data = np.random.RandomState(seed).randint(0, 2, 1000 * f).reshape(1000, f)
            data[0] = 1
            refs.append(lime_adapter.lime_weights(base, *fit(data), label))
        pairs = [(refs[0], refs[1]), (refs[0], refs[2]), (refs[1], refs[2])]
        stock5.append(np.mean([tolerances.topk_overlap(a, b, 5) for a, b in pairs]))
        stockr.append(np.mean([tolerances.rank_correlation_1d(a, b) for a, b in pairs]))
        for name in designs:
            for seed in seeds:
                data, labels = fit(DESIGNS[name](np.random.RandomState(seed), COUNTS[-1], f))
                fixed = [(str(n), n) for n in COUNTS]
                for floor in FLOORS:
                    fixed.append((f"rule{floor}", stopped(base, data, labels, label, floor)))
                for key, n in fixed:
                    w = lime_adapter.lime_weights(base, data[:n], labels[:n], label)
                    used.setdefault((name, key), []).append(n)
                    top5.setdefault((name, key), []).append(
                        np.mean([tolerances.topk_overlap(w, r, 5) for r in refs])
                    )
                    rank.setdefault((name, key), []).append(
                        np.mean([tolerances.rank_correlation_1d(w, r) for r in refs])
                    )
        print(f"image {i}: {f} superpixels, stock {stock5[-1]:.3f}/{stockr[-1]:.3f}", flush=True)
        print(f"\n{i + 1} images, superpixels {min(feats)}-{max(feats)}")
        print(f"stock 1000 (pairs): top5 {np.mean(stock5):.3f} rank {np.mean(stockr):.3f}")
        print("| samples | " + " | ".join(designs) + " |")
        for key in [str(n) for n in COUNTS] + [f"rule{floor}" for floor in FLOORS]:
            cells = [
                f"{np.mean(top5[d, key]):.3f} / {np.mean(rank[d, key]):.3f} ({np.mean(used[d, key]):.0f})"
                for d in designs
            ]
            print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
