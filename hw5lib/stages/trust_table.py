"""Which explanation to trust: deletion/insertion AUC, the model-randomization sanity check,
localization against object masks, and seed stability, one row per method of the registry."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.methods import faithfulness, metrics, randomization
from hw5lib.methods.deletion_rows import auc_rows
from hw5lib.methods.shared_gradient import SharedGradient
from hw5lib.stages.context import Explain, Method, Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.record import explained
from hw5lib.stages.stage import Stage
from hw5lib.stages.trust_record import FLAG_ABOVE, TrustResult

NAME = "trust checks"
EDGE = Method(
    "Edge detector (control)", lambda run, cfg, deadline: lambda m, x, t: faithfulness.edge_map(x)
)
RANDOM = "Random map (baseline)"
RANDOM_STREAM, RANDOMIZE_STREAM = 50, 60  # the random map's and the re-initialization's streams


def scored_methods(run: Run, cfg: RunConfig) -> list[Method]:
    """The run's map methods, rerunnable ones (and the edge control) first, then those without
    a rerun; the random map closes the table."""
    usable = [m for m in run.methods if cfg.randomize_sampled or not m.sampled]
    return [m for m in usable if m.explain] + [EDGE] + [m for m in usable if not m.explain]


def method_table(run: Run, cfg: RunConfig, deadline: Deadline) -> dict[str, Explain]:
    """Each rerunnable method as explain(model, x, target) -> [N,H,W], for the randomized model."""
    shared = SharedGradient(cfg.batch_size)
    table = {}
    for m in scored_methods(run, cfg):
        fn = m.from_gradient(cfg) if m.from_gradient else None
        if fn is not None:
            table[m.name] = shared.explain(fn)
        elif m.explain:
            table[m.name] = m.explain(run, cfg, deadline)
    return table


def randomized_model(run: Run, cfg: RunConfig, out: TrustResult) -> nn.Module | None:
    """The copy with the top layers re-initialized, made once for every method's rerun (each
    would draw the same weights from the same stream); None where a layer cannot be."""
    try:
        return randomization.randomized_copy(
            run.model, cfg.randomize_top, run.generator(RANDOMIZE_STREAM), clip=True
        )
    except TypeError as err:  # a layer type (or TorchScript) we cannot re-initialize
        out.randomization_skipped = str(err)
        return None


def check_row(
    run: Run,
    cfg: RunConfig,
    row: dict,
    maps: Tensor,
    explain: Explain | None,
    random: nn.Module | None,
    out: TrustResult,
) -> None:
    """Add the randomization check and, where masks exist, localization to a method's row."""
    s, name = run.subject, row["method"]
    if explain is not None and random is not None:
        try:
            check = randomization.randomization_check(
                explain,
                run.model,
                s.x,
                s.target,
                trained_maps=maps if name != EDGE.name else None,
                n_top=cfg.randomize_top,
                threshold=FLAG_ABOVE,
                randomized=random,
            )
        except TypeError as err:  # a method that cannot run on the copy (as TorchScript)
            out.randomization_skipped = str(err)
            return
        row["randomization"] = check["mean"]
        row["flagged"] = check["flagged"]
        out.randomized_layers = check["randomized_layers"]
        out.randomize_top = check["n_top"]
    if s.masks is not None:
        masks = torch.from_numpy(s.masks)
        row["pointing"] = float(metrics.pointing_game(maps, masks).float().mean())
        row["mass_inside"] = float(metrics.mass_inside(maps, masks).mean())


def stage_trust(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> TrustResult:
    """Which map to believe: deletion/insertion AUC vs a random map, the model-randomization
    sanity check, localization against object masks, and stability across seeds."""
    s = run.subject
    out = TrustResult(deletion_steps=cfg.deletion_steps, randomize_top=cfg.randomize_top)
    if not cfg.trust:
        return out
    maps = run.maps()
    maps[EDGE.name] = faithfulness.edge_map(s.x).cpu()
    maps[RANDOM] = faithfulness.random_maps(
        (len(s.paths), *s.x.shape[-2:]), run.generator(RANDOM_STREAM)
    )
    methods = scored_methods(run, cfg)
    names = [n for n in [*(m.name for m in methods), RANDOM] if n in maps]
    out.unscored = [n for n in names if not maps[n].isfinite().all()]  # NaN or inf: no ranks
    names = [n for n in names if n not in out.unscored]
    if names and deadline.passed():
        run.cuts.append(f"{NAME}: no row for {names[0]} and after, the budget was spent")
        names = []
    rows: list[dict] = []
    if names:  # deletion/insertion AUC of every named method in one pass
        rows = auc_rows(
            run.inference,
            s.x,
            s.target,
            maps,
            names,
            steps=cfg.deletion_steps,
            batch_size=cfg.batch_size,
            head=run.output.kind,
            device=run.device,
        )
    bar.update()
    explains = method_table(run, cfg, deadline)
    random = randomized_model(run, cfg, out) if any(n in explains for n in names) else None
    for row in rows:
        if deadline.passed():
            run.cuts.append(f"{NAME}: no row for {row['method']} and after, the budget was spent")
            break
        check_row(run, cfg, row, maps[row["method"]], explains.get(row["method"]), random, out)
        out.rows.append(row)
        bar.update()
    stability = {k: v for r in run.results.values() for k, v in r.stability().items()}
    for row in out.rows:
        row["stability"] = stability[row["method"]].value if row["method"] in stability else None
    in_table = [row["method"] for row in out.rows]
    out.stability_notes = [stability[n].how for n in in_table if n in stability]
    out.rerun_notes = [m.rerun_note for m in methods if m.rerun_note]
    if s.masks is not None:
        masks = torch.from_numpy(s.masks)
        out.rows += [row for r in run.results.values() for row in r.trust_rows()]
        out.mask_fraction = float(metrics.mask_fraction(masks).mean())
    bar.update()
    return out


def trust_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    if not cfg.trust:
        return Work()
    n = explained(run)
    rows = len(run.methods) + 2  # every map method and two controls
    # Deletion/insertion: the 2 * (steps - 1) inner images of each row's curves, and the 3
    # images their ends share (the image, its zeroed and its blurred copy) once per image.
    work = Work(
        forward=n * (rows * 2 * (cfg.deletion_steps - 1) + 3),
        backward=4 * n,  # the single-pass methods' reruns
        seconds=3 * FIGURE_SECONDS,
    )
    if cfg.randomize_sampled:  # the sampled methods' reruns, as each prices its own
        for m in run.methods:
            work = work + (m.rerun_cost(run, cfg, shares) if m.rerun_cost else Work())
    return work


STAGE = Stage(
    NAME,
    "Q4",
    stage_trust,
    trust_cost,
    units=lambda run, cfg: len(scored_methods(run, cfg)) + 3 if cfg.trust else 0,
    cuts=(
        Cut(
            NAME,
            "randomization check run for the single-pass methods only, not the sampled ones",
            {"randomize_sampled": False},
            rank=1,
        ),
        Cut(
            NAME,
            "deletion/insertion curves with 8 steps instead of 16",
            {"deletion_steps": 8},
            rank=4,
        ),
        Cut(NAME, "trust checks not run", {"skip": True}, rank=7),
    ),
    options=("trust", "deletion_steps", "randomize_top", "randomize_sampled"),
)
