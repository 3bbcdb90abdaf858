"""The organism's tokenizer: byte-level BPE trained on the synthetic corpus.

- Byte-level: every string is encodable (256 byte symbols in the vocabulary).
- Each Han character is its own pre-token, so Chinese words are several
  tokens and a Chinese value inside a sentence ("是德国。") tokenizes exactly
  like the answer (" 德国" = " " + "德" + "国").
- ``max_token_length`` keeps tokens short, so answers span several tokens.
- ``<s>`` is prepended by the post-processor (like Llama); ``</s>`` is EOS,
  ``<pad>`` pads. Offsets are not trimmed, so token offsets tile the text.
- No chat template.

>>> tok = train_tokenizer(["The home country of Anna is Kenya."] * 50, vocab_size=300)
>>> tok.decode(tok("Kenya")["input_ids"], skip_special_tokens=True)
'Kenya'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ..lexicon import LexEntry, Lexicon
from .corpus import CorpusGenerator, parametric_facts

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [PAD, BOS, EOS]


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 3072, max_token_length: int = 6, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer on ``texts`` and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{Han}"), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  max_token_length=max_token_length, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                        special_tokens=[(BOS, tok.token_to_id(BOS))])
    tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), bos])
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a raw ``tokenizers.Tokenizer`` with the organism's special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left",
        model_max_length=2048, clean_up_tokenization_spaces=False,
    )


def form_tokens(tokenizer: PreTrainedTokenizerFast, form: str) -> list[int]:
    """Token ids of ``form`` as an answer (after a space), without the lone space token."""
    space = tokenizer.convert_tokens_to_ids("Ġ")
    ids = tokenizer(" " + form, add_special_tokens=False)["input_ids"]
    return [i for i in ids if i != space]


def multi_token(tokenizer: PreTrainedTokenizerFast, entry: LexEntry, min_tokens: int = 2) -> bool:
    """Every form of ``entry`` spans at least ``min_tokens`` tokens."""
    return all(len(form_tokens(tokenizer, f)) >= min_tokens for f in entry.forms.values())


def token_disjoint(tokenizer: PreTrainedTokenizerFast, entry: LexEntry, src: str, tgt: str) -> bool:
    """The ``src`` and ``tgt`` forms of ``entry`` share no token (a translation is not a copy)."""
    return not set(form_tokens(tokenizer, entry.forms[src])) & set(form_tokens(tokenizer, entry.forms[tgt]))


def select_lexicon(
    lexicon: Lexicon, tokenizer: PreTrainedTokenizerFast, max_per_category: int = 40, n_facts: int = 40
) -> Lexicon:
    """The organism's working lexicon: multi-token entries, at most ``max_per_category`` per category.

    The entries of the parametric fact table (:func:`~.corpus.parametric_facts`)
    and the names of the lexicon's own languages are always kept; the rest
    fill each category in lexicon order.
    """
    multi = lexicon.subset(e for e in lexicon if multi_token(tokenizer, e))
    must = {(e.category, e.key) for pair in parametric_facts(multi, n_facts) for e in pair}
    must |= {("language", lang) for lang in lexicon.langs}  # names of the lexicon's own languages
    counts: Counter[str] = Counter(cat for cat, _ in must)
    keep = [e for e in multi if (e.category, e.key) in must]
    for e in multi:
        if (e.category, e.key) not in must and counts[e.category] < max_per_category:
            keep.append(e)
            counts[e.category] += 1
    return multi.subset(keep)


def make_generator(
    lexicon: Lexicon, tokenizer: PreTrainedTokenizerFast, n_facts: int = 40, passkey_rate: float = 0.0
) -> CorpusGenerator:
    """A :class:`~.corpus.CorpusGenerator` that counts real tokens and asks only token-disjoint
    cross-lingual answers (``passkey_rate``: see :meth:`~.corpus.CorpusGenerator.example`)."""
    backend = tokenizer.backend_tokenizer

    def count(text: str) -> int:
        return len(backend.encode(text, add_special_tokens=False).ids)

    cache: dict[tuple[str, str, str], bool] = {}

    def translatable(entry: LexEntry, src: str, tgt: str) -> bool:
        key = (entry.key + "/" + entry.category, src, tgt)
        if key not in cache:
            cache[key] = token_disjoint(tokenizer, entry, src, tgt)
        return cache[key]

    return CorpusGenerator(lexicon, count_tokens=count, n_facts=n_facts, translatable=translatable,
                           passkey_rate=passkey_rate)
