"""The ``detect`` command: a thin layer over the API (a tiny checkpoint saved to disk, the built-in NIAH data)."""

from __future__ import annotations

import re

import pytest
import torch
import typer
from typer.testing import CliRunner

from headatlas.commands.detect import detect_command
from headatlas.niah import load_haystack, load_needles
from headatlas.runs import read_jsonl


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Llama and a word-level tokenizer over the English haystack and needles."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = " ".join(n.text + " " + n.question for n in load_needles(lang="en")) + " Question : Answer"
    text += " " + load_haystack("en").text[:4000]
    words = ["[PAD]", "<s>", "</s>", *dict.fromkeys(re.findall(r"\w+|[^\w\s]", text))]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[PAD]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    path = tmp_path_factory.mktemp("ckpt")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("detect")(detect_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps "detect" as a subcommand
    return app


def test_cli_runs_the_grid_and_fails_loudly_when_nothing_is_retrieved(checkpoint, tmp_path):
    out = tmp_path / "run"
    args = ["detect", "--model", str(checkpoint), "--out", str(out), "--lengths", "60,120", "--depths", "0,1",
            "--max-new-tokens", "4", "--batch-size", "2", "--no-progress", "--device", "cpu"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1, result.output
    assert "NO prompt passed" in result.output
    n_needles = len(load_needles(lang="en"))
    samples = list(read_jsonl(out / "samples.jsonl"))
    assert len(samples) == n_needles * 2 * 2
    assert {s["length"] for s in samples} == {60, 120} and {s["depth"] for s in samples} == {0.0, 1.0}
    assert not (out / "head_scores.json").exists()
    # the same command resumes (nothing left to do) and other settings are refused
    again = CliRunner().invoke(_app(), [*args, "--mode", "teacher"])
    assert again.exit_code == 2 and "other settings" in again.output  # refused in one line


def test_cli_rejects_bad_arguments(checkpoint, tmp_path):
    result = CliRunner().invoke(_app(), ["detect", "--model", str(checkpoint), "--out", str(tmp_path), "--mode", "beam"])
    assert result.exit_code == 2 and "mode" in result.output
    result = CliRunner().invoke(_app(), ["detect", "--model", str(checkpoint), "--out", str(tmp_path), "--lengths", "a:b"])
    assert result.exit_code == 2 and "lengths" in result.output
