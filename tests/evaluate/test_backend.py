"""The masked-hf lm-eval backend: equal to hf without heads, equal to masked_heads with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from headatlas import Head, HeadScoreFileError, HeadScores, masked_heads
from headatlas.evaluate.fixtures import TASKS_DIR
from headatlas.evaluate.lm_eval_backend import MaskedHFLM
from headatlas.selection import HeadSelection, random_heads

HEADS = [Head(1, 3), Head(2, 1), Head(2, 5)]


def _run(lm, tasks, tm):
    res = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=4, bootstrap_iters=0,
                          gen_kwargs={"max_gen_toks": 8}, log_samples=True)  # fmt: skip
    return {t: [(s["doc_id"], s["filter"], s["resps"]) for s in res["samples"][t]] for t in tasks}, res


def test_no_heads_equals_lm_eval_hf(tiny_dir, local_tasks, organism_standin):
    tm = TaskManager(include_path=[str(TASKS_DIR), str(local_tasks)], include_defaults=False)
    tasks = ["tiny_mc", "tiny_rolling", "organism_mono"]  # loglikelihood, loglikelihood_rolling, generate_until
    ref, ref_res = _run(HFLM(pretrained=str(tiny_dir), device="cpu", batch_size=1), tasks, tm)
    got, got_res = _run(MaskedHFLM(pretrained=str(tiny_dir), device="cpu", batch_size=1, heads="none"), tasks, tm)
    assert got == ref
    for t in tasks:
        assert got_res["results"][t] == ref_res["results"][t]
    assert got_res["config"]["masked_heads"] == []


def test_masked_generations_equal_masked_heads_directly(tiny_model):
    model, tok = tiny_model
    lm = MaskedHFLM.from_model(model, tok, heads=HEADS, mode="zero", batch_size=1)
    contexts = ["Note: the key opens Berlin. Question: what does the key open? Answer:", "Die Antwort lautet", "Q: 7 + 5?"]
    gen = {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}
    reqs = [Instance("generate_until", {}, (c, dict(gen)), i) for i, c in enumerate(contexts)]
    got = lm.generate_until(reqs, disable_tqdm=True)

    def direct(masked: bool) -> list[str]:
        outs = []
        for c in contexts:
            ids = torch.tensor([lm.tok_encode(c)])
            with torch.no_grad(), masked_heads(model, HEADS if masked else [], mode="zero"):
                seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
            text = tok.decode(seq[0, ids.shape[1] :], skip_special_tokens=True)
            outs.append(text.split("\n")[0].split(tok.eos_token)[0])
        return outs

    assert got == direct(masked=True)
    assert got != direct(masked=False), "masking three sharpened heads must change some generation"


def test_masked_loglikelihoods_equal_masked_heads_directly(tiny_model):
    model, tok = tiny_model
    lm = MaskedHFLM.from_model(model, tok, heads=HEADS, mode="uniform", batch_size=1)
    reqs = [Instance("loglikelihood", {}, ("The capital of Germany is", " Berlin"), 0)]
    (got, _), = lm.loglikelihood(reqs, disable_tqdm=True)
    ctx, cont = lm.tok_encode("The capital of Germany is"), lm.tok_encode(" Berlin")
    ids = torch.tensor([ctx + cont])
    with torch.no_grad(), masked_heads(model, HEADS, mode="uniform"):
        logp = torch.log_softmax(model(ids).logits[0, len(ctx) - 1 : -1], dim=-1)
    assert got == pytest.approx(logp.gather(1, torch.tensor(cont)[:, None]).sum().item(), abs=1e-5)


def test_model_args_as_the_cli_gives_them(tiny_dir, head_files):
    top3 = sorted(HeadScores.load(head_files["rh"]).top_k(3))
    lm = MaskedHFLM.create_from_arg_string(f"pretrained={tiny_dir},heads={head_files['rh']},top_k=3,mode=zero",
                                           {"device": "cpu"})  # fmt: skip
    assert lm.heads == top3 and lm.mode == "zero"
    banned = set(top3) | set(HeadScores.load(head_files["rth"]).top_k(3))
    for seed in range(4):
        args = f"heads=random,top_k=3,random_seed={seed},exclude={head_files['rh']};{head_files['rth']}"
        lm.heads = HeadSelection.parse(args).resolve(3, 8)
        assert lm.heads == random_heads(3, 8, 3, seed, exclude=banned)
    matched = HeadSelection.from_args("random", top_k=3, exclude=str(head_files["rh"]), layer_matched="true").resolve(3, 8)
    assert sorted(h.layer for h in matched) == sorted(h.layer for h in top3) and not set(matched) & set(top3)
    assert HeadSelection.from_args("2-1;0-7").resolve(3, 8) == [Head(0, 7), Head(2, 1)]
    with pytest.raises(ValueError, match="read as a number"):
        HeadSelection.from_args(2.1)


def test_head_file_for_another_model_raises(tiny_model, tmp_path):
    model, tok = tiny_model
    wrong = HeadScores(torch.rand(4, 8), {"model": "bigger"}).save(tmp_path / "wrong.json")
    with pytest.raises(HeadScoreFileError, match="4 layers x 8 heads"):
        MaskedHFLM(pretrained=model, tokenizer=tok, heads=str(wrong))
    with pytest.raises(ValueError, match="does not exist"):
        MaskedHFLM.from_model(model, tok, heads=[Head(3, 0)])


REAL = ["xquad_de", "mgsm_native_cot_de", "mmlu_prox_de_biology", "mlqa_de_de"]


def test_lm_eval_cli_runs_masked_hf_on_real_task_names(tiny_dir, head_files, bench_fixtures, tmp_path):
    """`headatlas lm-eval run ...`: lm-eval's CLI, built-in tasks indexed too,
    so the fixture's tasks override lm-eval's own of the same names (xquad_de: lm-eval's cannot even load
    under transformers 5)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = [sys.executable, "-m", "headatlas.cli", "lm-eval", "run", "--model", "masked-hf",
            "--model_args", f"pretrained={tiny_dir},heads={head_files['rth']},top_k=2,mode=zero",
            "--tasks", ",".join(REAL), "--include_path", str(bench_fixtures.include_path), "--limit", "1",
            "--device", "cpu", "--gen_kwargs", "max_gen_toks=4", "--output_path", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["config"]["masked_heads"] == ["1.3", "1.4"]
    assert "f1,none" in results["results"]["xquad_de"]
    for task in REAL:  # each real name ran on the fixture, not on lm-eval's hub dataset
        assert results["configs"][task]["dataset_path"] == "parquet", task


def test_lm_eval_passthrough_command_reaches_lm_eval():
    from typer import Typer
    from typer.testing import CliRunner

    from headatlas.commands.compare import LM_EVAL_CONTEXT, lm_eval_command

    app = Typer()
    app.command("lm-eval", context_settings=LM_EVAL_CONTEXT)(lm_eval_command)
    app.command("other")(lambda: None)  # two commands, as on the real app, so "lm-eval" is a subcommand
    run = CliRunner().invoke(app, ["lm-eval", "run", "--help"])
    assert run.exit_code == 0 and "--model_args" in run.output
