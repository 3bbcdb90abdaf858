"""The optional vLLM engine of RetMask pair generation (``PairConfig(engine="vllm")``; not a dependency).

The original checkpoint samples the chosen responses (journaled in ``OUT.vllm_chosen.jsonl``), then the baked
ablated checkpoint (``OUT.ablated`` or ``PairConfig.ablated_dir``) the rejected ones, each with its prompt's seed.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ..masking import save_ablated_model
from ..runs import append_jsonl, read_jsonl
from .pair_records import PairConfig, PromptItem, Response, dropped_path, encode_prompt, pair_row, pair_seeds


def _vllm_generate(model_dir: str, items: Sequence[PromptItem], seeds: Sequence[int], config: PairConfig,
                   tokenizer) -> list[Response]:  # noqa: ANN001
    from vllm import LLM, SamplingParams  # optional dependency

    llm = LLM(model=model_dir, tokenizer=model_dir, **config.vllm_kwargs)
    params = [SamplingParams(temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_new_tokens,
                             seed=int(s % (1 << 31)), stop=list(config.stop) or None,
                             include_stop_str_in_output=config.include_stop) for s in seeds]
    outputs = llm.generate([{"prompt_token_ids": encode_prompt(tokenizer, it)} for it in items], params)
    responses = [Response(o.outputs[0].text, len(o.outputs[0].token_ids), o.outputs[0].finish_reason == "stop")
                 for o in outputs]
    del llm  # free the GPU before the next engine starts
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return responses


def run_vllm(model, tokenizer, heads, pending, config, out_path) -> None:  # noqa: ANN001
    """Two passes: the original checkpoint (chosen, journaled), then the baked ablated one (rejected)."""
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise ImportError("engine='vllm' needs vLLM: pip install 'headatlas[vllm]'") from err
    original = getattr(model.config, "_name_or_path", "")
    if not original or not Path(original).is_dir():
        raise ValueError("engine='vllm' needs a model loaded from a local directory (save it first)")
    chosen_journal = out_path.with_name(out_path.stem + ".vllm_chosen.jsonl")
    have = {r["id"]: r for r in read_jsonl(chosen_journal)}
    todo = [it for it in pending if it.id not in have]
    if todo:
        seeds = [pair_seeds(it, config)[0] for it in todo]
        for it, resp, s in zip(todo, _vllm_generate(original, todo, seeds, config, tokenizer), seeds, strict=True):
            have[it.id] = {"id": it.id, "seed": s, **asdict(resp)}
            append_jsonl(chosen_journal, have[it.id])
    ablated = Path(config.ablated_dir or out_path.with_name(out_path.stem + ".ablated"))
    if not (ablated / "config.json").exists():
        save_ablated_model(model, heads, ablated, tokenizer)
    seeds = [pair_seeds(it, config)[1] for it in pending]
    rejected = _vllm_generate(str(ablated), pending, seeds, config, tokenizer)
    for it, r, s in zip(pending, rejected, seeds, strict=True):
        c = have[it.id]
        row, reason = pair_row(it, Response(c["text"], c["n_tokens"], c["stopped"]), r, (c["seed"], s))
        append_jsonl(dropped_path(out_path) if reason else out_path, row)
