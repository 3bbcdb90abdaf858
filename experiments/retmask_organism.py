"""RetMask end to end on the built-in model, with a random-heads control, on CPU.

    python experiments/retmask_organism.py --out runs/retmask_organism
    python experiments/retmask_organism.py --out runs/rm-quick --n-prompts 32 --n-eval 24   # a quick look

Cost on 2 shared CPU cores (a 6 x 16-head organism, measured while another
training run shared the cores): sampling ~1.3 s per prompt and arm at 1024
tokens; DPO ~5 s per pair and epoch at 1024 tokens (policy forward+backward
on chosen and rejected plus the reference forward); evaluation ~0.9 s per
example and model. The defaults (192 prompts at 512/1024 tokens, 2 epochs,
100 held-out examples per suite) therefore take roughly 7 min of sampling,
2 x 15-25 min of DPO and 20 min of evaluation; idle cores roughly halve that.

Steps 2-4 are :func:`headatlas.retmask.pipeline.run_retmask_pipeline`
(with its random-heads control); ``--out`` is its run folder, so an interrupted
run resumes and a rerun with other settings is refused:

1. detect: a teacher-forced retrieval (copy) score per head on held-out
   ``mono`` prompts the model answers correctly
   (:func:`headatlas.organism.measure.head_scores`) -> ``head_scores.json``;
   K = ``--k`` heads (default: 5 % of all heads).
2. pairs: long-context *training-split* prompts (multi-key with distractors
   and monolingual retrieval at 512 and 1024 tokens); chosen = the model,
   rejected = the model with the top-K heads zeroed (``pairs_retmask.jsonl``),
   and the control with K random heads outside the top-K zeroed
   (``pairs_random.jsonl``). Responses stop at the newline that ends an answer.
3. DPO with TRL for each pair set (``model_retmask/``, ``model_random/``).
   The paper's lr of 5e-7 was set for 8B models and thousands of pairs; for
   this 3M-parameter model and a few hundred pairs it moves nothing, so the
   default here is ``--lr 2e-5`` (everything else: the paper's settings).
4. evaluate base vs RetMask vs control on held-out examples (another seed and
   the held-out key names): multikey and mono at the longest length, cross,
   multihop, parametric -> ``retmask_eval.json`` and the table printed.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch

from headatlas.heads import HeadScores
from headatlas.model_spec import load_model, resolve_model_path
from headatlas.retmask.pipeline import RetMaskPipelineConfig, run_retmask_pipeline
from headatlas.selection import share_of_heads

DETECT_SEED = 11


def detect(model, tokenizer, model_path: str, n_detect: int, out: Path) -> Path:  # noqa: ANN001
    """Teacher-forced copy score on held-out mono prompts the model answers correctly -> head_scores.json."""
    path = out / "head_scores.json"
    if path.exists():
        return path
    from headatlas.organism import tasks
    from headatlas.organism.measure import head_scores
    from headatlas.organism.prompts import example_to_prompt

    gen = tasks.organism_generator(model_path)
    make = partial(tasks.make_eval_set, generator=gen)
    examples = make("mono", n=n_detect, seed=DETECT_SEED, lengths=(256, 512, 1024))
    prompts = [example_to_prompt(tokenizer, ex, f"det{i}") for i, ex in enumerate(examples)]
    found = head_scores(model, tokenizer, prompts, kind="retrieval")  # detect, teacher mode
    counted = int(found.meta["counted_prompts"])
    HeadScores(found.scores, {"model": model_path, "method": "retrieval score, detect teacher mode (organism.measure)",
                        "task": "mono", "n_prompts": len(examples), "n_counted": counted,
                        "seed": DETECT_SEED}).save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/retmask_organism")
    ap.add_argument("--model", default="organism", help="the built-in model, or a checkpoint trained like it")
    ap.add_argument("--k", type=int, default=None, help="heads to mask (default: 5%% of all heads)")
    ap.add_argument("--n-detect", type=int, default=60)
    ap.add_argument("--n-prompts", type=int, default=192)
    ap.add_argument("--lengths", type=lambda s: tuple(int(x) for x in s.split(",")), default=(512, 1024))
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning (the paper's)")
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, spec = load_model(args.model, device="cpu")
    heads = detect(model, tokenizer, resolve_model_path(args.model), args.n_detect, out)
    del model
    run_retmask_pipeline(RetMaskPipelineConfig(
        heads=str(heads), out=str(out), model=args.model, top_k=args.k or share_of_heads(spec.n_total_heads),
        n_prompts=args.n_prompts, lengths=args.lengths, lr=args.lr, epochs=args.epochs, lora=args.lora,
        n_eval=args.n_eval, random_control=True,
    ))


if __name__ == "__main__":
    main()
