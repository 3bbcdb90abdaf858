"""A quick look at a checkpoint: accuracy per task and length, the copy score's top heads, masking K = 3 and 6.

    python experiments/organism128/quick.py CHECKPOINT [THREADS]

Accuracy: 40 held-out prompts a task (eval seed 3). Copy score: teacher-forced, on 24 mono prompts of
512-1024 tokens (eval seed 2) counted where the model answers right. Masking: the top-K heads vs three
draws of K random heads outside the top-K and outside every head scoring above 0.1.
"""

import sys

import torch
from common import accuracy, accuracy_by
from transformers import AutoModelForCausalLM, AutoTokenizer

from headatlas.organism.measure import head_scores
from headatlas.organism.prompts import example_to_prompt
from headatlas.organism.tasks import make_eval_set, organism_generator
from headatlas.selection import random_heads

path = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()
gen = organism_generator(path)
L, H = model.config.num_hidden_layers, model.config.num_attention_heads
out = {}
sets = {t: make_eval_set(t, 40, seed=3, generator=gen) for t in ("mono", "cross", "multihop", "parametric")}
for t, exs in sets.items():
    a, ok = accuracy(model, tok, exs)
    out[t] = (round(a, 3), accuracy_by(exs, ok, lambda e: e.length))
    print(t, out[t], flush=True)
det = make_eval_set("mono", 24, seed=2, lengths=(512, 768, 1024), generator=gen)
_, ok = accuracy(model, tok, det)
s = head_scores(model, tok, [example_to_prompt(tok, ex, f"det{i}") for i, ex in enumerate(det)])  # detect, teacher
raw, n = s.scores, int(s.meta["counted_prompts"])
print("heads>0.1", len(s.above(0.1)), "of", raw.numel(), "counted", n,
      [(str(h), round(s[h], 3)) for h in s.top_k(10)], flush=True)
above = s.above(0.1)
for k in (3, 6):
    rh = s.top_k(k)
    m = accuracy(model, tok, sets["mono"], rh)[0]
    r = [accuracy(model, tok, sets["mono"], random_heads(L, H, k, seed=x, exclude=set(rh) | set(above)))[0]
         for x in (0, 1, 2)]
    mh = accuracy(model, tok, sets["multihop"], rh)[0]
    cr = accuracy(model, tok, sets["cross"], rh)[0]
    print(f"K={k} {[str(h) for h in rh]} mono {out['mono'][0]} -> RH {m:.3f} random {r} ; "
          f"multihop {out['multihop'][0]} -> {mh:.3f}; cross -> {cr:.3f}", flush=True)
