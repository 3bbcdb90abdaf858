"""Every command that writes a run refuses a rerun into the same --out with other settings (exit 2, one line,
nothing changed), and starts over with --overwrite where it has one.

Each command runs once on the built-in model with a tiny grid; the rerun changes one setting of the run's
identity (:func:`headatlas.config.run_identity`).
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from headatlas.cli import app
from headatlas.heads import HeadScores


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    path = tmp_path_factory.mktemp("scores") / "head_scores.json"
    HeadScores(torch.rand(4, 32, generator=torch.Generator().manual_seed(0)), meta={"model": "organism"}).save(path)
    return path


def _cases(scores):
    heads = ["--heads", f"rh={scores}"]
    return {
        "niah-eval": (["niah-eval", "--model", "organism", *heads, "--top-k", "4", "--lengths", "128",
                       "--depths", "0.5", "--per-cell", "1", "--max-new-tokens", "4", "--no-progress"],
                      ["--top-k", "5"], True),
        "kv-compress": (["kv-compress", "--model", "organism", "--heads", str(scores), "--budgets", "1",
                         "--lengths", "128", "--depths", "0.5", "--per-cell", "1", "--random-seeds", "0",
                         "--max-new-tokens", "4", "--no-progress"], ["--top-k", "3"], True),
        "decore": (["decore", "--model", "organism", "--heads", str(scores), "--task", "conflict", "--n", "2",
                    "--lengths", "128", "--random-seeds", "0", "--max-new-tokens", "4", "--no-progress"],
                   ["--alpha", "2"], True),
        "detect": (["detect", "--model", "organism", "--lengths", "128", "--depths", "0.5", "--per-cell", "1",
                    "--max-new-tokens", "4", "--no-progress", "--table-rows", "0"], ["--seed", "1"], False),
    }


@pytest.mark.parametrize("command", ["niah-eval", "kv-compress", "decore", "detect"])
def test_a_rerun_with_other_settings_is_refused_and_changes_nothing(command, scores, tmp_path):
    args, change, has_overwrite = _cases(scores)[command]
    out = tmp_path / "run"
    first = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert first.exit_code in (0, 1), first.output  # 1: detect found no retrieval (random weights are not needed)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    again = CliRunner().invoke(app, [*args, *change, "--out", str(out)])
    assert again.exit_code == 2, again.output
    lines = [line for line in again.stderr.splitlines() if line.startswith(f"{command}: ")]
    assert len(lines) == 1 and change[0] in lines[0] and "Traceback" not in again.output, again.stderr
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    if has_overwrite:
        fresh = CliRunner().invoke(app, [*args, *change, "--out", str(out), "--overwrite"])
        assert fresh.exit_code == 0, fresh.output
