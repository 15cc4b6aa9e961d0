"""The frozen RunConfig a report run depends on, with each command-line option declared once.

A field made with ``option(...)`` carries its flag, help text and argparse group as metadata:
``cli`` builds the parser from these fields and the RunConfig from the parsed values, so an
option is one line here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from hw5lib.options import PREPROCESSING, RUN, WHAT, Option, floats, ints, names, option

# --conventions: this tool's saliency, LIME and filter ascent, or the course code's (course.py)
OURS, COURSE = "ours", "course"


@dataclass(frozen=True)
class RunConfig:
    """Everything a report run depends on; recorded in the manifest."""

    data: Path | None
    out: Path
    checkpoint: Path
    model: str | None = option(
        None,
        "your own architecture as path/to/file.py:ClassName, a function that returns the "
        "model (path/to/file.py:get_model, torchvision.models:resnet18), built with "
        "--model-args and filled from the checkpoint's state_dict (default: the HW3 "
        "Classifier; TorchScript files need no --model)",
        RUN,
    )
    model_args: dict | list | None = None  # parsed from --model-args (cli)
    checkpoint_key: str | None = option(
        None,
        "which state_dict of the checkpoint to explain, where it holds more than one that fits "
        "(a dotted path for nested dicts: model, ema.state_dict)",
        RUN,
        metavar="KEY",
    )
    trust_pickle: bool = option(
        False,
        "allow a checkpoint that is a pickled whole model (runs code from the file: "
        "only for files you trust)",
        RUN,
        switch=True,
    )
    seed: int = option(0, "seed for every random choice (default 0)", RUN, type=int)
    notes: Path | None = option(  # noqa: RUF009 (a Path is immutable)
        None,
        "your answers, set into report.pdf: markdown sections '## Q1' ... '## Q4', each "
        "section's paragraphs after that question's figures; figure ids named in the text "
        "(q1_saliency) must be ones this run makes (hw5.sh passes report_notes.md beside it "
        "when that file exists)",
        RUN,
        type=Path,
    )
    size: int | None = option(
        None,
        "resize images to SIZE x SIZE (default: the checkpoint's, else a CSV's own side, "
        "else HW3's 128)",
        PREPROCESSING,
        flags=("--size", "--csv-size"),
        type=int,
        positive=True,
    )
    channel_order: str | None = option(
        None,
        "bgr for models trained on cv2.imread images (HW3 sample code), rgb for PIL",
        PREPROCESSING,
        choices=("rgb", "bgr"),
    )
    reader: str | None = option(
        None,
        "cv2 as the HW3 sample code: cv2.imread + cv2.resize INTER_LINEAR (cv2-cubic, "
        "cv2-area: INTER_CUBIC, INTER_AREA); pil as the HW5 sample code: PIL's antialiased "
        "bilinear resize",
        PREPROCESSING,
        choices=("cv2", "cv2-cubic", "cv2-area", "pil"),  # data.READERS
    )
    preprocess: str | None = option(
        None,
        "your own image reading as path/to/file.py:function (a path -> an HWC array or CHW "
        "tensor, exactly your training's model input): used as is for every image, and the "
        "input check then only scores it",
        PREPROCESSING,
    )
    mean: tuple[float, ...] | None = option(
        None, "per-channel mean subtracted after scaling to [0,1]", PREPROCESSING, type=floats
    )
    std: tuple[float, ...] | None = option(
        None, "per-channel std divided after subtracting the mean", PREPROCESSING, type=floats
    )
    channels: int | None = option(
        None,
        "input channels (default: the checkpoint's, else the first conv layer's)",
        PREPROCESSING,
        type=int,
        choices=(1, 3),
    )
    classes: str | None = option(
        None, "comma-separated class names, or food11, fer2013, catdog", PREPROCESSING
    )
    input_check: bool = option(
        True,
        "skip measuring, on up to 200 labelled images, which input convention (channel order, "
        "reader, scaling) the model scores best with",
        PREPROCESSING,
        flags=("--no-input-check",),
        negate=True,
    )
    images: tuple[Path, ...] = option(
        (),
        "extra image files to explain (label from <label>_<n> names, else the prediction)",
        WHAT,
        type=Path,
        nargs="+",
    )
    per_class: int = option(
        1, "images per class (default 1; 0: only --images and the preset's picks)", WHAT, type=int
    )
    targets: str = option(
        "label",
        "class each map explains: label (the prediction where there is none), pred, or a class "
        "index (default label)",
        WHAT,
    )
    training_indices: tuple[int, ...] = option(
        (),
        "also explain these indices into the sorted training split (the course's picks: "
        "83,4218,4707,8598)",
        WHAT,
        type=ints,
    )
    named_images: tuple[str, ...] = option(
        (), "also explain these files of the data folder, e.g. dog.jpg,cat.jpg", WHAT, type=names
    )
    filter_layers: tuple[str, ...] = option(
        (),
        "layers for Q2, by index into model.cnn (15) or name (cnn.15); default: 4 activation "
        "layers spread over the conv trunk",
        WHAT,
        type=names,
    )
    filters: tuple[int, ...] = option(
        (),
        "filter indices for Q2 (default: the 4 most active on the explained images)",
        WHAT,
        type=ints,
    )
    filters_per_layer: int = option(
        4, "filters per layer when --filters is not given (default 4)", WHAT, type=int
    )
    filter_layer_count: int = 4  # layers picked when filter_layers is empty (a budget cut)
    filter_steps: int = option(
        80,
        "steps of cosine-scheduled ascent (default 80); filters whose activation still rose by "
        "> 2.5%% over the last 20 steps are redone from a new start with twice the steps, the "
        "higher of the two kept; a layer with a small receptive field climbs a periodic tile, "
        "shown repeated to the full size (bench/RESULTS.md: against 400 steps)",
        type=int,
        positive=True,
    )
    activation_images: int = 4
    conventions: str = option(
        OURS,
        "ours: the definitions bench/RESULTS.md measures (saliency |d logit / d x| max over "
        "channels; foldover-Hadamard LIME on probabilities until converged; regularized filter "
        "ascent from gray); course: the ML2020 HW5 sample code's (|d CE-loss / d x| per channel, "
        "min-max per image; stock lime on logits, 1000 samples, seed 16; Adam from the image, "
        "lr 0.1, 100 steps). --preset hw5-2020 implies course; captions say which",
        choices=(OURS, COURSE),
    )
    lime_samples: int = option(
        1000,
        "most LIME samples per image (default 1000): foldover Hadamard masks (each with its "
        "complement) in rounds of 100, at least 400, until as precise as stock lime's 1000 "
        "independent samples (sandwich estimate) and the 5th weight stands >= 1 standard error "
        "above the next three (bench/RESULTS.md: against stock lime's 1000)",
        type=int,
        positive=True,
    )
    adaptive: bool = option(
        True,
        "spend the full caps instead of stopping each method once it has converged",
        flags=("--no-adaptive",),
        negate=True,
    )
    smooth_samples: int = option(
        50,
        "most SmoothGrad samples (default 50): rounds of 10 noisy copies until the two "
        "half-averages predict a correlation >= 0.98 with the exact expectation "
        "(Spearman-Brown; bench/RESULTS.md: against 200 samples)",
        type=int,
        positive=True,
    )
    smooth_sigma: float = option(
        0.15,
        "SmoothGrad noise std as a fraction of each image's range (default 0.15)",
        type=float,
        positive=True,
    )
    smooth_sigmas: tuple[float, ...] = option(
        (),
        "also SmoothGrad at each of these noise stds (fractions of the value range), one row "
        "each in figure q4_smoothgrad_sigma (default none; --preset hw5-2020: 0.15,0.75,1,2,3,4)",
        type=floats,
    )
    ig_steps: int = option(
        32,
        "most Integrated Gradients gradients per image (default 32): 4 equal cells of the "
        "path (5 gradients), then rounds halving the worse half of each image's cells by their "
        "exact error (all gradients kept) until the completeness error is <= 1%% "
        "(bench/RESULTS.md: against 300 steps)",
        type=int,
        positive=True,
    )
    ig_baseline: str = option(
        "black", "Integrated Gradients baseline (default black)", choices=("black", "blur")
    )
    shap: bool = option(
        False,
        "also SHAP over LIME's superpixels, figure q4_shap (off by default: on the full-size "
        "model it costs about as much as LIME again; --preset hw5-2020 turns it on)",
        switch=True,
    )
    shap_evaluations: int = option(
        1000,
        "most SHAP model evaluations per image (default 1000): antithetic permutation pairs of "
        "LIME's superpixels in rounds of 2, at least 4 pairs whatever the cap, until the top 5 "
        "values stand >= 1 standard error above the next three (bench/RESULTS.md: SHAP)",
        type=int,
        positive=True,
    )
    cam_layer: str | None = option(
        None,
        "layer for Grad-CAM/LayerCAM (default: the last conv block's ReLU, cnn.18 for the HW3 "
        "Classifier)",
    )
    cam_targets: str = option(
        "pred",
        "classes for the CAM figures: pred, label, all, or indices like 0,3 (default pred)",
    )
    feature_layer: str | None = option(
        None, "layer for the feature-map grid (default: the CAM layer)"
    )
    dream_layer: str | None = option(
        None, "layer DeepDream amplifies (default: a middle conv block)"
    )
    dream_images: int = 3
    eval_limit: int | None = option(
        None,
        "evaluate the confusion matrix on a stratified subset of this many validation images "
        "(default: all)",
        type=int,
        positive=True,
    )
    trust: bool = option(
        True,
        "skip the trust checks (deletion/insertion, randomization, pointing)",
        flags=("--no-trust",),
        negate=True,
    )
    deletion_steps: int = 16
    randomize_top: int = 5
    randomize_sampled: bool = True  # also re-run SmoothGrad and IG on the randomized model
    batch_size: int = option(64, "images per model call (default 64)", type=int, positive=True)
    device: str = option("auto", "cpu, cuda, or auto (a GPU when present)")
    threads: int | None = option(
        None,
        "torch intra-op threads (default: torch's choice); a grader's machine is a different "
        "count, and `hw5.py verify` compares two runs",
        RUN,
        type=int,
        positive=True,
    )
    budget: float | None = option(
        None,
        "finish within SECONDS: plan the work to fit, cut the cheapest-to-lose parts first and "
        "name them in the manifest (hw5.sh: 540)",
        RUN,
        type=float,
        positive=True,
    )
    replay: Path | None = option(  # noqa: RUF009 (a Path is immutable)
        None,
        "rerun with exactly the decisions a manifest.json records (samples and steps per "
        "image, filters and their redos, the budget's cuts, the stages skipped) instead of "
        "deciding them again: figures reproduce on a slower machine or one whose floats round "
        "differently (hw5.sh passes submitted/manifest.json beside it when that file exists)",
        RUN,
        type=Path,
        metavar="MANIFEST",
    )
    skip_stages: tuple[str, ...] = ()  # stages the budget planner cut
    command: str = ""


def options() -> list[tuple[str, Option, object]]:
    """(field name, option, default) of every RunConfig field set from the command line."""
    return [
        (f.name, f.metadata["option"], f.default)
        for f in fields(RunConfig)
        if "option" in f.metadata
    ]
