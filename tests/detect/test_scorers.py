"""The atlas scorers on hand-built heads whose right answer is known, and the engine they share."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from headatlas.attention import selected_row_probs
from headatlas.detect import DetectConfig, detect
from headatlas.detect.mass import MassScorer, QrScorer, attention_on_keys, qr_document_score
from headatlas.detect.razor import EchoScorer, InductionScorer
from headatlas.detect.scorers import SCORERS, BatchContext, CopyScorer, Scorer, scorer_for
from headatlas.heads import HeadScores
from headatlas.model_spec import ModelSpec

from .atlas_models import ToyTokenizer, wired_model


def _ctx(model):
    return BatchContext(model, ToyTokenizer(), ModelSpec.from_model(model), None, 0)


def test_every_scorer_is_a_scorer():
    for name in SCORERS:
        assert isinstance(scorer_for(DetectConfig(scorer=name)), Scorer), name


def test_key_probabilities_match_eager_attention():
    """The engine's probabilities on chosen keys equal eager attention weights read at those keys."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15]]
    rows, keys = [[3, 6], [2, 3]], [[0, 2, 5], [1, 3, -1]]
    probs, _ = attention_on_keys(model, seqs, rows, keys)
    model.set_attn_implementation("eager")
    for b, seq in enumerate(seqs):
        with torch.no_grad():
            att = model(torch.tensor([seq]), output_attentions=True).attentions  # L x (1, H, T, T)
        for layer in range(2):
            for r, row in enumerate(rows[b]):
                for k, key in enumerate(keys[b]):
                    want = att[layer][0, :, row, key] if key >= 0 else torch.zeros(4)
                    torch.testing.assert_close(probs[b, layer, :, r, k], want, atol=1e-5, rtol=1e-4)


def test_attention_sinks_join_the_denominator():
    """A module with sink logits (GPT-OSS ``sinks``): p_j = exp(s_j) / (sum_i exp(s_i) + exp(sink))."""
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 5, 4)
    module = torch.nn.Module()
    module.sinks = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    got = selected_row_probs(module, q, k, torch.tensor([[4]]), 5, None, {"scaling": 0.5})
    logits = (q @ k.transpose(-1, -2)) * 0.5
    want = logits.exp() / (logits.exp().sum(-1, keepdim=True) + module.sinks.detach().exp().view(1, 2, 1, 1))
    torch.testing.assert_close(got.detach(), want)
    assert float(got.detach().sum(-1).max()) < 1.0


def _distinct_block(n: int, repeats: int):
    """A seed whose random block of ``n`` tokens has no repeated token, and its items."""
    for seed in range(200):
        config = DetectConfig(scorer="echo", repeat_tokens=n, repeats=repeats, seed=seed)
        item = EchoScorer(config).items([], ToyTokenizer(), SimpleNamespace(max_positions=256))[0]
        block = item.input_ids[:n]
        if len(set(block)) == n:
            return config, item, block
    raise AssertionError("no seed gives a block of distinct tokens")


def test_echo_and_induction_find_the_heads_wired_for_them():
    config, item, block = _distinct_block(8, 4)
    succ = {block[i]: block[(i + 1) % len(block)] for i in range(len(block))}
    model = wired_model(["echo", ("induction", succ), "off", "off"])
    ctx = _ctx(model)
    echo = EchoScorer(config)
    induction = InductionScorer(DetectConfig(scorer="induction", repeat_tokens=8, repeats=4, seed=config.seed))
    e = echo.reduce(echo.score_batch(ctx, [item]), 1, 4)[0][0]
    i = induction.reduce(induction.score_batch(ctx, [item]), 1, 4)[0][0]
    # the echo head splits its attention between itself and its k earlier copies: k / (k + 1), k = 1..3
    assert e[0] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3, abs=1e-3)
    # the induction head reads the next token's earlier copies; at a block's last row, the next token (the
    # block's first) also sits at position 0, after no copy: k / (k + 1) there, 1 on the other 21 rows
    assert i[1] == pytest.approx((21 + 1 / 2 + 2 / 3 + 3 / 4) / 24, abs=1e-3)
    assert i[0] < 0.01 and e[1] < 0.01  # each head scores nothing under the other rule
    null = echo.null_level(echo.score_batch(ctx, [item]))
    assert e[2] == pytest.approx(null, rel=1e-3)  # a uniform head scores exactly the null level


