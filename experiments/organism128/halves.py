"""Do both halves of a 128-head organism work? LM loss and accuracy with each half of every KV group masked.

    python experiments/organism128/halves.py CHECKPOINT [THREADS]

Halves: query heads 0-3 of each group of 8 ("first": where grow_query_heads puts the 64 original heads of a
grown checkpoint) vs 4-7 ("second": the added ones). LM loss: mean token cross-entropy over 48 held-out
prompts of 512 tokens (24 mono + 24 cross, eval seed 7), as for the grown runs of docs/organism.md.
"""
import json
import sys

import torch
from common import accuracy
from transformers import AutoModelForCausalLM, AutoTokenizer

from headatlas.heads import Head
from headatlas.masking import masked_heads
from headatlas.organism.tasks import make_eval_set, organism_generator

path = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
gen = organism_generator(path)
L, H = model.config.num_hidden_layers, model.config.num_attention_heads
group = H // model.config.num_key_value_heads
lm_set = (make_eval_set("mono", 24, seed=7, lengths=(512,), generator=gen)
          + make_eval_set("cross", 24, seed=7, lengths=(512,), generator=gen))
tasks = {t: make_eval_set(t, 40, seed=3, generator=gen) for t in ("mono", "cross", "parametric")}


@torch.no_grad()
def lm_loss(heads):
    total, n = 0.0, 0
    with masked_heads(model, heads, mode="zero"):
        for ex in lm_set:
            ids = torch.tensor([tok(ex.prompt + ex.target)["input_ids"]])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    return round(total / n, 4)


halves = {"none": [],
          "first": [Head(layer, h) for layer in range(L) for h in range(H) if h % group < group // 2],
          "second": [Head(layer, h) for layer in range(L) for h in range(H) if h % group >= group // 2]}
out = {}
for name, heads in halves.items():
    out[name] = {"n_masked": len(heads), "lm_loss": lm_loss(heads),
                 **{t: round(accuracy(model, tok, exs, heads)[0], 3) for t, exs in tasks.items()}}
    print(name, json.dumps(out[name]), flush=True)
