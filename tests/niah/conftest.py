"""Tokenizers built offline for the NIAH tests: byte-level BPE, Metaspace BPE with BOS, word- and char-level."""

from __future__ import annotations

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from headatlas.niah import BUILTIN_LANGS, load_haystack, load_needles

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] | trim }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _training_texts() -> list[str]:
    texts = []
    for lang in BUILTIN_LANGS:
        texts.extend(load_haystack(lang).text.split("\n\n"))
        texts.extend(n.text + " " + n.question for n in load_needles(lang=lang))
    texts.append("Question: Answer:")
    return texts


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return _training_texts()


def _bytelevel_bpe(texts: list[str], trim_offsets: bool) -> Tokenizer:
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=["<|endoftext|>", "<|user|>", "<|system|>", "<|assistant|>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(texts, trainer)
    return raw


@pytest.fixture(scope="session")
def bytelevel_tok(texts: list[str]) -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE (tokens carry their leading space; CJK split into bytes)."""
    return PreTrainedTokenizerFast(tokenizer_object=_bytelevel_bpe(texts, trim_offsets=False), eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def chat_tok(texts: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE with trimmed offsets (leading spaces excluded) and a chat template set by hand."""
    tok = PreTrainedTokenizerFast(tokenizer_object=_bytelevel_bpe(texts, trim_offsets=True), eos_token="<|end|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def metaspace_tok(texts: list[str]) -> PreTrainedTokenizerFast:
    """SentencePiece-like BPE ('▁' word marker) that prepends a BOS token, like Llama-2."""
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False, limit_alphabet=4000
    )
    raw.train_from_iterator(texts, trainer)
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def word_tok(texts: list[str]) -> PreTrainedTokenizerFast:
    """Word-level: every word and punctuation mark is one token."""
    pre = pre_tokenizers.Whitespace()
    words = {w for t in texts for w, _ in pre.pre_tokenize_str(t)}
    vocab = {w: i for i, w in enumerate(["[UNK]", *sorted(words)])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")


@pytest.fixture(scope="session")
def char_tok(texts: list[str]) -> PreTrainedTokenizerFast:
    """Character-level: every character (spaces included) is one token."""
    chars = sorted({c for t in texts for c in t} | {"\n", " "})
    vocab = {c: i for i, c in enumerate(["[UNK]", *chars])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")


@pytest.fixture(scope="session")
def tokenizers_by_name(bytelevel_tok, chat_tok, metaspace_tok, word_tok, char_tok) -> dict:
    return {
        "bytelevel": bytelevel_tok,
        "chat": chat_tok,
        "metaspace": metaspace_tok,
        "word": word_tok,
        "char": char_tok,
    }
