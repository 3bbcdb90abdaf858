"""The before/after report (on a stand-in task module) and the `retmask` commands end to end on a tiny model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from headatlas.heads import HeadScores
from headatlas.masking import read_ablation
from headatlas.retmask.evaluate import RetMaskEvalConfig, evaluate_models, format_table
from headatlas.runs import read_jsonl


def stand_in_tasks():
    """The organism task API (make_eval_set, exact_match_accuracy) over toy examples: next-token argmax = answer."""
    calls = []

    def make_eval_set(task, n, seed, lengths=None, langs=None):
        calls.append((task, n, seed, lengths))
        g = torch.Generator().manual_seed(seed + len(task))
        return [SimpleNamespace(task=task, prompt=" ".join(f"w{j}" for j in torch.randint(0, 80, (6,), generator=g).tolist()),
                                answer=f"w{int(torch.randint(0, 80, (1,), generator=g))}") for _ in range(n)]

    def exact_match_accuracy(model, tokenizer, examples, batch_size):
        hits = 0
        for ex in examples:
            ids = tokenizer(ex.prompt, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                pred = model(input_ids=ids).logits[0, -1].argmax().item()
            hits += tokenizer.convert_ids_to_tokens(pred) == ex.answer
        return hits / len(examples)

    return SimpleNamespace(make_eval_set=make_eval_set, exact_match_accuracy=exact_match_accuracy, calls=calls)


def test_report_compares_with_the_base_and_carries_concentration(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    path, model, tokenizer = tiny_checkpoint
    tasks = stand_in_tasks()
    other = AutoModelForCausalLM.from_config(model.config)  # a different model (fresh random init)
    config = RetMaskEvalConfig(suites=("multikey_long", "parametric"), n_per_task=30, long_lengths=(512,))
    scores = HeadScores(torch.rand(3, 8, generator=torch.Generator().manual_seed(0)))
    report = evaluate_models({"base": str(path), "other": (other.eval(), tokenizer)}, config, scores=scores,
                             out_dir=tmp_path, tasks=tasks)
    assert tasks.calls == [("multikey", 30, config.seed, [512]), ("parametric", 30, config.seed, None)]
    res = report["results"]
    assert res["base"]["parametric"]["delta"] == 0.0
    assert res["other"]["multikey_long"]["delta"] == pytest.approx(
        res["other"]["multikey_long"]["accuracy"] - res["base"]["multikey_long"]["accuracy"])
    assert set(report["concentration"]) >= {"gini", "top_10_share"}
    assert json.loads((tmp_path / "retmask_eval.json").read_text())["results"] == res
    table = format_table(report)
    assert table.splitlines()[0].split() == ["suite", "base", "other"] and "multikey_long" in table
    with pytest.raises(ValueError, match="unknown suites"):
        RetMaskEvalConfig(suites=("nope",))


def test_cli_ablate_pairs_train(tiny_checkpoint, tmp_path):
    from headatlas.commands.retmask import retmask_app

    path, _, _ = tiny_checkpoint
    scores = torch.zeros(3, 8)
    scores[2, 1], scores[1, 3], scores[0, 5] = 0.9, 0.5, 0.2
    HeadScores(scores, {"model": str(path)}).save(tmp_path / "head_scores.json")  # made for this model
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1} w{i + 2} w{i + 3}"}) + "\n" for i in range(6)))
    runner = CliRunner()

    r = runner.invoke(retmask_app, ["ablate", "--model", str(path), "--heads", str(tmp_path / "head_scores.json"),
                                    "--top-k", "2", "--out", str(tmp_path / "ablated")])
    assert r.exit_code == 0, r.output
    assert [str(h) for h in read_ablation(tmp_path / "ablated")] == ["1.3", "2.1"]

    r = runner.invoke(retmask_app, ["pairs", "--model", str(path), "--heads", str(tmp_path / "head_scores.json"),
                                    "--threshold", "0.1", "--prompts", str(prompts), "--out", str(tmp_path / "p.jsonl"),
                                    "--max-new-tokens", "5", "--independent-seeds", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    stats = json.loads((tmp_path / "p.stats.json").read_text())
    assert stats["heads"] == ["0.5", "1.3", "2.1"] and stats["n_prompts"] == 6 and stats["n_pairs"] >= 2
    before = (tmp_path / "p.jsonl").read_text()
    from headatlas.cli import app  # the whole CLI: quiet libraries unless --verbose, one-line refusals

    r = runner.invoke(app, ["retmask", "pairs", "--model", str(path), "--heads", str(tmp_path / "head_scores.json"),
                            "--top-k", "1", "--prompts", str(prompts), "--out", str(tmp_path / "p.jsonl"),
                            "--max-new-tokens", "5", "--independent-seeds", "--batch-size", "4"])
    # other heads: a refused resume, exit 2 as in every command
    assert r.exit_code == 2 and "--heads (masked)" in r.output and "Traceback" not in r.output
    assert (tmp_path / "p.jsonl").read_text() == before  # and the finished pairs are kept

    r = runner.invoke(app, ["retmask", "train", "--model", str(path), "--pairs", str(tmp_path / "p.jsonl"),
                            "--out", str(tmp_path / "trained"), "--use-lora", "--max-steps", "2",
                            "--learning-rate", "1e-3", "--per-device-train-batch-size", "2",
                            "--gradient-accumulation-steps", "1", "--no-gradient-checkpointing"])
    assert r.exit_code == 0, r.output
    assert "{'loss'" not in r.output and "Warning" not in r.output  # no raw training dicts, no library warnings
    assert "examples/s" not in r.output and "it/s" not in r.output  # nor the libraries' tqdm bars
    run = json.loads((tmp_path / "trained" / "retmask_run.json").read_text())
    assert run["n_pairs"] == len(list(read_jsonl(tmp_path / "p.jsonl")))
    assert (tmp_path / "trained" / "adapter_config.json").exists()

    r = runner.invoke(retmask_app, ["pairs", "--model", str(path), "--heads", str(tmp_path / "head_scores.json"),
                                    "--top-k", "1", "--threshold", "0.1", "--prompts", str(prompts),
                                    "--out", str(tmp_path / "q.jsonl")])
    assert r.exit_code != 0 and "not both" in r.output and not (tmp_path / "q.jsonl").exists()