def _prompt(ids, needle, query_start, answer):
    needle_obj = SimpleNamespace(answer="x", lang="en", id="toy", target_lang=None)
    return SimpleNamespace(input_ids=ids, answer_token_span=answer, answer_token_ids=ids[answer[0]:answer[1]],
                           needle=needle_obj, needle_token_span=needle, context_length=len(ids), depth=0.5,
                           meta={"prompt_id": f"toy{len(ids)}", "query_token_start": query_start})


def test_qr_keeps_the_question_reading_head_and_calibrates_out_the_constant_one():
    """Head 0 looks at the document only from the question token; head 1 looks at it from every row.
    Attention mass sees both; QRHead's null-query calibration removes head 1 (score 0)."""
    model = wired_model([("question", 14, 13), ("constant", 13), "off", "off"])
    ctx = _ctx(model)
    prompt = _prompt([1, 2, 3, 13, 13, 12, 4, 5, 14, 7], (3, 6), 8, (3, 6))
    qr = QrScorer(DetectConfig(scorer="qr"))
    items = qr.items([prompt], ToyTokenizer(), ctx.spec)
    scores = qr.reduce(qr.score_batch(ctx, items), 1, 4)[0][0]
    # head 0, per document token, averaged over query rows 8 (1/2 on each 13) and 9 (uniform 1/10): [0.3, 0.3,
    # 0.05]; minus the null row (uniform 1/9): [0.189, 0.189, -0.061]; none under mean - 2 sd, so summed
    assert scores[0] == pytest.approx(2 * (0.3 - 1 / 9) + (0.05 - 1 / 9), abs=1e-4)
    assert scores[1] == pytest.approx(0.0, abs=1e-6)
    mass = MassScorer(DetectConfig(scorer="mass"))
    values = mass.reduce([{**r, "counted": True} for r in mass.score_batch(ctx, items)], 1, 4)[0][0]
    assert values[1] > 0.6 > values[0]  # the constant head sits on the document while the answer is written
    assert qr_document_score(torch.tensor([[0.2, 0.2, 0.2]]), torch.zeros(1, 3), 3).item() == 0.0  # QRHead's edge


def test_copy_finds_the_copying_head_and_qr_the_question_reading_one():
    """Head 0 reads the answer token 13 from every row and writes it (the model emits it): a copy head that
    ignores the question. Head 1 reads the needle's other token 12 from the question token and writes
    nothing: it attends to the document without copying. Copy events and QRHead part as they should."""
    model = wired_model([("constant", 13), ("question", 14, 12), "off", "off"], values=[3, 0, 0, 0])
    ctx = _ctx(model)
    prompt = _prompt([1, 2, 3, 13, 12, 4, 5, 14, 7], (3, 5), 7, (3, 4))
    copy = CopyScorer(DetectConfig(scorer="copy", mode="teacher"))
    items = copy.items([prompt], ToyTokenizer(), ctx.spec)
    records = copy.score_batch(ctx, items)
    assert records[0]["counted"] and records[0]["events"] == {"0.0": 1}  # one answer token, copied by head 0
    assert copy.reduce(records, 1, 4)[0][0].tolist() == [1.0, 0.0, 0.0, 0.0]
    qr = QrScorer(DetectConfig(scorer="qr"))
    scores = qr.reduce(qr.score_batch(ctx, qr.items([prompt], ToyTokenizer(), ctx.spec)), 1, 4)[0][0]
    assert scores[1] > 0.2 and scores[0] == pytest.approx(0.0, abs=1e-6)


def test_duo_keeps_the_gate_of_the_head_that_reads_far_back(tmp_path):
    """Head 0 reads token 13 far outside the streaming window and writes it out; head 1 writes nothing.
    The distillation keeps gate 0 open; the L1 penalty closes gate 1."""
    model = wired_model([("constant", 13), "off"], values=[True, False])
    g = torch.Generator().manual_seed(0)
    prompts = []
    for n in range(3):
        filler = torch.randint(1, 12, (30 + n,), generator=g).tolist()
        ids = [1, 2, 13, 13] + filler + [14, 7]
        prompts.append(_prompt(ids, (2, 4), len(ids) - 2, (2, 4)))
    config = DetectConfig(scorer="duo", duo_steps=25, duo_sink=1, duo_window=4, batch_size=1, progress=False,
                          heatmap=False, table_rows=0)
    scores = detect(model, ToyTokenizer(), prompts, config, tmp_path)
    assert scores[(0, 0)] > 0.9 and scores[(0, 1)] < 0.1
    assert scores.null_level == 0.5 and scores.meta["scorer"] == "duo"
    again = detect(model, ToyTokenizer(), prompts, config, tmp_path)  # resumed: every step journaled
    assert torch.equal(again.scores, HeadScores.load(tmp_path / "head_scores.json").scores)
