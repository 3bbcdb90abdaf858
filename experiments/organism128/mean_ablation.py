"""Zeroing vs mean-ablating the shipped organism's six retrieval heads (docs/organism.md, "Measurements").

    python experiments/organism128/mean_ablation.py

Heads: the top-K the model card's measurement masked (``docs/organism-measure.json``, ``masking``).
Means: each head's output averaged over 32 held-out prompts with their answers (8 each of mono, cross,
parametric, multihop; 128-256 tokens; eval seed 99). Accuracy: 40 prompts a task of the model card set
(eval seed 1, 128-1024 tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from headatlas.heads import Head
from headatlas.masking import head_output_means, masked_heads
from headatlas.organism import load_organism
from headatlas.organism.tasks import exact_match_accuracy, make_eval_set, organism_generator

MEASURE = Path(__file__).resolve().parents[2] / "docs" / "organism-measure.json"


def main() -> None:
    torch.set_num_threads(2)
    model, tok = load_organism()
    heads = [Head.parse(h) for h in json.loads(MEASURE.read_text())["masking"]["retrieval_heads"]]
    gen = organism_generator()
    texts = [e.prompt + e.answer for task in ("mono", "cross", "parametric", "multihop")
             for e in make_eval_set(task, 8, seed=99, lengths=(128, 256), generator=gen)]
    batches = [tok(texts[i:i + 4], return_tensors="pt", padding=True) for i in range(0, len(texts), 4)]
    means = head_output_means(model, batches)
    for task in ("mono", "multihop", "parametric"):
        examples = make_eval_set(task, 40, seed=1, lengths=(128, 256, 512, 1024), generator=gen)
        base = exact_match_accuracy(model, tok, examples, batch_size=10)
        with masked_heads(model, heads, mode="zero"):
            zeroed = exact_match_accuracy(model, tok, examples, batch_size=10)
        with masked_heads(model, heads, mode="mean", means=means):
            mean = exact_match_accuracy(model, tok, examples, batch_size=10)
        print(f"{task:11s} base {base:.3f} zero {zeroed:.3f} mean {mean:.3f}", flush=True)


if __name__ == "__main__":
    main()
