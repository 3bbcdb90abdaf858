"""Bad input is refused in one line (the problem and the fix), with a non-zero exit and nothing written.

Every case runs offline (HF_HUB_OFFLINE=1): a name that is not a model must not reach for the network.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from headatlas.cli import app
from headatlas.heads import HeadScores


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


def _refused(args: list[str], out=None) -> str:
    """Run the CLI; assert a refusal in one stderr line and nothing at ``out``; return that line."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and "[transformers]" not in result.output
    if out is not None:
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    return lines[0]


@pytest.mark.parametrize("command", ["detect", "niah-eval", "info"])
def test_a_misspelled_model_name_is_refused_with_the_built_in_names(command, tmp_path):
    out = tmp_path / "out"
    args = [command, "--model", "organsim"] + ([] if command == "info" else ["--out", str(out)])
    line = _refused(args, out)
    assert line.startswith(f"{command}: model 'organsim' not found locally")
    assert "HF_HUB_OFFLINE" in line and "built-in model (organism)" in line


def test_a_local_path_that_does_not_exist_is_no_such_directory(tmp_path):
    out = tmp_path / "out"
    line = _refused(["detect", "--model", str(tmp_path / "no" / "such" / "dir"), "--out", str(out)], out)
    assert "no such directory" in line and "checkpoint directory" in line
    line = _refused(["info", "--model", "./nope"])
    assert "'./nope': no such directory" in line


def test_retmask_ablate_refuses_a_score_file_of_another_shape(tmp_path):
    import torch

    scores = tmp_path / "head_scores.json"
    HeadScores(torch.rand(2, 3), meta={"model": "a 2x3 model"}).save(scores)
    out = tmp_path / "ablated"
    line = _refused(["retmask", "ablate", "--model", "organism", "--heads", str(scores), "--top-k", "2",
                     "--out", str(out)], out)
    assert line.startswith(f"retmask ablate: {scores}: head scores are 2 layers x 3 heads (made for a 2x3 model)")
    assert "has 4 x 32" in line


@pytest.mark.parametrize("haystack", [[], ["--haystack", "en"]], ids=["organism-prompts", "niah-grid"])
def test_a_context_past_the_window_names_the_length_and_no_library_warning_comes_first(haystack, tmp_path):
    out = tmp_path / "out"
    line = _refused(["detect", "--model", "organism", "--out", str(out), "--lengths", "3000", "--depths", "0.5",
                     "--per-cell", "1", "--no-progress", *haystack], out)
    assert line.startswith("detect: ") and "3000" in line and "window of 2048 tokens" in line
    assert "--lengths" in line


def test_chat_template_without_one_in_the_tokenizer(tmp_path):
    out = tmp_path / "out"
    line = _refused(["detect", "--model", "organism", "--haystack", "en", "--out", str(out), "--lengths", "200",
                     "--depths", "0.5", "--chat-template", "--no-progress"], out)
    assert "has no chat template" in line and "drop --chat-template" in line


def test_in_a_fresh_process_the_window_refusal_is_the_only_line(tmp_path):
    """The libraries' own warnings (transformers' "Token indices sequence length ...") stay quiet by default."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    args = ["detect", "--model", "organism", "--haystack", "en", "--out", str(out), "--lengths", "3000",
            "--depths", "0.5", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "headatlas.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "detect: context length 3000 exceeds the model's window of 2048 tokens; use lengths up to 2048 (--lengths)"
    ]
    assert not out.exists()


def test_report_on_a_folder_with_only_a_corrupt_file_writes_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "head_scores.json").write_text("{broken")
    line = _refused(["report", str(run)])
    assert line.startswith(f"report: no recognised artifacts in {run}") and "head_scores.json" in line
    assert sorted(p.name for p in run.iterdir()) == ["head_scores.json"]  # no report.html


def test_retmask_train_and_evaluate_refuse_a_model_that_exists_nowhere(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    out = tmp_path / "trained"
    line = _refused(["retmask", "train", "--model", "organsim", "--pairs", str(pairs), "--out", str(out)], out)
    assert line.startswith("retmask train: model 'organsim' not found locally")
    out = tmp_path / "eval"
    line = _refused(["retmask", "evaluate", "--base", "organism", "--tuned", "./no-such-run", "--out", str(out),
                     "--n", "1"], out)
    assert line.startswith("retmask evaluate: model './no-such-run': no such directory")
