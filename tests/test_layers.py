"""`hw5.py layers`: the indexed table a student uses to pick layers the way the course does."""

import pytest

from hw5lib.cli import main
from hw5lib.errors import UserError
from hw5lib.model.hooks import hook_count
from hw5lib.model.layers import layer_table, resolve_layer
from model import Classifier


def test_layer_table_lists_cnn15_as_the_fourth_block_maxpool() -> None:
    model = Classifier()
    rows = {name: (kind, shape) for name, kind, shape in layer_table(model, (3, 128, 128))}
    assert rows["cnn.15"] == ("MaxPool2d", "512x8x8")
    assert rows["cnn.18"] == ("ReLU", "512x8x8")
    assert rows["fc.4"] == ("Linear", "11")
    assert resolve_layer(model, "15")[1] is model.cnn[15] is resolve_layer(model, "cnn.15")[1]
    assert hook_count(model) == 0


def test_layer_table_removes_hooks_when_forward_fails() -> None:
    model = Classifier(widths=(4, 8, 8, 8, 8), hidden=(16, 16), input_size=32)
    with pytest.raises(UserError, match=r"your model's forward raised at model\.py:\d+: Runtime"):
        layer_table(model, (3, 20, 20))  # wrong input size: a pool gets a 1x1 map
    assert hook_count(model) == 0


def test_layers_command_prints_course_indices(capsys) -> None:
    assert main(["layers"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("cnn.15 "))
    assert "cnn[15]" in line and "MaxPool2d" in line
