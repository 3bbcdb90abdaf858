"""Masked NIAH evaluation: grid cells, heatmaps, resume, and answers equal to generate() under masked_heads."""

from __future__ import annotations

import json

import pytest
import torch
from typer import Typer
from typer.testing import CliRunner

from retrieval_heads import HeadScores, masked_heads
from retrieval_heads.artifacts import read_jsonl
from retrieval_heads.commands.niah_eval import niah_eval_command
from retrieval_heads.evaluate.compare import Condition, ResumeMismatchError
from retrieval_heads.evaluate.niah_eval import answer_contains, evaluate_niah
from retrieval_heads.niah import build_grid, load_haystack, load_needles


def test_answer_scoring():
    assert answer_contains("Eat a sandwich and sit in Dolores Park on a sunny day.", "eat a sandwich and sit in  dolores park")
    assert not answer_contains("Go home.", "eat a sandwich")
    assert not answer_contains("anything", "")


def test_grid_heatmaps_resume_and_masked_answers(tiny_model, head_files, tmp_path):
    model, tok = tiny_model
    prompts = build_grid(tok, load_haystack("en"), load_needles(lang="en")[:1], [160, 240], [0.0, 1.0])
    heads = tuple(sorted(HeadScores.load(head_files["rh"]).top_k(3)))
    conditions = [Condition("unmasked", "unmasked"), Condition("rh", "heads", heads, head_set="rh")]
    result = evaluate_niah(model, tok, prompts, conditions, tmp_path, max_new_tokens=8, progress=False)
    assert result.computed == 8
    cells = json.loads((tmp_path / "cells.json").read_text())
    assert [(c["condition"], c["length"], c["depth"], c["n"]) for c in cells["cells"]][:4] == [
        ("unmasked", 160, 0.0, 1), ("unmasked", 160, 1.0, 1), ("unmasked", 240, 0.0, 1), ("unmasked", 240, 1.0, 1)
    ]
    assert cells["conditions"][1]["heads"] == [str(h) for h in heads]
    for name in ("unmasked.png", "rh.png", "rh-vs-unmasked.png"):
        assert (tmp_path / "heatmaps" / name).stat().st_size > 0

    journal = list(read_jsonl(tmp_path / "journal.jsonl"))
    assert len(journal) == 8 and {r["condition"] for r in journal} == {"unmasked", "rh"}
    for r in journal:
        assert 0.0 <= r["rouge1"] <= 1.0 and r["exact_match"] in (0, 1)

    # the masked answers are what generate() gives inside masked_heads, cut at the first line
    for p in prompts:
        ids = torch.tensor([p.input_ids])
        with torch.no_grad(), masked_heads(model, heads, mode="zero"):
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
        text = tok.decode(seq[0, ids.shape[1] :], skip_special_tokens=True).lstrip().split("\n")[0].strip()
        logged = next(r for r in journal if r["condition"] == "rh" and r["prompt_id"] == p.prompt_id)
        assert logged["answer"] == text

    # rerun: nothing recomputed, same cells; a new condition only adds its own prompts
    again = evaluate_niah(model, tok, prompts, conditions, tmp_path, max_new_tokens=8, progress=False)
    assert again.computed == 0 and again.cells == result.cells
    more = conditions + [Condition("random-s0", "random", ((0, 0),), seed=0)]
    assert evaluate_niah(model, tok, prompts, more, tmp_path, max_new_tokens=8, progress=False).computed == 4
    # other settings in the same folder: refused, unless overwriting (which starts afresh)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ResumeMismatchError, match="--mode: 'zero' .recorded. vs 'uniform' .now."):
        evaluate_niah(model, tok, prompts, conditions, tmp_path, mode="uniform", max_new_tokens=8, progress=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written
    fresh = evaluate_niah(model, tok, prompts[:1], conditions[:1], tmp_path, mode="uniform", max_new_tokens=8,
                          progress=False, overwrite=True)  # fmt: skip
    assert fresh.computed == 1 and len(list(read_jsonl(tmp_path / "journal.jsonl"))) == 1


def test_niah_eval_command(tiny_dir, head_files, tmp_path):
    app = Typer()
    app.command()(niah_eval_command)
    args = ["--model", str(tiny_dir), "--heads", f"rh={head_files['rh']}", "--top-k", "3", "--random-seeds", "1",
            "--lengths", "160,240", "--depths", "2", "--max-new-tokens", "6", "--device", "cpu",
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "| random-s0 | 3 |" in run.output
    summary = json.loads((tmp_path / "cells.json").read_text())["summary"]
    assert [s["condition"] for s in summary] == ["unmasked", "rh", "random-s0"] and all(s["n"] == 16 for s in summary)
    assert (tmp_path / "heatmaps" / "random-s0-vs-unmasked.png").exists()
