"""Measure the organism: accuracy per task, retrieval heads, and head-masking effects.

Usage::

    headatlas organism measure --out runs/organism-measure.json [--model DIR]

Head scores come from the toolkit's ``detect`` in teacher mode (one forward
over prompt + answer; a prompt counts when its answer token accuracy is above
0.5), on held-out ``mono`` prompts (retrieval) and ``cross`` prompts
(retrieval-transition, lexicon alignment); see ``docs/detection.md``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import SCORE_THRESHOLD
from ..heads import Head, HeadScores
from ..masking import masked_heads
from ..selection import HeadSelection, share_of_heads
from .corpus import TASKS, Example
from .prompts import organism_prompts
from .tasks import DEFAULT_LENGTHS, answers_correct, make_eval_set, organism_generator


def head_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence, kind: str = "retrieval",
    out_dir: str | Path | None = None,
) -> HeadScores:
    """``detect``'s teacher-mode ``retrieval`` (copy) or ``transition`` scores of ``prompts``.

    The run's files go to ``out_dir`` (a temporary folder when ``None``).
    ``meta["counted_prompts"]`` holds the prompts the scores average over.
    """
    from ..detect import DetectConfig, NoRetrievalError, detect

    config = DetectConfig(kind=kind, mode="teacher", progress=False, heatmap=False, table_rows=0)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return detect(model, tokenizer, prompts, config, out_dir or tmp)
        except NoRetrievalError:
            n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
            return HeadScores(torch.zeros(n_layers, n_heads), meta={"kind": kind, "counted_prompts": 0})


def _accuracy(model, tok, examples: Sequence[Example], heads: Sequence[Head] = (),
              batch_size: int = 8) -> tuple[float, list[bool]]:
    with masked_heads(model, list(heads), mode="zero"):
        ok = answers_correct(model, tok, examples, batch_size)
    return sum(ok) / len(ok), ok


def _by(examples: Sequence[Example], ok: Sequence[bool], key) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for ex, o in zip(examples, ok, strict=True):
        groups[str(key(ex))].append(o)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}


def measure(
    model_dir: str | Path | None = None, n_per_task: int = 160, n_detect: int = 80, k_frac: float = 0.05,
    seeds: Sequence[int] = (0, 1, 2, 3, 4), threshold: float = SCORE_THRESHOLD,
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

    scores = head_scores(model, tok, organism_prompts(tok, "mono", n_detect, seed=2, generator=gen))
    raw, counted = scores.scores, int(scores.meta["counted_prompts"])
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
    tscores = head_scores(model, tok, organism_prompts(tok, "cross", n_detect, seed=2, generator=gen), "transition")
    tcount = int(tscores.meta["counted_prompts"])
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
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, examples: Sequence[Example], scores: HeadScores,
    base: float, seeds: Sequence[int], ks: Sequence[int] = (1, 2, 3, 4, 6, 8, 12, 16),
) -> dict:
    """Accuracy on ``examples`` with the top-K retrieval heads masked vs K random heads outside them, per K.

    A dose-response curve: how many heads must go before retrieval breaks, and how far the
    retrieval heads are ahead of random ones at each K. A K above the number of scored heads has no
    top-K (only scored heads are retrieval heads): it is left out and listed under ``skipped``.
    """
    out = {"base": base, "k": {}, "skipped": [k for k in ks if k > scores.n_scored]}
    for k in (k for k in ks if k <= scores.n_scored):
        top = HeadSelection(scores=scores, top_k=k)
        rh = top.resolve(scores.n_layers, scores.n_heads)
        drawn = [dataclasses.replace(top, random_seed=s).resolve(scores.n_layers, scores.n_heads) for s in seeds]
        rand = [_accuracy(model, tok, examples, heads)[0] for heads in drawn]
        out["k"][str(k)] = {"rh_masked": round(_accuracy(model, tok, examples, rh)[0], 4),
                            "random_mean": round(sum(rand) / len(rand), 4), "random": [round(r, 4) for r in rand]}
    return out


def summary_lines(report: dict) -> list[str]:
    """The report's headline numbers, one line each (``headatlas organism measure`` prints them)."""
    lines = [f"{t:11s} {a['all']:.3f}  by length {a['by_length']}" for t, a in report["accuracy"].items()]
    r = report["retrieval"]
    lines.append(f"heads > {r['threshold']}: {r['n_above_threshold']}/{r['n_heads']}  top: {r['top10'][:6]}")
    lines.append(f"transition top: {report['transition']['top10'][:6]}")
    for t, m in report["masking"]["tasks"].items():
        lines.append(f"mask {t:11s} base {m['base']:.3f}  RH {m['rh_masked']:.3f}  random {m['random_mean']:.3f}")
    for k, m in report["masking_curve"]["k"].items():
        lines.append(f"mono, {k:>2} heads masked: RH {m['rh_masked']:.3f}  random {m['random_mean']:.3f}")
    return lines
