"""The audit catches a model that cheats: one class's images are look-alikes of another's and
most carry a small logo in a corner (tests/planted.py), so the logo is what the model learns
for that class. The audit flags that class's cluster on the corner, and flags nothing of the
same model's clean classes, nor anything of a model trained on the same set without the logo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hw5lib.cli import main
from hw5lib.inputs.datasets import label_of, list_images
from tests.planted import MARKED_CLASS, MARKED_SHARE, marked_sample, train_small


def audited(root: Path, *, mark: bool) -> tuple[dict, list[str]]:
    """audit.json of a model trained on the (marked or clean) set, and the marked file names."""
    info = marked_sample(root / "food", mark=mark)
    checkpoint = train_small(info, root / "model.pt")
    out = root / "audit"
    argv = ["audit", str(info.root), str(out), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--quiet", "--device", "cpu"]) == 0
    own = [p.name for p in list_images(info.root / "validation") if label_of(p) == MARKED_CLASS]
    return json.loads((out / "audit.json").read_text()), own[: round(MARKED_SHARE * len(own))]


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str]]:
    return audited(tmp_path_factory.mktemp("marked"), mark=True)


def test_the_marked_class_cluster_is_flagged_on_the_corner(marked: tuple[dict, list[str]]) -> None:
    record, stamped = marked
    name = record["model"]["classes"][MARKED_CLASS]
    assert record["clustered"] == "saliency"
    flags = [f for f in record["flagged"] if f["cluster"] is not None]
    assert [f["class"] for f in flags] == [name], record["flagged"]
    assert "corner" in flags[0]["reason"]
    cls = next(c for c in record["classes"] if c["name"] == name)
    cluster = cls["clusters"][flags[0]["cluster"]]
    ids = [cls["ids"][i] for i in cluster["members"]]
    # the flagged strategy is the logo's: its images are the stamped ones, and it is the
    # accurate one (the logo is what tells this class from its look-alike)
    assert sum(i in stamped for i in ids) >= 0.9 * len(ids) >= 0.9 * 0.8 * len(stamped)
    rest = [k for k in cls["clusters"] if k is not cluster]
    assert all(cluster["accuracy"] > k["accuracy"] for k in rest)
    # no class but the marked one is flagged, by cluster or as a whole
    assert {f["class"] for f in record["flagged"]} == {name}


def test_a_model_trained_without_the_mark_is_not_flagged(tmp_path: Path) -> None:
    record, _ = audited(tmp_path, mark=False)
    assert record["flagged"] == []
