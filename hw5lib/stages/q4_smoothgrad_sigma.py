"""Q4: SmoothGrad's noise std swept (--smooth-sigmas): a row of maps per sigma, each converged by
SmoothGrad's own rule, scored against the main figure's maps and by deletion AUC."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from hw5lib.config import RunConfig
from hw5lib.methods import metrics
from hw5lib.methods.deletion_rows import auc_rows
from hw5lib.methods.randomization import rank_correlation
from hw5lib.report.sweep_figure import sweep_rows
from hw5lib.stages import q4_smoothgrad
from hw5lib.stages.context import Run, Shares
from hw5lib.stages.costs import FIGURE_SECONDS, Cut, Deadline, Work
from hw5lib.stages.protocol import FigureRecord, StageResult
from hw5lib.stages.q4_smoothgrad import METHOD, SmoothGradResult, smoothgrad_of
from hw5lib.stages.record import explained, number, write_png
from hw5lib.stages.stage import Share, Stage
from hw5lib.tolerances import RANKED, ArrayRule

NAME = "Q4 SmoothGrad sigma sweep"
ID = "q4_smoothgrad_sigma"
TITLE = "SmoothGrad by noise std sigma"
# A sigma's own noise stream: this base plus the sigma in thousandths, so a sigma's row does not
# depend on which others are swept, and no stage's stream (all below 1000) is ever drawn again.
STREAMS = 100_000
# Mean Spearman with the main figure's maps below which a map no longer tracks it: on the sample
# set the maps lose the object between sigma 1 and 2 (0.87 -> 0.85); the dark border every
# sigma's map shares keeps it above 0.8 even at sigma 4 (bench/RESULTS.md).
TRACKS = 0.85


def stream_of(sigma: float) -> int:
    return STREAMS + round(sigma * 1000)


def method_of(sigma: float) -> str:
    """The name a sigma's samples are recorded (and replayed) under in "convergence"."""
    return f"{METHOD} sigma {sigma:g}"


def swept(cfg: RunConfig) -> list[float]:
    """The sigmas to sweep, increasing, each once."""
    return sorted(set(cfg.smooth_sigmas))


@dataclass
class SweepResult(StageResult):
    cap: int = 0
    own: dict[float, list[int]] = field(default_factory=dict)  # sigma -> samples, own stream

    def convergence(self) -> dict[str, dict]:
        return {
            method_of(sigma): {
                "rule": f"SmoothGrad's, at noise std {sigma:g}; cap {self.cap}",
                "samples": samples,
            }
            for sigma, samples in self.own.items()
        }


def maps_at(
    run: Run, cfg: RunConfig, deadline: Deadline, sigma: float, own: dict[float, list[int]]
) -> tuple[Tensor, list[int]]:
    """SmoothGrad maps [N,H,W] at ``sigma`` and each image's samples. The main figure's sigma is
    the main figure's maps (made with its noise, if that stage did not run); any other draws
    from its own stream and is noted in ``own``."""
    s, main, at_main = run.subject, run.find(SmoothGradResult), sigma == cfg.smooth_sigma
    if at_main and main is not None:
        return main.maps[METHOD].float(), list(main.samples)
    at = cfg if at_main else replace(cfg, smooth_sigma=sigma)
    own_noise = {} if at_main else {"stream": stream_of(sigma), "method": method_of(sigma)}
    done = smoothgrad_of(run, at, deadline, run.gradients, s.x, s.target, **own_noise)
    if not at_main:
        own[sigma] = done.used.tolist()
    return done.value.detach().cpu().float(), done.used.tolist()


def deletion_aucs(run: Run, cfg: RunConfig, sigmas: list[float], rows: list[Tensor]) -> list:
    """Mean deletion AUC per sigma, scored as the trust table scores a method (NaN for a sigma
    whose maps are not finite)."""
    s, named = run.subject, {f"{sg:g}": m for sg, m in zip(sigmas, rows, strict=True)}
    finite = [k for k, m in named.items() if m.isfinite().all()]
    if not finite:
        return [float("nan")] * len(rows)
    how = dict(steps=cfg.deletion_steps, batch_size=cfg.batch_size, head=run.output.kind)
    scored = auc_rows(run.inference, s.x, s.target, named, finite, **how, device=run.device)
    auc = {row["method"]: row["deletion"] for row in scored}
    return [auc.get(k, float("nan")) for k in named]


def span(used: list[int]) -> str:
    return f"{min(used)}" if min(used) == max(used) else f"{min(used)}-{max(used)}"


