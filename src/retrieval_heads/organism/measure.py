"""Measure the organism: accuracy per task, retrieval heads, and head-masking effects.

Usage::

    retrieval-heads organism measure --out runs/organism-measure.json [--model DIR]

Retrieval score (a minimal, teacher-forced version of the paper's; the
toolkit's ``detect`` is the full one): for every answer token at position
p+1 (whitespace-only tokens skipped), take each head's top-1 attended position
in query row p (eager attention); if it lies in a needle's answer span and the
token there equals the answer token, the head gets 1/|answer tokens|. Scores
are averaged over the prompts the model answers correctly. For ``cross``
prompts the analogous *transition* score counts top-1 positions in the source
answer span while a *different* (translated) token is written.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..heads import Head, HeadScores
from ..masking import masked_heads
from ..selection import HeadSelection, share_of_heads
from .corpus import TASKS, Example
from .tasks import DEFAULT_LENGTHS, generate_answers, make_eval_set, organism_generator


def _answer_rows(tokenizer: PreTrainedTokenizerBase, ex: Example) -> tuple[list[int], list[int], set[int]]:
    """(full ids, positions of scored answer tokens, positions of needle answer-span tokens)."""
    enc = tokenizer(ex.prompt, return_offsets_mapping=True)
    prompt_ids, offsets = enc["input_ids"], enc["offset_mapping"]
    target = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + target
    scored = [
        len(prompt_ids) + j for j, t in enumerate(target) if tokenizer.decode([t]).strip()
    ]
    span: set[int] = set()
    for n in ex.needles:
        span |= {i for i, (a, b) in enumerate(offsets) if b > a and a < n.answer_end and b > n.answer_start}
    return ids, scored, span


@torch.no_grad()
def head_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    correct: Sequence[bool] | None = None,
    kind: str = "retrieval",
) -> tuple[torch.Tensor, int]:
    """Teacher-forced ``retrieval`` (copy) or ``transition`` (translate) score per head.

    Returns ``([n_layers, n_heads] mean score over counted prompts, n counted)``.
    """
    if kind not in ("retrieval", "transition"):
        raise ValueError("kind: retrieval or transition")
    cfg = model.config
    total = torch.zeros(cfg.num_hidden_layers, cfg.num_attention_heads)
    counted = 0
    old = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        for k, ex in enumerate(examples):
            if correct is not None and not correct[k]:
                continue
            ids, scored, span = _answer_rows(tokenizer, ex)
            if not scored or not span:
                continue
            x = torch.tensor([ids])
            att = model(input_ids=x, output_attentions=True).attentions  # per layer (1, H, T, T)
            rows = torch.tensor(scored) - 1
            per = torch.zeros_like(total)
            for layer, a in enumerate(att):
                top = a[0][:, rows, :].argmax(-1)  # (H, n_scored): top-1 key of each answer row
                src = x[0][top]  # token at the attended position
                tgt = x[0][torch.tensor(scored)].expand_as(src)
                in_span = torch.zeros_like(top, dtype=torch.bool)
                for i in span:
                    in_span |= top == i
                hit = in_span & ((src == tgt) if kind == "retrieval" else (src != tgt))
                per[layer] = hit.float().sum(-1) / len(scored)
            total += per
            counted += 1
    finally:
        model.set_attn_implementation(old)
    return (total / max(counted, 1)), counted


def _accuracy(model, tok, examples: Sequence[Example], heads: Sequence[Head] = (),
              batch_size: int = 8) -> tuple[float, list[bool]]:
    with masked_heads(model, list(heads), mode="zero"):
        preds = generate_answers(model, tok, examples, batch_size)
    ok = [p == ex.answer.strip() for p, ex in zip(preds, examples, strict=True)]
    return sum(ok) / len(ok), ok


def _by(examples: Sequence[Example], ok: Sequence[bool], key) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for ex, o in zip(examples, ok, strict=True):
        groups[str(key(ex))].append(o)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}


def measure(
    model_dir: str | Path | None = None,
    n_per_task: int = 160,
    n_detect: int = 80,
    k_frac: float = 0.05,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    threshold: float = 0.1,
) -> dict:
    """Run every measurement of the model card and return them as a JSON-able dict."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import ORGANISM_PATH

    path = str(model_dir or ORGANISM_PATH)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    gen = organism_generator(path)
    t0 = time.time()
    report: dict = {"model": path, "n_per_task": n_per_task, "lengths": list(DEFAULT_LENGTHS)}
    sets = {t: make_eval_set(t, n_per_task, seed=1, generator=gen) for t in TASKS}
    acc: dict = {}
    for t, exs in sets.items():
        a, ok = _accuracy(model, tok, exs)
        acc[t] = {"all": round(a, 4), "by_length": _by(exs, ok, lambda e: e.length),
                  "by_depth": _by(exs, ok, lambda e: e.depth),
                  "by_lang": _by(exs, ok, lambda e: f"{e.lang_needle}->{e.lang_question}")}
    report["accuracy"] = acc

    detect = make_eval_set("mono", n_detect, seed=2, generator=gen)
    _, ok = _accuracy(model, tok, detect)
    raw, counted = head_scores(model, tok, detect, ok)
    scores = HeadScores(raw, meta={"model": path, "kind": "retrieval", "prompts_counted": counted})
    n_total = raw.numel()
    selection = HeadSelection(scores=scores, top_k=share_of_heads(n_total, k_frac))
    rh = selection.resolve(scores.n_layers, scores.n_heads)
    k = len(rh)
    above = scores.above(threshold)
    report["retrieval"] = {
        "prompts_counted": counted, "n_heads": n_total, "threshold": threshold,
        "n_above_threshold": len(above), "share_above": round(len(above) / n_total, 4),
        "top10": [[str(h), round(scores[h], 4)] for h in scores.top_k(10)],
        "scores": [[round(float(v), 4) for v in row] for row in raw],
    }
    cross = make_eval_set("cross", n_detect, seed=2, generator=gen)
    _, ok_c = _accuracy(model, tok, cross)
    traw, tcount = head_scores(model, tok, cross, ok_c, kind="transition")
    tscores = HeadScores(traw, meta={"model": path, "kind": "transition", "prompts_counted": tcount})
    report["transition"] = {
        "prompts_counted": tcount, "n_above_threshold": len(tscores.above(threshold)),
        "top10": [[str(h), round(tscores[h], 4)] for h in tscores.top_k(10)],
    }

    # the controls: k random heads outside the top-k, per seed (the package's one rule, HeadSelection)
    controls = {str(s): dataclasses.replace(selection, random_seed=s).resolve(scores.n_layers, scores.n_heads)
                for s in seeds}  # fmt: skip
    masking: dict = {"k": k, "retrieval_heads": [str(h) for h in rh], "tasks": {}}
    for t in ("mono", "multihop", "parametric", "multikey", "cross"):
        exs = sets[t]
        base = acc[t]["all"]
        m_rh, ok_rh = _accuracy(model, tok, exs, rh)
        rand = {s: {"heads": [str(h) for h in heads], "acc": round(_accuracy(model, tok, exs, heads)[0], 4)}
                for s, heads in controls.items()}  # fmt: skip
        mean_rand = sum(r["acc"] for r in rand.values()) / len(rand)
        masking["tasks"][t] = {
            "base": base, "rh_masked": round(m_rh, 4), "rh_by_length": _by(exs, ok_rh, lambda e: e.length),
            "random_masked": rand, "random_mean": round(mean_rand, 4),
            "drop_rh": round(base - m_rh, 4), "drop_random": round(base - mean_rand, 4),
        }
    report["masking"] = masking
    report["masking_curve"] = masking_curve(model, tok, sets["mono"], scores, acc["mono"]["all"], seeds[:3])
    report["seconds"] = round(time.time() - t0, 1)
    return report


