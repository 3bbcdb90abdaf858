"""Test helpers for detection: a word-level tokenizer and NiahPrompt-like prompts a tiny model copies from.

Random tiny models rarely retrieve anything, so the prompts are built around
the model's own behaviour: a random prefix, the model's greedy continuation
of it inserted at one third of the context as the needle's answer span, then
the rest of the prefix. The model then often re-emits (copies) those tokens.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import make_tiny_model  # noqa: E402

VOCAB = 96
NEWLINE_ID = 95


def word_tokenizer():
    """A WordLevel tokenizer over the tiny models' 96 ids: [PAD]=0, <s>=1, </s>=2, w3..w94, and "\\n"=95."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, NEWLINE_ID)}, "\n": NEWLINE_ID}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="<s>", eos_token="</s>")


@dataclass
class FakeNeedle:
    text: str
    question: str
    answer: str
    lang: str = "en"
    id: str = "n0"
    target_answer: str | None = None
    target_lang: str | None = None


@dataclass
class FakePrompt:
    """The fields of ``headatlas.niah.NiahPrompt`` that detection reads."""

    input_ids: list[int]
    text: str
    context_length: int
    depth: float
    needle: FakeNeedle
    needle_token_span: tuple[int, int]
    answer_token_span: tuple[int, int]
    answer_token_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def plain_greedy(model, ids: list[int], n: int) -> list[int]:
    """Greedy continuation without a KV cache (no stop rule)."""
    seq = list(ids)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids) :]


def copy_prompts(model, tokenizer, n: int = 6, seed: int = 0, answer_len: int = 8) -> list[FakePrompt]:
    """``n`` prompts whose answer span is the model's own greedy continuation of a random prefix."""
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for k in range(n):
        length = int(torch.randint(16, 40, (1,), generator=g))
        prefix = torch.randint(3, NEWLINE_ID, (length,), generator=g).tolist()
        answer_ids = plain_greedy(model, prefix, answer_len)
        start = length // 3
        ids = prefix[:start] + answer_ids + prefix[start:]
        answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
        needle = FakeNeedle(text=answer, question="?", answer=answer, id=f"needle{k % 2}")
        prompts.append(
            FakePrompt(
                input_ids=ids,
                text=tokenizer.decode(ids),
                context_length=len(ids),
                depth=round(start / len(ids), 3),
                needle=needle,
                needle_token_span=(start, start + answer_len),
                answer_token_span=(start, start + answer_len),
                answer_token_ids=answer_ids,
                meta={"prompt_id": f"p{seed}-{k}"},
            )
        )
    return prompts


def tiny_setup(n: int = 6, seed: int = 0):
    """The tiny Llama of ``tests/conftest.py``, the word tokenizer and copy prompts."""
    model = make_tiny_model("llama")
    tokenizer = word_tokenizer()
    return model, tokenizer, copy_prompts(model, tokenizer, n=n, seed=seed)