def caption(cfg: RunConfig, sigmas: list[float], used: list[list[int]], scores: dict) -> str:
    inside = scores.get("mass_inside", [None] * len(sigmas))
    rows = "; ".join(
        f"{sg:g}: {span(u)} samples, Spearman {number(rho, '.3f')}, deletion AUC "
        f"{number(auc, '.3f')}" + ("" if share is None else f", mass inside {number(share)}")
        for sg, u, rho, auc, share in zip(
            sigmas, used, scores["spearman"], scores["deletion"], inside, strict=True
        )
    )
    below = [sg for sg, rho in zip(sigmas, scores["spearman"], strict=True) if not rho >= TRACKS]
    own_row = ": its row here" if cfg.smooth_sigma in sigmas else ""
    where = (
        f"The map stops tracking the main figure's at sigma {below[0]:g}, the first whose mean "
        f"Spearman correlation with it is below {TRACKS}."
        if below
        else f"Every swept sigma's map tracks the main figure's (mean Spearman >= {TRACKS})."
    )
    return (
        f"SmoothGrad with noise of std sigma x each image's value range, one row per sigma, each "
        f"converged by SmoothGrad's rule (cap {cfg.smooth_samples}). Per sigma: samples per "
        f"image, mean Spearman correlation with the main figure's maps (sigma "
        f"{cfg.smooth_sigma:g}, q4_smoothgrad{own_row}), mean deletion AUC (low = faithful)"
        + (", share of the positive map inside the object mask" if "mass_inside" in scores else "")
        + f": {rows}. {where}"
    )


def stage_sweep(run: Run, cfg: RunConfig, deadline: Deadline, bar: tqdm) -> SweepResult:
    sigmas, out = swept(cfg), SweepResult(cap=cfg.smooth_samples)
    if not sigmas:
        return out
    s, rows, used = run.subject, [], []
    for sigma in sigmas:
        maps, samples = maps_at(run, cfg, deadline, sigma, out.own)
        rows.append(maps)
        used.append(samples)
        bar.update()
    at_main = dict(zip(sigmas, rows, strict=True)).get(cfg.smooth_sigma)
    ref = at_main if at_main is not None else maps_at(run, cfg, deadline, cfg.smooth_sigma, {})[0]
    scores = {
        "spearman": [float(rank_correlation(m, ref).nanmean()) for m in rows],
        "deletion": deletion_aucs(run, cfg, sigmas, rows),
    }
    if s.masks is not None:  # the object itself, where the data has masks
        inside = [metrics.mass_inside(m, torch.from_numpy(s.masks)).nanmean() for m in rows]
        scores["mass_inside"] = [float(v) for v in inside]
    bar.update()
    stacked = torch.stack(rows).numpy()  # (S, N, H, W)
    rhos = scores["spearman"]
    labels = [
        f"sigma {sg:g}   Spearman {number(r, '.3f')}" for sg, r in zip(sigmas, rhos, strict=True)
    ]
    fig = sweep_rows(s.pixels, stacked, s.titles(run.classes), labels, f"{TITLE} (x value range)")
    write_png(run, f"{ID}.png", fig)
    run.write_npz(
        f"{ID}.npz",
        sigmas=np.array(sigmas, dtype=np.float64),  # as given: 0.15 stays 0.15
        maps=stacked.astype(np.float32),
        samples=np.array(used, dtype=np.int64),
        target=s.target.cpu().numpy(),
        files=np.array([p.name for p in s.paths]),
    )
    params = {"sigmas": sigmas, "main_sigma": cfg.smooth_sigma, "cap": cfg.smooth_samples}
    params |= {"samples": used, "tracks_above": TRACKS, **scores}
    text = caption(cfg, sigmas, used, scores)
    out.figures = [FigureRecord(ID, "Q4", TITLE, text, *(f"{ID}.png", f"{ID}.npz"), params)]
    spent = [n for counts in out.own.values() for n in counts]
    out.share = float(np.mean(spent)) / cfg.smooth_samples if spent else None
    return out


def sweep_cost(run: Run, cfg: RunConfig, shares: Shares) -> Work:
    """Each sigma's gradients but the main figure's (reused) at the expected share of the cap,
    and its deletion curves; nothing without --smooth-sigmas."""
    sigmas = swept(cfg)
    if not sigmas:
        return Work()
    n, own = explained(run), sum(sg != cfg.smooth_sigma for sg in sigmas)
    return Work(
        forward=n * (3 + 2 * len(sigmas) * (cfg.deletion_steps - 1)),
        backward=n * cfg.smooth_samples * shares[NAME] * own,
        seconds=FIGURE_SECONDS,
    )


STAGE = Stage(
    NAME,
    "Q4",
    stage_sweep,
    sweep_cost,
    units=lambda run, cfg: len(swept(cfg)) + 1 if cfg.smooth_sigmas else 0,
    # an extra figure of a setting: lost before any figure of the assignment's questions
    cuts=(Cut(NAME, "SmoothGrad sigma sweep not run", {"skip": True}, rank=0.5),),  # an extra
    options=(*q4_smoothgrad.STAGE.options, "smooth_sigmas", "deletion_steps"),
    share=Share(expected=0.8),  # 0.76 of the cap on the sample set (bench/RESULTS.md)
    figures=lambda run: (ID,) if run.cfg.smooth_sigmas else (),
    verify=(ArrayRule(ID, "maps", RANKED),),
)
