"""Fixtures for the evaluation tests: a tiny saved checkpoint with a byte-level tokenizer, a stand-in
for the organism's eval sets, local benchmark data, and one lm-eval TaskManager per session."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from headatlas.heads import HeadScores
from tests.conftest import tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_byte_tokenizer():
    """A byte-level BPE tokenizer (any Unicode text, ~300 ids) with BOS/EOS/PAD, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>", "</s>", "<pad>"]
    )
    raw.train_from_iterator(["The answer is 42. Die Antwort lautet 7. Question: Where? Answer: Berlin\n"] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_tiny_checkpoint(out_dir: Path, family: str = "llama", seed: int = 0) -> Path:
    """Save a tiny random-init model of ``family`` with the byte tokenizer; return the directory."""
    from transformers import AutoModelForCausalLM

    tok = make_byte_tokenizer()
    cfg = tiny_config(family)
    cfg.vocab_size = len(tok)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    cfg.max_position_embeddings = 1024
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    with torch.no_grad():  # sharpen attention, as tests/conftest.py does, so masking visibly matters
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(4.0)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_dir)


def write_scores(path: Path, scores: torch.Tensor, name: str, model: str = "tiny") -> Path:
    return HeadScores(scores, {"model": model, "method": name}).save(path)


@pytest.fixture(scope="session")
def head_files(tmp_path_factory, tiny_dir) -> dict[str, Path]:
    """Two head-score files for the tiny model (3 layers x 8 heads) whose top-3 sets differ, made for it
    (their metadata names its folder: a file made for another model is refused)."""
    d = tmp_path_factory.mktemp("heads")
    rh, rth = torch.zeros(3, 8), torch.zeros(3, 8)
    rh[2, 1], rh[2, 5], rh[1, 0], rh[0, 7] = 0.9, 0.8, 0.7, 0.1
    rth[1, 3], rth[1, 4], rth[2, 1], rth[0, 2] = 0.9, 0.8, 0.6, 0.1
    return {"rh": write_scores(d / "rh.json", rh, "retrieval", str(tiny_dir)),
            "rth": write_scores(d / "rth.json", rth, "rth", str(tiny_dir))}


@pytest.fixture(scope="session")
def local_tasks(tmp_path_factory) -> Path:
    """A loglikelihood (multiple choice) and a loglikelihood_rolling task over local JSONL."""
    d = tmp_path_factory.mktemp("local-tasks")
    mc = [{"question": f"Q{i}: the capital of {c} is", "choices": ["Berlin", "Paris", "Rome"], "label": i % 3}
          for i, c in enumerate(["Germany", "France", "Italy", "Spain", "Peru"])]  # fmt: skip
    (d / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    text = [{"text": "The Rhine flows into the North Sea. " * 3}, {"text": "Der Rhein mündet in die Nordsee."}]
    (d / "text.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in text))
    (d / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n"
    )
    (d / "tiny_rolling.yaml").write_text(
        f"task: tiny_rolling\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / 'text.jsonl'}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n"
    )
    return d


# ---- a stand-in for headatlas.organism.tasks.make_eval_set -----------------------------
@dataclass
class StandInExample:
    task: str
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)


def standin_eval_set(task, n, seed, lengths=None, langs=None):
    """Deterministic examples shaped like the organism's: prompts end with "Answer:"."""
    cities = ["Berlin", "Paris", "Rome", "Oslo", "Lima", "Bern", "Riga", "Kiev"]
    out = []
    for i in range(n):
        city = cities[(seed + i) % len(cities)]
        prompt = f"Note {i}: the key {i} opens {city}. Question: what does key {i} open? Answer:"
        out.append(StandInExample(task=task, prompt=prompt, answer=city, meta={"i": i}))
    return out


@pytest.fixture
def organism_standin(monkeypatch, tmp_path):
    """Serve the organism tasks from the stand-in, cached under a temporary directory."""
    from headatlas.evaluate import fixtures

    monkeypatch.setattr(fixtures, "organism_eval_set", standin_eval_set)
    monkeypatch.setenv("HEADATLAS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def bench_fixtures(tmp_path_factory):
    from headatlas.evaluate.fixtures import write_benchmark_fixtures

    return write_benchmark_fixtures(tmp_path_factory.mktemp("bench"), langs=["en", "de", "zh"])


@pytest.fixture(scope="session")
def task_manager(bench_fixtures):
    """Only the fixture tasks and the package's own (fast: lm-eval's ~15K built-in YAMLs are not read)."""
    from lm_eval.tasks import TaskManager

    from headatlas.evaluate.fixtures import TASKS_DIR

    return TaskManager(include_path=[str(TASKS_DIR), str(bench_fixtures.include_path)], include_defaults=False)


@pytest.fixture(autouse=True)
def _fast_and_quiet(monkeypatch):
    """One torch thread (the 2 shared cores are busy: 2 threads spin and run ~30x slower), and no
    per-call environment report from simple_evaluate (it shells out to pip/git: seconds per call)."""
    import lm_eval.evaluator

    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)
    monkeypatch.setattr(lm_eval.evaluator, "get_git_commit_hash", lambda: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
