"""Run files, resume, settings mismatch, the all-fail error, and sharding (explicit and torchrun + gloo)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headatlas.detect import (
    DetectConfig,
    IncompleteRunError,
    NoRetrievalError,
    ResumeMismatchError,
    detect,
    merge_shards,
)
from headatlas.heads import HeadScores
from headatlas.runs import read_jsonl
from tests.detect.detect_helpers import tiny_setup

WORKER = Path(__file__).with_name("shard_worker.py")


def _config(**kw) -> DetectConfig:
    base = dict(max_new_tokens=10, rouge_threshold=0.3, accuracy_threshold=0.3, progress=False, table_rows=0, heatmap=False, batch_size=2)
    return DetectConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def setup():
    return tiny_setup(n=6)


@pytest.fixture(scope="module")
def reference_run(setup, tmp_path_factory):
    model, tokenizer, prompts = setup
    out = tmp_path_factory.mktemp("full")
    return detect(model, tokenizer, prompts, _config(), out), out


def test_run_writes_its_files(setup, tmp_path, capsys):
    model, tokenizer, prompts = setup
    scores = detect(model, tokenizer, prompts, _config(table_rows=5, heatmap=True), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["head_scores.json", "heatmap.png", "run.json", "samples.jsonl"]
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = HeadScores.load(tmp_path / "head_scores.json")
    assert saved.scores.equal(scores.scores) and saved.scores.shape == (3, 8)
    meta = saved.meta
    assert meta["mode"] == "greedy" and meta["dedup"] is False and meta["n_prompts"] == 6
    assert meta["counted_prompts"] + meta["failed_prompts"] == 6 and meta["counted_prompts"] > 0
    assert meta["needle_ids"] == ["needle0", "needle1"] and meta["spec"]["n_layers"] == 3
    assert meta["lengths"] == sorted({p.context_length for p in prompts})
    assert {"torch", "transformers"} <= set(meta["versions"]) and meta["compute_s"] >= 0
    samples = list(read_jsonl(tmp_path / "samples.jsonl"))
    assert [s["prompt_id"] for s in samples] == [p.meta["prompt_id"] for p in prompts]
    first = samples[0]
    assert {"prompt_id", "length", "depth", "needle_id", "response", "rouge", "counted", "events", "span_len"} <= set(first)
    assert all(isinstance(k, str) and "." in k for s in samples for k in s["events"])
    assert "Top 5 retrieval heads" in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_same_scores(setup, reference_run, tmp_path, capsys):
    model, tokenizer, prompts = setup
    full, _ = reference_run
    seen = []

    def interrupt_after_three(record):
        seen.append(record["prompt_id"])
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        detect(model, tokenizer, prompts, _config(), tmp_path, on_sample=interrupt_after_three)
    assert len(list(read_jsonl(tmp_path / "samples.jsonl"))) == 3
    assert not (tmp_path / "head_scores.json").exists()
    assert "interrupted after 3 of 6; rerun the same command to resume" in capsys.readouterr().err
    with open(tmp_path / "samples.jsonl", "a") as fh:  # a crash mid-write leaves a torn line
        fh.write('{"prompt_id": "p0-')
    redone = []
    resumed = detect(model, tokenizer, prompts, _config(batch_size=3), tmp_path, on_sample=lambda r: redone.append(r))
    assert len(redone) == 3 and not set(r["prompt_id"] for r in redone) & set(seen)
    assert "resuming: 3 of 6 done" in capsys.readouterr().err
    assert torch.equal(resumed.scores, full.scores)
    assert len(list(read_jsonl(tmp_path / "samples.jsonl"))) == 6


def test_resuming_with_other_settings_raises(setup, reference_run):
    model, tokenizer, prompts = setup
    _, out = reference_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ResumeMismatchError, match="--dedup: False .recorded. vs True .now."):
        detect(model, tokenizer, prompts, _config(dedup=True), out)
    with pytest.raises(ResumeMismatchError, match="prompts: 6 .recorded. vs 4 .now.") as err:
        detect(model, tokenizer, prompts[:4], _config(), out)
    assert not re.search(r"\b[0-9a-f]{16}\b", str(err.value))  # settings by name, never an opaque hash
    with pytest.raises(ResumeMismatchError, match="--mode: 'greedy' .recorded. vs 'teacher' .now."):
        detect(model, tokenizer, prompts, _config(mode="teacher"), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused before writing anything


def test_resuming_with_other_weights_at_the_same_path_raises(setup, reference_run):
    """A retrained checkpoint at the same path must not be mixed into a finished run's scores."""
    import copy

    model, tokenizer, prompts = setup
    _, out = reference_run
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        retrained.model.layers[0].self_attn.q_proj.weight.mul_(1.01)
    assert retrained.config._name_or_path == model.config._name_or_path
    with pytest.raises(ResumeMismatchError, match="the model's weights differ from the recorded run's"):
        detect(retrained, tokenizer, prompts, _config(), out)


