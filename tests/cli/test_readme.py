"""The README's "First steps" work verbatim on the built-in model: each line is run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from headatlas.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def first_steps() -> list[list[str]]:
    """The commands between the README's ``<!-- first-steps -->`` markers, as argument lists."""
    block = re.search(r"<!-- first-steps -->(.*?)<!-- /first-steps -->", README.read_text(), re.S)
    assert block, "README.md has no <!-- first-steps --> block"
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip().startswith("headatlas ")]
    return [shlex.split(line)[1:] for line in lines]


def test_the_first_steps_section_runs_verbatim(tmp_path, monkeypatch):
    steps = first_steps()
    assert [s[0] for s in steps] == ["info", "detect", "niah-eval", "report"]
    monkeypatch.chdir(tmp_path)  # the README's relative runs/ paths land in a fresh folder
    for args in steps:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output, result.exception)
    assert "total heads" in CliRunner().invoke(app, steps[0]).output
    assert (tmp_path / "runs" / "first" / "head_scores.json").is_file()
    assert (tmp_path / "runs" / "first-niah" / "summary.md").is_file()
    html = (tmp_path / "runs" / "first" / "report.html").read_text()
    assert "organism" in html
