"""decore-hf: hf itself at a = 0; its generations are decore_generate's; its loglikelihoods the contrast's."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from headatlas.decore import decore_generate
from headatlas.decore.lm_eval_backend import DecoreHFLM
from headatlas.evaluate.lm_eval_backend import MaskedHFLM
from headatlas.heads import Head
from headatlas.masking import masked_heads

HEADS = [Head(1, 3), Head(2, 1), Head(2, 5)]
CONTEXTS = ["Note: the key opens Berlin. Question: what does the key open? Answer:", "Q: 7 + 5?"]


def _gen(lm):
    reqs = [Instance("generate_until", {}, (c, {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}), i)
            for i, c in enumerate(CONTEXTS)]
    return lm.generate_until(reqs, disable_tqdm=True)


def test_alpha_zero_generations_equal_hf(tiny_model):
    model, tok = tiny_model
    ref = _gen(MaskedHFLM.from_model(model, tok, heads=[], batch_size=1))
    assert _gen(DecoreHFLM.from_model(model, tok, heads=HEADS, alpha=0.0, batch_size=1)) == ref


def test_generations_are_decore_generate(tiny_model):
    model, tok = tiny_model
    lm = DecoreHFLM.from_model(model, tok, heads=HEADS, alpha=2.0, batch_size=1)
    direct = decore_generate(model, tok, [lm.tok_encode(c) for c in CONTEXTS], HEADS, alpha=2.0, max_new_tokens=8,
                             stop_strings=["\n"], stop_on_newline=False)
    assert _gen(lm) == [tok.decode(o.tokens, skip_special_tokens=True).split("\n")[0] for o in direct]


def test_loglikelihood_is_the_renormalised_contrast(tiny_model):
    model, tok = tiny_model
    lm = DecoreHFLM.from_model(model, tok, heads=HEADS, alpha=1.0, batch_size=1)
    (got, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("The capital of Germany is", " Berlin"), 0)],
                                 disable_tqdm=True)
    ctx, cont = lm.tok_encode("The capital of Germany is"), lm.tok_encode(" Berlin")
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        base = torch.log_softmax(model(ids).logits[0], -1)
        with masked_heads(model, HEADS, mode="uniform"):
            masked = torch.log_softmax(model(ids).logits[0], -1)
    logp = torch.log_softmax(2 * base - masked, -1)[len(ctx) - 1 : -1]
    assert got == pytest.approx(logp.gather(1, torch.tensor(cont)[:, None]).sum().item(), abs=1e-4)
