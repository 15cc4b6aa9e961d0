"""Q4: SHAP over LIME's SLIC superpixels, Shapley values of each superpixel for the target's
logit (hidden: its mean colour), antithetic permutations until the top superpixels are settled
(``methods/shap_values``). The trust table scores its map and reruns it on the randomized model
at the trained run's counts (a sampled method's rerun: the budget's first cut)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.methods import attributions, lime_adapter, shap_values
from hw5lib.methods.faithfulness import Explain
from hw5lib.report import attribution_figures
from hw5lib.stages.context import Method, Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.lime_result import LimeStageResult
from hw5lib.stages.protocol import FigureRecord
from hw5lib.stages.record import (
    explained,
    mask_caption,
    unexplained,
    unexplained_caption,
    write_png,
)
from hw5lib.stages.shap_inputs import UntilDeadline, superpixels
from hw5lib.stages.shap_result import (
    FLOOR_ONLY,
    METHOD,
    ShapStageResult,
    at_cap,
    caption,
    permutation_cap,
)
from hw5lib.stages.stage import Share, Stage
from hw5lib.tolerances import RANKED, ArrayRule

NAME = "Q4 SHAP"
FID = "q4_shap"
SEGMENTS = lime_adapter.SLIC_ARGS["n_segments"]  # superpixels per image, before LIME made them


def stage_shap(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> ShapStageResult:
    if not cfg.shap:
        return ShapStageResult(cap=cfg.shap_evaluations, adaptive=cfg.adaptive)
    s = run.subject
    segs = superpixels(run)
    counts = [int(seg.max()) + 1 for seg in segs]
    replayed = run.replayed(METHOD, "permutations", permutation_cap(cfg, min(counts)))
    todo = len(replayed) if replayed is not None else len(s.paths)
    results: list[shap_values.ShapResult] = []
    model = UntilDeadline(run.inference, deadline)
    for i in range(todo):
        x = s.x[i : i + 1]
        seg = torch.from_numpy(segs[i])[None]
        try:
            result = shap_values.shapley_values(
                model,
                x,
                s.target[i : i + 1],
                seg,
                shap_values.segment_means(x, seg.to(x.device)),
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                max_evaluations=cfg.shap_evaluations,
                permutations=None if replayed is None else [replayed[i]],
                adaptive=cfg.adaptive,
            )
        except lime_adapter.OutOfTime:
            left = f"{len(s.paths) - i} of {len(s.paths)}"
            run.cuts.append(f"{NAME}: {left} images not explained, the budget was spent")
            break
        results.append(result)
        bar.update()
    if not results:
        return ShapStageResult(cap=cfg.shap_evaluations, adaptive=cfg.adaptive)
    n = len(results)
    width = max(counts[:n])
    values = np.zeros((n, width), dtype=np.float32)
    for i, r in enumerate(results):
        values[i, : counts[i]] = r.values[0, : counts[i]].numpy()
    maps = torch.cat([r.maps for r in results]).cpu().float()
    full = torch.cat([r.full for r in results]).float().numpy()
    empty = torch.cat([r.empty for r in results]).float().numpy()
    perms, evals = [r.permutations[0] for r in results], [r.evaluations[0] for r in results]
    arr = maps.numpy()
    shown = s.first(n)
    reasons = attributions.why_unexplained(arr)
    title = "SHAP: superpixels for (red) and against (blue) the class"
    fig = attribution_figures.image_map_pairs(
        shown.pixels, arr, shown.titles(run.classes), title, signed=True, notes=reasons
    )
    write_png(run, f"{FID}.png", fig)
    run.write_npz(
        f"{FID}.npz",
        input=shown.x.cpu().numpy().astype(np.float32),
        target=shown.target.cpu().numpy(),
        segments=np.stack(segs[:n]),
        values=values,
        map=arr,
        full=full,
        empty=empty,
        permutations=np.array(perms),
        evaluations=np.array(evals),
        files=np.array([p.name for p in shown.paths]),
    )
    complete = n == len(s.paths)
    missing = unexplained(run, reasons)
    params = {"permutations": perms, "evaluations": evals, "cap": cfg.shap_evaluations,
              "seed": cfg.seed, **({"unexplained": missing} if missing else {})}  # fmt: skip
    record = FigureRecord(
        FID,
        STAGE.section,
        "SHAP over superpixels",
        caption(values, full, empty, perms, evals, cfg)
        + unexplained_caption(missing)
        + (mask_caption(run, arr) if complete else ""),
        f"{FID}.png",
        f"{FID}.npz",
        params,
    )
    return ShapStageResult(
        [record],
        {METHOD: maps} if complete else {},  # the trust table compares the same images
        share=float(np.mean([e / at_cap(cfg, c) for e, c in zip(evals, counts, strict=False)])),
        permutations=perms,
        evaluations=evals,
        separation=[[t[1] for t in r.trace[0]] for r in results],
        agreement=[r.agreement[0] for r in results] if complete else [],
        cap=cfg.shap_evaluations,
        adaptive=cfg.adaptive,
    )


def explain(run: Run, cfg: RunConfig, deadline: Deadline) -> Explain:
    """SHAP of another model (the randomized one) over the same superpixels and hides, at each
    image's permutation count in the trained run."""
    done, segs = run.find(ShapStageResult), superpixels(run)
    counts = list(done.permutations) if done and done.permutations else None

    def shap_maps(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        seg = torch.from_numpy(np.stack(segs[: len(x)])).to(x.device)
        return shap_values.shapley_values(
            model, x, target, seg, shap_values.segment_means(x, seg), seed=cfg.seed,
            batch_size=cfg.batch_size, max_evaluations=cfg.shap_evaluations,
            permutations=counts[: len(x)] if counts else None, adaptive=cfg.adaptive,
        ).maps  # fmt: skip

    return shap_maps


def shap_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    """Model evaluations per image at LIME's superpixel counts where it ran (else SLIC's target
    count): never fewer than the rule's floor of permutations; nothing without --shap."""
    if not cfg.shap:
        return Work()
    lime = run.find(LimeStageResult)
    counts = [int(r.segments.max()) + 1 for r in lime.results] if lime else []
    counts += [SEGMENTS] * (explained(run) - len(counts))
    forward = 0.0
    for n in counts:
        floor = shap_values.evaluations(n, 2 * shap_values.MIN_PAIRS)
        forward += max(floor, at_cap(cfg, n) * shares[NAME])
    return Work(forward=forward, seconds=0.1 * explained(run) + FIGURE_SECONDS)


STAGE = Stage(
    NAME,
    "Q4",
    stage_shap,
    shap_cost,
    units=lambda run, cfg: explained(run) if cfg.shap else 0,
    cuts=(
        Cut(
            NAME,
            f"{2 * shap_values.MIN_PAIRS} permutations per image (the rule's floor)",
            {"shap_evaluations": FLOOR_ONLY},
            rank=4.5,  # the floor already settled the demo's top five (bench/RESULTS.md: SHAP)
        ),
        # an extra (--shap): gone before the trust checks and DeepDream
        Cut(NAME, "SHAP not run", {"skip": True}, rank=6.5),
    ),
    options=("shap", "shap_evaluations", "adaptive", "seed", "batch_size"),
    methods=(
        Method(
            METHOD,
            explain,
            sampled=True,
            rerun_note="SHAP with each image's permutation count in the trained run",
            rerun_cost=lambda run, cfg, shares: Work(forward=shap_cost(run, cfg, shares).forward),
        ),
    ),
    # measured (bench/RESULTS.md: SHAP): 0.67 of each image's cap on the demo (10 of 11 at the
    # floor), 0.8-1.0 on the full-size model's two images
    share=Share(expected=0.9),
    figures=lambda run: (FID,) if run.cfg.shap else (),
    verify=(ArrayRule(FID, "values", RANKED), ArrayRule(FID, "map", RANKED)),
)
