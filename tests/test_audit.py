"""hw5.py audit end to end on the small sample set: audit.json with every image's prediction and
each class's strategies, the shards reused by a second run (same bytes), and one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hw5lib.cli import main
from hw5lib.inputs.sample import SampleInfo

ROOT = Path(__file__).resolve().parent.parent


def audit(small_sample: SampleInfo, checkpoint: Path, out: Path, *extra: str) -> int:
    argv = ["audit", str(small_sample.root), str(out), "--checkpoint", str(checkpoint)]
    return main([*argv, "--quiet", "--device", "cpu", *extra])


def test_audit_writes_every_image_and_each_class_and_reuses_its_shards(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "audit"
    assert audit(small_sample, tiny_checkpoint, out, "--shard-size", "8") == 0
    record = json.loads((out / "audit.json").read_text())
    validation = sorted(p.name for p in (small_sample.root / "validation").iterdir())
    assert [i["id"] for i in record["images"]] == validation  # every image, in order
    assert record["data"]["split"] == "validation" and record["data"]["skipped"] == []
    assert len(record["shards"]) == -(-len(validation) // 8)
    assert record["object_masks"] is True  # the sample set's masks/ were found
    names = [c["name"] for c in record["classes"]]
    assert names == list(small_sample.classes)  # two labelled images per class
    for c in record["classes"]:
        assert sorted(m for k in c["clusters"] for m in k["members"]) == list(range(c["size"]))
        truth = [i for i in record["images"] if i["id"] in c["ids"]]
        hits = sum(i["pred"] == i["label"] for i in truth) / len(truth)
        assert c["accuracy"] == pytest.approx(hits, abs=1e-4)
    assert "audited" in capsys.readouterr().out

    # a second run computes nothing: the shards' keys match; audit.json is the same bytes
    first = (out / "audit.json").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    assert audit(small_sample, tiny_checkpoint, out, "--shard-size", "8") == 0
    assert (out / "audit.json").read_bytes() == first
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == stamps


def test_audit_mistakes_are_one_line(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert audit(small_sample, tiny_checkpoint, tmp_path / "a", "--cluster", "layer_cam") == 2
    assert "--cluster layer_cam: not among --maps" in capsys.readouterr().err
    assert audit(small_sample, tmp_path / "none.pt", tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.pt is not a file" in err


def test_sampled_maps_record_their_samples_and_do_not_depend_on_the_shards(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # LIME and SHAP by name: each image draws from its own stream seeded alike, so shards of 3
    # and of 11 give the same maps and counts; the counts are the rules' (LIME's floor of 400
    # samples where it stopped early, SHAP's of 8 permutations) and audit.json records them.
    runs = {}
    for size in ("3", "11"):
        out = tmp_path / size
        extra = ("--split", "testing", "--maps", "saliency,shap,lime", "--shard-size", size)
        assert audit(small_sample, tiny_checkpoint, out, *extra) == 0
        runs[size] = json.loads((out / "audit.json").read_text())
        with np.load(sorted((out / "shards").glob("*.npz"))[0]) as first:
            assert (first["map_shap"] >= 0).all() and (first["map_lime"] >= 0).all()
    maps = {
        size: [np.load(f)[f"map_{m}"] for f in sorted((tmp_path / size / "shards").glob("*.npz"))
               for m in ("shap", "lime")]
        for size in runs
    }  # fmt: skip
    assert all(len(v) for v in maps.values())
    shap3 = np.concatenate(maps["3"][0::2])
    assert np.array_equal(shap3, maps["11"][0]) and np.array_equal(
        np.concatenate(maps["3"][1::2]), maps["11"][1]
    )
    a, b = runs["3"], runs["11"]
    # (the exact maps' batches differ with the shard size, so only the sampled ones compare)
    assert [(i["id"], i["samples"]) for i in a["images"]] == [
        (i["id"], i["samples"]) for i in b["images"]
    ]
    assert a["settings"]["caps"] == {"lime": 1000, "shap": 1000}
    for image in a["images"]:
        assert 400 <= image["samples"]["lime"] <= 1000
        assert image["samples"]["shap"] >= 8


def test_an_audit_killed_half_way_resumes_to_the_same_bytes(
    small_sample: SampleInfo, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    extra = ["--maps", "saliency,shap", "--shard-size", "4"]
    killed = tmp_path / "killed"
    argv = [sys.executable, str(ROOT / "hw5.py"), "audit", str(small_sample.root), str(killed),
            "--checkpoint", str(tiny_checkpoint), "--quiet", "--device", "cpu", *extra]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = killed / "shards"
    while proc.poll() is None and not list(shards.glob("0000[1-9]-*.npz")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no clean-up: a half-written shard stays a temp file
    proc.wait()
    done = sorted(p.name for p in shards.glob("*.npz"))
    assert 0 < len(done) < 6 and not (killed / "audit.json").exists()  # 22 images: 6 shards

    assert audit(small_sample, tiny_checkpoint, killed, *extra) == 0
    whole = tmp_path / "whole"
    assert audit(small_sample, tiny_checkpoint, whole, *extra) == 0
    for name in ["audit.json", *(f"shards/{p.name}" for p in (whole / "shards").iterdir())]:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    assert sorted(p.name for p in shards.iterdir()) == sorted(
        p.name for p in (whole / "shards").iterdir()
    )  # no temp file left
