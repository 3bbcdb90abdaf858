"""The one decoding loop: same tokens as the old loops, batch independence, stop tokens from the tokenizer."""

from __future__ import annotations

import pytest
import torch

from headatlas.generation import RowSampler, StopTokens, generate, greedy_answers, response_text

# Recorded from the four loops this module replaced (organism checkpoint, before the change):
# `organism.tasks.generate_answers` on make_eval_set("mono", 12, seed=3, lengths=(128, 256))
# and RetMask `_sample_batch` (temperature 0.9, seeds prompt_seed(0, f"p{i}")) on the first six.
OLD_MONO_ANSWERS = ["Bashkir", "Tschechien", "星期六", "Februari", "Samoan", "März", "二月", "Aisilandi",
                    "Dominican Republic", "Montag", "Ubelgiji", "Sunday"]
OLD_SAMPLES = [[" Bashkir", 3, True], [" Tschechien", 3, True], [" 星期六", 4, True], [" Februari", 2, True],
               [" Samoan", 2, True], [" März", 2, True]]


@pytest.fixture(scope="module")
def organism():
    """The shipped checkpoint, run on one thread as when the old outputs were recorded."""
    from headatlas.organism import ORGANISM_PATH, load_organism

    if not (ORGANISM_PATH / "model.safetensors").is_file():
        pytest.skip("no shipped organism checkpoint")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_organism()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mono(organism):
    from headatlas.organism.tasks import make_eval_set

    return make_eval_set("mono", 12, seed=3, lengths=(128, 256))


def test_same_answers_as_the_old_loops(organism, mono):
    from headatlas.organism.tasks import generate_answers
    from headatlas.retmask.pair_records import PairConfig, PromptItem, prompt_seed
    from headatlas.retmask.pairs import _sample_batch

    model, tok = organism
    assert generate_answers(model, tok, mono) == OLD_MONO_ANSWERS
    items = [PromptItem(id=f"p{i}", text=e.prompt, original=e.prompt, is_chat=False) for i, e in enumerate(mono[:6])]
    got = _sample_batch(model, tok, items, [prompt_seed(0, it.id) for it in items],
                        PairConfig(max_new_tokens=12, temperature=0.9))
    assert [[r.text, r.n_tokens, r.stopped] for r in got] == OLD_SAMPLES


def test_greedy_and_sampled_tokens_do_not_depend_on_the_batch(organism, mono):
    model, tok = organism
    seqs = [tok(e.prompt)["input_ids"] for e in mono[:4]]  # two lengths: real left padding
    assert len({len(s) for s in seqs}) > 1
    stops = StopTokens.from_tokenizer(model, tok)
    for sampler in (None, "sample"):
        def run(rows, sampler=sampler):
            seeds = [100 + r for r in rows]
            s = RowSampler(seeds, temperature=1.5, top_p=0.95, device="cpu") if sampler else None
            return generate(model, [seqs[r] for r in rows], 8, stops, pad_id=0, sampler=s)
        batch = run([0, 1, 2, 3])
        for r in range(4):
            alone = run([r])
            n = int(alone.n_tokens[0])
            assert int(batch.n_tokens[r]) == n and batch.stop_reason[r] == alone.stop_reason[0]
            assert torch.equal(batch.tokens[r, : n + 1], alone.tokens[0, : n + 1])


def test_stop_tokens_come_from_the_tokenizer(organism):
    model, tok = organism
    stops = StopTokens.from_tokenizer(model, tok)
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    assert stops.newline[: len(tok)].tolist() == ["\n" in t for t in texts]
    assert stops.blank[: len(tok)].tolist() == [not t.strip() for t in texts]
    assert set(torch.nonzero(stops.eos).flatten().tolist()) == {2, 201}  # tokenizer EOS + generation config
    assert not StopTokens.from_tokenizer(model, tok, stop_on_newline=False).newline.any()


class _Words:
    """A tokenizer stand-in over a fixed word list (id = index)."""

    def __init__(self, words):
        self.words = words

    def __len__(self):
        return len(self.words)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.words[i] for i in ids)

    def batch_decode(self, rows, skip_special_tokens=False):
        return [self.decode(r) for r in rows]


class _Out(dict):
    def __getattr__(self, name):
        return self[name]


class _Scripted(torch.nn.Module):
    """A "model" whose next token is scripted per decoding step (greedy picks it)."""

    def __init__(self, script, vocab):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.script, self.vocab = script, vocab

    def forward(self, input_ids, attention_mask, position_ids, use_cache, logits_to_keep=None, past_key_values=None):
        step = attention_mask.shape[1] - self.prompt_width
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, 0, self.script[min(step, len(self.script) - 1)]] = 1.0
        return _Out(logits=logits, past_key_values=None)


WORDS = ["<pad>", " ", "\n", "Paris", " is", "a\n", "x", "STOP"]


@pytest.mark.parametrize("script, n, reason, text", [
    ([2, 3, 4, 2, 6], 3, "newline", "Paris is"),   # a leading newline does not end the answer
    ([1, 5, 3], 1, "newline", "a"),                # "a\n" ends it even as the first text
    ([3, 7, 4], 3, "max_new_tokens", "ParisSTOP is"),
])
def test_newline_rule_and_response_text(script, n, reason, text):
    tok = _Words(WORDS)
    model = _Scripted(script, len(WORDS))
    model.prompt_width = 2
    texts = tok.batch_decode([[i] for i in range(len(WORDS))])
    stops = StopTokens(torch.zeros(len(WORDS), dtype=torch.bool), torch.tensor(["\n" in t for t in texts]),
                       torch.tensor([not t.strip() for t in texts]), torch.tensor(["\n" in t.lstrip() for t in texts]))
    out = generate(model, [[3, 4]], len(script), stops)
    assert (int(out.n_tokens[0]), out.stop_reason[0]) == (n, reason)
    assert response_text(tok, out.tokens[0].tolist(), n, reason) == text
    hit = generate(model, [[3, 4]], len(script), stops, stop_strings=("STOP",), tokenizer=tok)
    if 7 in script[:n + 1]:
        assert hit.stop_reason[0] == "stop_string" and int(hit.n_tokens[0]) == script.index(7)


def test_row_sampler_is_batch_independent_and_respects_top_p():
    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    both = RowSampler([11, 12, 13], temperature=0.6, top_p=1.0, device="cpu")(scores)
    alone = RowSampler([12], temperature=0.6, top_p=1.0, device="cpu")(scores[1:2])
    assert torch.equal(both[1:2], alone)
    greedy = RowSampler([1, 2, 3], temperature=0.6, top_p=1e-6, device="cpu")(scores)
    assert torch.equal(greedy, scores.argmax(-1))  # a tiny nucleus keeps only the best token


def test_greedy_answers_match_decoding_each_prompt_alone(organism, mono):
    model, tok = organism
    seqs = [tok(e.prompt)["input_ids"] for e in mono[:3]]
    together = greedy_answers(model, tok, seqs, 8)
    assert together == [greedy_answers(model, tok, [s], 8)[0] for s in seqs] == OLD_MONO_ANSWERS[:3]
