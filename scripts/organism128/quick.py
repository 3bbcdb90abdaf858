import sys

import torch

from transformers import AutoModelForCausalLM, AutoTokenizer
from retrieval_heads.heads import HeadScores
from retrieval_heads.organism.tasks import make_eval_set, organism_generator
from retrieval_heads.organism.measure import _accuracy, head_scores, _by
from retrieval_heads.selection import random_heads
path = sys.argv[1]; threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(path); model = AutoModelForCausalLM.from_pretrained(path).eval()
gen = organism_generator(path)
L, H = model.config.num_hidden_layers, model.config.num_attention_heads
out = {}
sets = {t: make_eval_set(t, 40, seed=3, generator=gen) for t in ("mono", "cross", "multihop", "parametric")}
for t, exs in sets.items():
    a, ok = _accuracy(model, tok, exs)
    out[t] = (round(a, 3), _by(exs, ok, lambda e: e.length))
    print(t, out[t], flush=True)
det = make_eval_set("mono", 24, seed=2, lengths=(512, 768, 1024), generator=gen)
_, ok = _accuracy(model, tok, det)
raw, n = head_scores(model, tok, det, ok)
s = HeadScores(raw)
print("heads>0.1", len(s.above(0.1)), "of", raw.numel(), "counted", n, [(str(h), round(s[h], 3)) for h in s.top_k(10)], flush=True)
above = s.above(0.1)
for k in (3, 6):
    rh = s.top_k(k)
    m = _accuracy(model, tok, sets["mono"], rh)[0]
    r = [_accuracy(model, tok, sets["mono"], random_heads(L, H, k, seed=x, exclude=set(rh) | set(above)))[0] for x in (0, 1, 2)]
    mh = _accuracy(model, tok, sets["multihop"], rh)[0]
    cr = _accuracy(model, tok, sets["cross"], rh)[0]
    print(f"K={k} {[str(h) for h in rh]} mono {out['mono'][0]} -> RH {m:.3f} random {r} ; multihop {out['multihop'][0]} -> {mh:.3f}; cross -> {cr:.3f}", flush=True)
