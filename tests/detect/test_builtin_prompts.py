"""The built-in model's prompts through ``detect``: --needles and --lengths are used or refused, never ignored."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from headatlas.demo import DemoConfig
from headatlas.organism import ORGANISM_PATH
from headatlas.organism.plugin import length_slack
from headatlas.prompt_sources import PromptRequest, build_prompts, default_lengths
from tests.detect.test_detect_cli import _app

pytestmark = pytest.mark.skipif(not (ORGANISM_PATH / "model.safetensors").is_file(), reason="no shipped organism")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ORGANISM_PATH)


def _refused(tmp_path, *extra: str) -> str:
    out = tmp_path / "run"
    result = CliRunner().invoke(_app(), ["detect", "--model", "organism", "--out", str(out), "--depths", "0,1",
                                         "--no-progress", "--device", "cpu", *extra])
    assert result.exit_code == 2, result.output  # the CLI's refusal code (commands/errors.refuse)
    assert not out.exists() or not any(out.iterdir())  # nothing written
    return result.output


@pytest.mark.parametrize("content", ["", "{not json\n", json.dumps({"id": "x", "text": "The code is 7.",
                                                                     "question": "What is the code?", "answer": "7"})])
def test_needles_with_the_builtin_prompts_are_refused(tmp_path, content):
    needles = tmp_path / "needles.jsonl"
    needles.write_text(content)
    output = _refused(tmp_path, "--lengths", "256", "--needles", str(needles))
    assert "--needles" in output and "--haystack en" in output


def test_lengths_the_builtin_prompts_cannot_meet_are_refused(tmp_path, tokenizer):
    output = " ".join(_refused(tmp_path, "--lengths", "8,16,256").split())
    assert "--lengths 8,16:" in output and "at least" in output
    need = int(output.split("at least ")[1].split()[0].rstrip(";."))
    fits = build_prompts("organism", tokenizer, 2048, PromptRequest(lengths=[need], depths=[0.0, 1.0]))
    assert max(len(p.input_ids) for p in fits) <= need


def test_every_builtin_prompt_is_within_its_slack_of_its_recorded_length(tokenizer):
    prompts = build_prompts("organism", tokenizer, 2048, PromptRequest(lengths=[64, 128], depths=[0.0, 1.0]))
    assert all(len(p.input_ids) <= p.meta["requested_context_length"] + length_slack(p.meta["requested_context_length"])
               for p in prompts)


def test_the_demo_grid_is_built_in_every_demo_language(tokenizer):
    """The demo's detection grid (256-1024 tokens, 5 depths, 2 a cell) in each language: 1 token over is not refused."""
    demo = DemoConfig()
    for lang in demo.langs:
        request = PromptRequest(lengths=list(demo.lengths), depths=[i / (demo.depths - 1) for i in range(demo.depths)],
                                per_cell=demo.per_cell, seed=demo.seed, lang=lang)
        prompts = build_prompts("organism", tokenizer, 2048, request)
        assert len(prompts) == len(demo.lengths) * demo.depths * demo.per_cell


def test_the_default_grid_fits_the_window(tokenizer):
    request = PromptRequest(lengths=None, depths=[0.5], per_cell=1)
    prompts = build_prompts("organism", tokenizer, 2048, request)
    assert request.lengths == default_lengths(2048) and max(request.lengths) <= 0.9 * 2048
    assert len(prompts) == 8 and max(len(p.input_ids) for p in prompts) <= 2048
    assert default_lengths(None) == default_lengths(10**6) == [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]
