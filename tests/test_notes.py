"""--notes: markdown sections ## Q1 ... ## Q4 parsed into paragraphs; an unknown section or
figure name is one error line and exit 2, before any stage runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hw5lib import cli
from hw5lib.errors import UserError
from hw5lib.report.notes import Reference, check_references, parse_notes, unproduced
from tests.test_cli import LIGHT, assert_one_line_error


def test_sections_split_into_paragraphs_in_order() -> None:
    notes = parse_notes(
        "# Title\n\n## Q2. Filters\none\ntwo\n\n- item a\n- item b\n\n## q1\nfirst\n", "N.md"
    )
    assert notes.sections == {"Q2": ("one two", "- item a\n- item b"), "Q1": ("first",)}


def test_figure_names_are_found_with_their_lines() -> None:
    notes = parse_notes("## Q1\nsee q1_saliency and\nq2_activations_cnn_2.\n", "N.md")
    assert notes.references == (Reference(2, "q1_saliency"), Reference(3, "q2_activations_cnn_2"))
    check_references(notes, ["q1_saliency", "q2_activations_cnn_2"])
    assert unproduced(notes, ["q1_saliency"]) == [Reference(3, "q2_activations_cnn_2")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("## Q1\nok\n\n## Q7\nno\n", "N.md line 4: unknown section '## Q7' (sections: ## Q1,"),
        ("## Background\n", "N.md line 1: unknown section '## Background'"),
        ("intro\n## Q1\n", "N.md line 1: text above the first section (## Q1)"),
    ],
)
def test_unknown_section_or_stray_text_names_its_line(text: str, message: str) -> None:
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_notes(text, "N.md")


def test_unknown_figure_names_the_line_and_the_figures() -> None:
    notes = parse_notes("## Q1\n\nq1_saliency is fine,\nq1_salency is not\n", "N.md")
    with pytest.raises(UserError) as err:
        check_references(notes, ["q1_saliency", "q3_lime"])
    assert (
        str(err.value) == "N.md line 4: no figure named q1_salency (figures: q1_saliency, q3_lime)"
    )


def notes_run(tmp_path: Path, data: Path, ckpt: Path, text: str) -> tuple[int, Path]:
    notes, out = tmp_path / "NOTES.md", tmp_path / "out"
    notes.write_text(text)
    argv = ["report", str(data), str(out), "--checkpoint", str(ckpt), "--notes", str(notes)]
    return cli.main([*argv, *LIGHT, "--quiet"]), out


def test_cli_unknown_section_is_one_line_and_exit_2(
    tmp_path: Path, small_sample, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = notes_run(tmp_path, small_sample.root, tiny_checkpoint, "## Q1\nok\n## Q7\n")
    assert_one_line_error(code, capsys.readouterr().err, "NOTES.md line 3: unknown section")
    assert not out.exists()  # checked with the other options, before anything is loaded


def test_cli_unknown_figure_is_one_line_and_exit_2_before_any_stage(
    tmp_path: Path, small_sample, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "## Q2\nq2_filters and q2_activations_cnn_2 are planned.\n\n## Q4\nq4_gradcam\n"
    code, out = notes_run(tmp_path, small_sample.root, tiny_checkpoint, text)
    err = capsys.readouterr().err
    assert_one_line_error(code, err, "NOTES.md line 5: no figure named q4_gradcam (figures: ")
    assert "q4_grad_cam" in err and "q2_activations_cnn_2" in err
    assert not out.exists() or not list(out.iterdir())