def masking_curve(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    scores: HeadScores,
    base: float,
    seeds: Sequence[int],
    ks: Sequence[int] = (1, 2, 3, 4, 6, 8, 12, 16),
) -> dict:
    """Accuracy on ``examples`` with the top-K retrieval heads masked vs K random heads outside them, per K.

    A dose-response curve: how many heads must go before retrieval breaks, and how far the
    retrieval heads are ahead of random ones at each K.
    """
    out = {"base": base, "k": {}}
    for k in ks:
        top = HeadSelection(scores=scores, top_k=k)
        rh = top.resolve(scores.n_layers, scores.n_heads)
        drawn = [dataclasses.replace(top, random_seed=s).resolve(scores.n_layers, scores.n_heads) for s in seeds]
        rand = [_accuracy(model, tok, examples, heads)[0] for heads in drawn]
        out["k"][str(k)] = {"rh_masked": round(_accuracy(model, tok, examples, rh)[0], 4),
                            "random_mean": round(sum(rand) / len(rand), 4), "random": [round(r, 4) for r in rand]}
    return out


def summary_lines(report: dict) -> list[str]:
    """The report's headline numbers, one line each (``retrieval-heads organism measure`` prints them)."""
    lines = [f"{t:11s} {a['all']:.3f}  by length {a['by_length']}" for t, a in report["accuracy"].items()]
    r = report["retrieval"]
    lines.append(f"heads > {r['threshold']}: {r['n_above_threshold']}/{r['n_heads']}  top: {r['top10'][:6]}")
    lines.append(f"transition top: {report['transition']['top10'][:6]}")
    for t, m in report["masking"]["tasks"].items():
        lines.append(f"mask {t:11s} base {m['base']:.3f}  RH {m['rh_masked']:.3f}  random {m['random_mean']:.3f}")
    for k, m in report["masking_curve"]["k"].items():
        lines.append(f"mono, {k:>2} heads masked: RH {m['rh_masked']:.3f}  random {m['random_mean']:.3f}")
    return lines
