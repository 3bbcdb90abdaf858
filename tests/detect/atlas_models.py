"""Hand-built one-layer Llamas whose heads are wired to a known attention rule.

Token ``t`` (1..15) is the one-hot ``e_t``; every head's query and key live in head dimensions 1..15,
which RoPE leaves (numerically) unrotated at ``rope_theta = 1e60``, so a score is ``c * q . k`` whatever
the positions. Each head is one rule:

- ``"echo"``: query = key = the current token: it attends to the earlier copies of its token (and itself);
- ``("induction", succ)``: query = ``succ[t]``, key = token: it attends to the tokens that follow ``t``'s
  earlier copies (``succ`` maps a token to the one after it in the random block);
- ``("constant", t)``: a constant query (a bias) that finds token ``t`` wherever it is: it attends to the
  document without reading the question;
- ``("question", q, t)``: attends to token ``t`` only from rows whose token is ``q``;
- ``"off"``: zero query and key (uniform attention).

Values copy the token into the residual stream, scaled by ``values[h]`` (default 1; 0: the head writes
nothing); MLPs are zero, and the unembedding reads the token back, so a head with value scale 3 makes
the model emit the token it attends to.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 16
HEAD_DIM = 32
SHARP = 4.0  # query/key scale: a match scores 8 * 8 * 4 * 4 / sqrt(32) ~ 180


def wired_model(rules: list, values: list[float] | None = None) -> LlamaForCausalLM:
    n = len(rules)
    hidden = 64
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=n, num_key_value_heads=n, head_dim=HEAD_DIM, attention_bias=True,
                      max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 1e60},
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight[:, :VOCAB] = torch.eye(VOCAB)
        model.model.norm.weight.fill_(1.0)
        layer = model.model.layers[0]
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
        attn = layer.self_attn
        for h, rule in enumerate(rules):
            rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            wq, wk, bq = attn.q_proj.weight[rows], attn.k_proj.weight[rows], attn.q_proj.bias[rows]
            name = rule if isinstance(rule, str) else rule[0]
            for t in range(1, VOCAB):
                if name == "echo":
                    wq[t, t] = wk[t, t] = SHARP
                elif name == "induction":
                    succ = rule[1]
                    if t in succ:
                        wq[succ[t], t] = SHARP
                    wk[t, t] = SHARP
                elif name in ("constant", "question"):
                    wk[t, t] = SHARP
            if name == "constant":
                bq[rule[1]] = 8 * SHARP  # the normed one-hot has size 8: same scale as a match
            if name == "question":
                wq[rule[2], rule[1]] = SHARP
            scale = 1.0 if values is None else float(values[h])
            if scale:
                attn.v_proj.weight[rows][:VOCAB, :VOCAB] = scale * torch.eye(VOCAB)
                attn.o_proj.weight[:VOCAB, rows][:, :VOCAB] = torch.eye(VOCAB)
        model.lm_head.weight[:VOCAB, :VOCAB] = torch.eye(VOCAB)
    return model


class ToyTokenizer:
    """Just what the scorers read of a tokenizer."""

    vocab_size = VOCAB
    all_special_ids = [0]
    bos_token_id = None
    pad_token_id = 0

    def __len__(self) -> int:
        return VOCAB

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [15]}  # every text is token 15 (the qr scorer's null query)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:  # noqa: ANN001
        return " ".join(map(str, ids))
