"""Fixtures for the RetMask tests: a tiny Llama checkpoint on disk with a WordLevel tokenizer and a chat template."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_tiny_model

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0..3; LlamaConfig's defaults: bos 1, eos 2
ROLE_WORDS = ["user", "assistant", "system", ":"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


def make_tokenizer(vocab_size: int = 96, chat_template: bool = True):
    """A whitespace WordLevel tokenizer over ``w0 w1 ...``; decode joins tokens with spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + ROLE_WORDS
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with a space
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def prompt_text(rng: torch.Generator, n: int) -> str:
    ids = torch.randint(8, 96, (n,), generator=rng).tolist()
    return " ".join(f"w{i - 8}" for i in ids)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A saved tiny Llama (3 layers x 8 heads) and its tokenizer: (path, model, tokenizer)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    model = make_tiny_model("llama")
    model.config.pad_token_id = 0
    tokenizer = make_tokenizer()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer
