"""Write a concentration stage (as shipped stages 11-13) for a checkpoint, with heads chosen by detection.

    python experiments/organism128/concentrate.py CHECKPOINT BASE_STAGE.json OUT_STAGE.json [--keep 6] [--drop 0.9]
        [--reinit-above 0.04] [--carry PREVIOUS_STAGE.json]

Detection: teacher-forced copy score (organism.measure.head_scores) on 40 held-out mono
prompts of 128-1024 tokens (eval seed 2, the model card's detection set), counted where the
model answers right. keep = the top ``--keep`` heads (never dropped); reinit = every other head
scoring >= ``--reinit-above`` (drawn afresh and dropped at ``--drop``); heads reinitialised by
``--carry``'s stage stay dropped at ``--drop``; every other head at the base stage's head_dropout.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from common import accuracy
from transformers import AutoModelForCausalLM, AutoTokenizer

from headatlas.organism.measure import head_scores
from headatlas.organism.prompts import example_to_prompt
from headatlas.organism.tasks import make_eval_set, organism_generator

ap = argparse.ArgumentParser()
ap.add_argument("checkpoint")
ap.add_argument("base")
ap.add_argument("out")
ap.add_argument("--keep", type=int, default=6)
ap.add_argument("--drop", type=float, default=0.9)
ap.add_argument("--reinit-above", type=float, default=0.04)
ap.add_argument("--max-reinit", type=int, default=16)
ap.add_argument("--carry", default="")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
tok = AutoTokenizer.from_pretrained(args.checkpoint)
model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
gen = organism_generator(args.checkpoint)
det = make_eval_set("mono", 40, seed=2, generator=gen)
acc, ok = accuracy(model, tok, det)
scores = head_scores(model, tok, [example_to_prompt(tok, ex, f"det{i}") for i, ex in enumerate(det)])  # detect, teacher
raw, counted = scores.scores, int(scores.meta["counted_prompts"])
keep = scores.top_k(args.keep)
reinit = [h for h in scores.top_k(args.keep + args.max_reinit)[args.keep:]
          if scores[h] >= args.reinit_above and h.layer > 0]  # layer 0 feeds the rest: left alone, as shipped
carried = json.loads(Path(args.carry).read_text()).get("head_dropout_overrides", {}) if args.carry else {}
carried = [k for k, p in carried.items() if p > 0.5 and k not in {str(h) for h in keep}]
stage = json.loads(Path(args.base).read_text())
overrides = {str(h): 0.0 for h in keep}
for key in [*carried, *(str(h) for h in reinit)]:
    overrides[key] = args.drop
stage["head_dropout_overrides"] = overrides
stage["reinit_heads"] = [str(h) for h in reinit]
Path(args.out).write_text(json.dumps(stage, indent=1) + "\n")
print(json.dumps({"checkpoint": args.checkpoint, "mono_acc": round(acc, 3), "counted": counted,
                  "above_0.1": len(scores.above(0.1)),
                  "top": [[str(h), round(scores[h], 3)] for h in scores.top_k(args.keep + args.max_reinit)],
                  "keep": [str(h) for h in keep], "reinit": stage["reinit_heads"], "carried": carried}),
      file=sys.stderr, flush=True)
