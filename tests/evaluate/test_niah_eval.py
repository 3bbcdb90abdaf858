"""Masked NIAH evaluation: grid cells, heatmaps, resume, and answers equal to generate() under masked_heads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer import Typer
from typer.testing import CliRunner

from headatlas import Head, HeadScores, HeadSelection, masked_heads
from headatlas.commands.niah_eval import niah_eval_command
from headatlas.evaluate.conditions import Condition
from headatlas.evaluate.niah_eval import answer_contains, evaluate_niah
from headatlas.niah import build_grid, load_haystack, load_needles
from headatlas.organism import ORGANISM_PATH
from headatlas.prefix import MIN_SHARED_PREFIX, plan_batches
from headatlas.runs import ResumeMismatchError, read_jsonl
from headatlas.selection import random_heads, share_of_heads


def test_answer_scoring():
    assert answer_contains("Eat a sandwich and sit in Dolores Park on a sunny day.", "eat a sandwich and sit in  dolores park")
    assert not answer_contains("Go home.", "eat a sandwich")
    assert not answer_contains("anything", "")


def test_grid_heatmaps_resume_and_masked_answers(tiny_model, head_files, tmp_path):
    model, tok = tiny_model
    prompts = build_grid(tok, load_haystack("en"), load_needles(lang="en")[:1], [160, 240], [0.0, 1.0])
    heads = tuple(sorted(HeadScores.load(head_files["rh"]).top_k(3)))
    conditions = [Condition("unmasked"), Condition("rh", HeadSelection(heads=heads), heads, head_set="rh")]
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
    more = conditions + [Condition("random-s0", HeadSelection(random_seed=0, top_k=1), (Head(0, 0),))]
    assert evaluate_niah(model, tok, prompts, more, tmp_path, max_new_tokens=8, progress=False).computed == 4
    # other settings in the same folder: refused, unless overwriting (which starts afresh)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ResumeMismatchError, match="--mode: 'zero' .recorded. vs 'uniform' .now."):
        evaluate_niah(model, tok, prompts, conditions, tmp_path, mode="uniform", max_new_tokens=8, progress=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written
    fresh = evaluate_niah(model, tok, prompts[:1], conditions[:1], tmp_path, mode="uniform", max_new_tokens=8,
                          progress=False, overwrite=True)  # fmt: skip
    assert fresh.computed == 1 and len(list(read_jsonl(tmp_path / "journal.jsonl"))) == 1


@pytest.mark.parametrize("mode", ["zero", "uniform"])
def test_a_shared_prefix_and_batches_give_the_same_answers(tiny_model, head_files, tmp_path, mode):
    """Prompts of one haystack share the tokens before the needle: run once per condition, the answers stay."""
    model, tok = tiny_model
    prompts = build_grid(tok, load_haystack("en"), load_needles(lang="en")[:2], [160, 240], [0.25, 0.5, 1.0])
    plan = plan_batches([p.input_ids for p in prompts], 1, MIN_SHARED_PREFIX)
    assert sum(len(members) for members, n in plan if n > 0) >= len(prompts) // 2  # most prompts share a prefix
    heads = tuple(sorted(HeadScores.load(head_files["rh"]).top_k(3)))
    conditions = [Condition("unmasked"), Condition("rh", HeadSelection(heads=heads), heads, head_set="rh")]
    answers = []
    for name, share, batch in [("plain", False, 1), ("shared", True, 1), ("shared-batched", True, 4)]:
        evaluate_niah(model, tok, prompts, conditions, tmp_path / name, mode=mode, max_new_tokens=8, progress=False,
                      share_prefix=share, batch_size=batch)  # fmt: skip
        journal = read_jsonl(tmp_path / name / "journal.jsonl")
        answers.append({(r["condition"], r["prompt_id"]): r["answer"] for r in journal})
    assert len(answers[0]) == 2 * len(prompts) and answers[0] == answers[1] == answers[2]
    if mode == "zero":  # the mask acts (uniform attention over three heads leaves this tiny model's answers)
        assert any(answers[0][("unmasked", p.prompt_id)] != answers[0][("rh", p.prompt_id)] for p in prompts)
    cells = [(tmp_path / name / "cells.json").read_text() for name in ("plain", "shared", "shared-batched")]
    assert [json.loads(c)["cells"] for c in cells[1:]] == [json.loads(cells[0])["cells"]] * 2


def test_niah_eval_command(tiny_dir, head_files, tmp_path):
    app = Typer()
    app.command()(niah_eval_command)
    args = ["--model", str(tiny_dir), "--heads", f"rh={head_files['rh']}", "--top-k", "3", "--random-seeds", "1",
            "--lengths", "160,240", "--depths", "2", "--max-new-tokens", "6", "--device-map", "cpu",
            "--batch-size", "2", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "| random-s0 | 3 |" in run.output
    summary = json.loads((tmp_path / "cells.json").read_text())["summary"]
    assert [s["condition"] for s in summary] == ["unmasked", "rh", "random-s0"] and all(s["n"] == 16 for s in summary)
    assert (tmp_path / "heatmaps" / "random-s0-vs-unmasked.png").exists()


NO_LM_EVAL = """
import json, sys
sys.modules["lm_eval"] = None  # `import lm_eval` (and any lm_eval.*) now raises ImportError
import torch
torch.set_num_threads(1)
from headatlas import HeadScores
from headatlas.evaluate.niah_eval import NiahEvalConfig, run_niah_eval
out, scores = sys.argv[1], sys.argv[2]
config = NiahEvalConfig(model="organism", out=out, heads={"rh": scores}, random_seeds=1, lengths="256", depths="2",
                        per_cell=1, max_new_tokens=8)
result = run_niah_eval(config, progress=False)
print(json.dumps({"computed": result.computed, "summary": result.summary,
                  "lm_eval": [m for m in sys.modules if m.startswith("lm_eval") and sys.modules[m] is not None]}))
"""


@pytest.mark.skipif(not (ORGANISM_PATH / "model.safetensors").is_file(), reason="no shipped organism checkpoint")
def test_niah_eval_runs_without_lm_eval(tmp_path):
    """niah-eval's whole path (config, conditions, prompts, masking, answers, outputs) never imports lm-eval."""
    cfg = json.loads((ORGANISM_PATH / "config.json").read_text())
    n_layers, n_heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    scores = HeadScores(torch.rand(n_layers, n_heads, generator=torch.Generator().manual_seed(0)))
    path = scores.save(tmp_path / "rh.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", NO_LM_EVAL, str(tmp_path / "out"), str(path)], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    k = share_of_heads(n_layers * n_heads)  # the default K
    assert [(s["condition"], s["k"]) for s in got["summary"]] == [("unmasked", 0), ("rh", k), ("random-s0", k)]
    assert got["computed"] == 3 * got["summary"][0]["n"] and got["lm_eval"] == []
    conditions = json.loads((tmp_path / "out" / "cells.json").read_text())["conditions"]
    assert conditions[1]["heads"] == [str(h) for h in sorted(scores.top_k(k))]
    assert conditions[2]["heads"] == [str(h) for h in random_heads(n_layers, n_heads, k, 0, exclude=scores.top_k(k))]