def test_no_retrieval_raises_loudly_and_writes_no_scores(setup, tmp_path, capsys):
    model, tokenizer, prompts = setup
    import copy

    hopeless = copy.deepcopy(prompts)
    for p in hopeless:
        p.needle.answer = "zebra quantum"  # words the model can never emit
    with pytest.raises(NoRetrievalError, match="NO prompt passed") as err:
        detect(model, tokenizer, hopeless, _config(), tmp_path)
    assert "response=" in str(err.value)
    assert not (tmp_path / "head_scores.json").exists()
    assert "NO RETRIEVAL" in capsys.readouterr().err
    assert len(list(read_jsonl(tmp_path / "samples.jsonl"))) == len(prompts)


def test_explicit_shards_merge_to_the_single_run(setup, reference_run, tmp_path):
    model, tokenizer, prompts = setup
    full, _ = reference_run
    assert detect(model, tokenizer, prompts, _config(), tmp_path, shard=(1, 2)) is None
    assert (tmp_path / "samples.rank1.jsonl").exists()
    with pytest.raises(IncompleteRunError, match="3 of 6"):
        merge_shards(tmp_path)
    assert detect(model, tokenizer, prompts, _config(), tmp_path, shard=(0, 2)) is None
    merged = merge_shards(tmp_path, show=0, heatmap=False)
    assert torch.equal(merged.scores, full.scores)
    assert not list(tmp_path.glob("samples.rank*.jsonl"))
    ids = [r["prompt_id"] for r in read_jsonl(tmp_path / "samples.jsonl")]
    assert ids == [p.meta["prompt_id"] for p in prompts]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_equal_single_process(setup, reference_run, tmp_path):
    model, tokenizer, prompts = setup
    full, _ = reference_run
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd() / "src"), str(Path.cwd())]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(tmp_path / "model"), str(out), str(len(prompts))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    merged = HeadScores.load(out / "head_scores.json")
    assert torch.equal(merged.scores, full.scores)
    for rank in (0, 1):  # every rank returns the merged scores
        assert json.loads((out / f"returned.rank{rank}.json").read_text()) == merged.scores.tolist()
    assert not list(out.glob("samples.rank*.jsonl"))
    assert len(list(read_jsonl(out / "samples.jsonl"))) == len(prompts)


def test_top_table_and_heatmap_outline_only_scored_heads(tmp_path):
    """12 of detect's 20 "top" heads scored 0 on the built-in model; now the table and outlines stop at the last
    head with an event, and say how many scored."""
    from rich.console import Console

    from headatlas.detect.plots import outlined_heads, plot_heatmap
    from headatlas.detect.runner import top_heads_table
    from headatlas.detect.scorers import NULL_LEVEL
    from headatlas.heads import Head

    raw = torch.zeros(4, 8)
    raw[3, 1], raw[2, 5], raw[0, 7] = 0.6, 0.25, 0.1
    scores = HeadScores(raw, {"kind": "retrieval"}, null_level=NULL_LEVEL)
    with_events = (raw > 0).long() * 3
    console = Console(record=True, width=200)
    console.print(top_heads_table(scores, with_events, 6, k=20))
    text = console.export_text()
    assert "Top 3 retrieval heads (3 of 32 heads score above 0; 6 counted prompts)" in " ".join(text.split())
    rows = [line.split("│")[2].strip() for line in text.splitlines() if line.startswith("│")]
    assert rows == ["3.1", "2.5", "0.7"] and "0.0000" not in text
    assert outlined_heads(scores, top=10) == [Head(3, 1), Head(2, 5), Head(0, 7)]
    assert plot_heatmap(scores, tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
