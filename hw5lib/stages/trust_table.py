"""Which explanation to trust: deletion/insertion AUC, the model-randomization sanity check,
localization against object masks, and seed stability, one row per method of the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.methods import attributions, faithfulness, metrics, randomization
from hw5lib.stages.context import Explain, FromGradient, Method, Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.protocol import StageResult
from hw5lib.stages.record import explained
from hw5lib.stages.stage import Stage

NAME = "trust checks"
EDGE = Method(
    "Edge detector (control)", lambda run, cfg, deadline: lambda m, x, t: faithfulness.edge_map(x)
)
RANDOM = "Random map (baseline)"
RANDOM_STREAM, RANDOMIZE_STREAM = 50, 60  # the random map's and the re-initialization's streams
FLAG_ABOVE = 0.5  # |rank corr.| with the randomized model's map above which a method is flagged

COLUMNS = [  # (key of a row, its heading in the table)
    ("method", "method"),
    ("deletion", "deletion AUC (low=good)"),
    ("insertion", "insertion AUC (high=good)"),
    ("randomization", "randomization rank corr."),
    ("flagged", "flagged"),
    ("pointing", "pointing"),
    ("mass_inside", "mass inside"),
    ("stability", "stability"),
]


@dataclass
class TrustResult(StageResult):
    rows: list[dict] = field(default_factory=list)
    mask_fraction: float | None = None
    randomized_layers: list[str] = field(default_factory=list)
    randomization_skipped: str | None = None
    unscored: list[str] = field(default_factory=list)  # methods whose maps are not finite
    deletion_steps: int = 0
    randomize_top: int = 0
    rerun_notes: list[str] = field(default_factory=list)  # how a method's rerun differs
    stability_notes: list[str] = field(default_factory=list)  # how each stability was estimated

    def manifest_entries(self) -> dict[str, Any]:
        return {"trust": trust_manifest(self)}


def scored_methods(run: Run, cfg: RunConfig) -> list[Method]:
    """The run's map methods, rerunnable ones (and the edge control) first, then those without
    a rerun; the random map closes the table."""
    usable = [m for m in run.methods if cfg.randomize_sampled or not m.sampled]
    return [m for m in usable if m.explain] + [EDGE] + [m for m in usable if not m.explain]


@dataclass
class SharedGradient:
    """The input gradient of the last (model, x, target) asked for: saliency and Gradient x
    Input on the randomized model share one backward pass."""

    batch_size: int
    key: tuple[nn.Module, Tensor, Tensor] | None = None
    gradient: Tensor | None = None

    def explain(self, fn: FromGradient) -> Explain:
        def from_shared(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
            if self.key is None or any(
                a is not b for a, b in zip(self.key, (model, x, target), strict=True)
            ):
                self.gradient = attributions.input_gradient(
                    model, x, target, batch_size=self.batch_size
                )
                self.key = (model, x, target)
            return fn(self.gradient, x)

        return from_shared


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


def faithfulness_rows(
    run: Run, cfg: RunConfig, maps: dict[str, Tensor], names: list[str]
) -> list[dict]:
    """Deletion/insertion AUC of every named method in one pass: the curves' ends, the same
    images for every method, are scored once."""
    s = run.subject
    di = faithfulness.deletion_insertion_rows(
        run.inference,
        s.x,
        s.target,
        torch.stack([maps[name] for name in names]).to(run.device),  # (R, N, H, W)
        steps=cfg.deletion_steps,
        baseline="zero",
        insertion_baseline="blur",
        batch_size=cfg.batch_size,
        head=run.output.kind,
    )
    return [
        {"method": name, "deletion": float(d.mean()), "insertion": float(i.mean())}
        for name, d, i in zip(names, di["deletion"], di["insertion"], strict=True)
    ]


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
    rows = faithfulness_rows(run, cfg, maps, names) if names else []
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


def trust_manifest(result: TrustResult | None) -> dict | None:
    if result is None or not (result.rows or result.unscored):
        return None
    table = [
        [
            None if r.get(k) is None else (round(r[k], 4) if isinstance(r[k], float) else r[k])
            for k, _ in COLUMNS
        ]
        for r in result.rows
    ]
    notes = (
        f"Deletion/insertion: softmax probability of the target as the most important pixels are "
        f"set to zero / revealed on a blurred copy, {result.deletion_steps} steps (Petsiuk et al., "
        f"2018); compare with the random map. Randomization: Spearman correlation between the map of "
        f"the trained model and of a copy whose top {result.randomize_top} parameterized layers "
        f"({', '.join(result.randomized_layers)}) were re-initialized (Adebayo et al., "
        f"2018){''.join(', ' + note for note in result.rerun_notes)}; 'flagged' when "
        f"|corr| > {FLAG_ABOVE}, i.e. the map barely depends on the weights. "
    )
    if result.mask_fraction is not None:
        notes += (
            f"Pointing: share of images whose map maximum lies on the object; mass inside: share "
            f"of positive attribution on the object, which covers {result.mask_fraction:.2f} of the "
            f"image. "
        )
    if result.unscored:
        notes += (
            f"Not scored, as their maps are not finite (NaN or infinite values): "
            f"{', '.join(result.unscored)}. "
        )
    if result.randomization_skipped is not None:
        notes += f"Randomization check skipped: {result.randomization_skipped}. "
    if result.stability_notes:
        notes += f"Stability: {'; '.join(result.stability_notes)}."
    return {"columns": [heading for _, heading in COLUMNS], "rows": table, "notes": notes}


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
