"""RetMask preference pairs: chosen = the original model, rejected = the model with its retrieval heads zeroed.

Sampling is seeded per prompt (one ``torch.Generator`` per row), so responses do not depend on batching or
resuming; by default chosen and rejected share the random stream. Pairs with an empty or identical response
are dropped and counted. The output JSONL is the run's journal (:func:`headatlas.runs.open_run`).

>>> stats = generate_pairs(model, tokenizer, heads, load_prompts("p.jsonl"), PairConfig(), "pairs.jsonl")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from ..generation import RowSampler, StopTokens, generate
from ..heads import Head, check_heads, heads_to_strings
from ..masking import masked_heads
from ..model_spec import ModelSpec, eos_token_ids, model_identity
from ..runs import Run, atomic_write_json, flags, open_run, read_jsonl, stamp, track
from .pair_records import PairConfig, PromptItem, Response, dropped_path, encode_prompt, pair_row, pair_seeds

DROP_REASONS = ("empty_chosen", "empty_rejected", "empty_both", "identical", "prompt_too_long")


class ChatTemplateError(ValueError):
    """A chat-formatted prompt was given to a tokenizer that has no chat template."""


@dataclass
class PairStats:
    """What a pair-generation run produced: prompts seen, pairs kept, drops by reason."""

    n_prompts: int = 0
    n_pairs: int = 0
    n_resumed: int = 0
    n_generated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    mean_chosen_tokens: float = 0.0
    mean_rejected_tokens: float = 0.0
    frac_chosen_truncated: float = 0.0
    frac_rejected_truncated: float = 0.0
    heads: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, stamp("pair-stats", {**asdict(self), "n_dropped": self.n_dropped}))

    @classmethod
    def load(cls, path: str | Path) -> PairStats:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{k: v for k, v in data.items() if k not in ("n_dropped", "format", "format_version")})


# ---- prompts -----------------------------------------------------------------------------------------


def run_path(out_path: str | Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.run.json`` (the run's settings: heads, sampling, weights)."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".run.json")


def stats_path(out_path: str | Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.stats.json``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".stats.json")


def load_prompts(source: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read prompt records from a JSONL file or a ``datasets`` dataset (``dataset:NAME[:split]``).

    Each record has ``prompt`` (a string, or a list of chat messages) or
    ``messages`` (a list of ``{"role", "content"}``), and optionally ``id``.

    >>> import json, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "p.jsonl")
    >>> _ = open(path, "w").write(json.dumps({"prompt": "Q: 2+2? Answer:"}) + "\\n")
    >>> load_prompts(path)
    [{'prompt': 'Q: 2+2? Answer:'}]
    """
    text = str(source)
    if text.startswith("dataset:"):
        records = _load_dataset_records(text[len("dataset:"):], limit)
    else:
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(f"prompt file {path} does not exist (use dataset:NAME[:split] for a dataset)")
        records = list(read_jsonl(path))
    records = records[:limit] if limit is not None else records
    if not records:
        raise ValueError(f"{source}: no prompts")
    return records


def _load_dataset_records(spec: str, limit: int | None) -> list[dict[str, Any]]:
    try:
        import datasets  # lazy: only this input needs it
    except ImportError as err:  # pragma: no cover - datasets is a dependency of the train extra
        raise ImportError("dataset:NAME prompts need the `datasets` package: pip install 'headatlas[datasets]'") from err
    name, _, split = spec.partition(":")
    if Path(name).exists() and Path(name).is_dir() and (Path(name) / "dataset_info.json").exists():
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split or "train"]
    else:
        ds = datasets.load_dataset(name, split=split or "train")
    columns = set(ds.column_names)
    if not columns & {"prompt", "messages"}:
        raise ValueError(f"dataset {name} has no 'prompt' or 'messages' column (columns: {sorted(columns)})")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [dict(row) for row in ds]


def _prompt_messages(messages: list[dict[str, Any]], first_turn_only: bool) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ValueError("chat prompts must be a list of {'role': ..., 'content': ...} messages")
    if first_turn_only:  # system message(s) plus the first user message
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            raise ValueError("a chat prompt has no user message")
        return messages[: users[0] + 1]
    while messages and messages[-1].get("role") == "assistant":  # the prompt ends before the model's reply
        messages = messages[:-1]
    if not messages:
        raise ValueError("a chat prompt has no message before the assistant's reply")
    return messages


def prepare_prompts(records: Sequence[dict[str, Any]], tokenizer, config: PairConfig) -> list[PromptItem]:  # noqa: ANN001
    """Turn prompt records into :class:`PromptItem` s: ids assigned, chat prompts rendered by the chat template.

    Raises :class:`ChatTemplateError` when a record is chat-formatted and the tokenizer has no chat template.
    """
    items: list[PromptItem] = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"prompt record {i} is not a JSON object")
        pid = str(rec.get("id", i))
        if pid in seen:
            raise ValueError(f"duplicate prompt id {pid!r} (record {i}); ids must be unique for resuming")
        seen.add(pid)
        raw = rec["messages"] if "messages" in rec else rec.get("prompt")
        extra = {k: v for k, v in rec.items() if k not in ("id", "prompt", "messages")}
        if isinstance(raw, str):
            items.append(PromptItem(pid, raw, raw, False, extra))
        elif isinstance(raw, list):
            if not getattr(tokenizer, "chat_template", None):
                raise ChatTemplateError(
                    f"prompt {pid!r} is chat-formatted (a list of messages) but the tokenizer "
                    f"{type(tokenizer).__name__} has no chat template: give plain-text prompts "
                    "({'prompt': '...'}) or set tokenizer.chat_template"
                )
            messages = _prompt_messages(raw, config.first_turn_only)
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            items.append(PromptItem(pid, text, messages, True, extra))
        else:
            raise ValueError(f"prompt record {i} needs 'prompt' (str or messages) or 'messages'")
    return items


# ---- sampling ----------------------------------------------------------------------------------------


def _cut_at_stop(text: str, stop: Sequence[str], include: bool) -> tuple[str, bool]:
    hits = [(text.find(s), s) for s in stop if s in text]
    if not hits:
        return text, False
    i, s = min(hits, key=lambda h: h[0])  # the earliest; on a tie the first in ``stop``
    return (text[: i + len(s)] if include else text[:i]), True


def _sample_batch(
    model: PreTrainedModel, tokenizer, items: Sequence[PromptItem], seeds: Sequence[int], config: PairConfig  # noqa: ANN001
) -> list[Response]:
    """Sample one response per item (row ``i`` from its own generator seeded ``seeds[i]``), stopping at EOS or a stop string."""
    device = next(model.parameters()).device
    enc = [encode_prompt(tokenizer, it) for it in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_ids(model, tokenizer)[0]
    stops = StopTokens.from_tokenizer(model, tokenizer, stop_on_newline=False)
    out = generate(model, enc, config.max_new_tokens, stops, pad_id=pad,
                   sampler=RowSampler(seeds, config.temperature, config.top_p, device),
                   stop_strings=config.stop, tokenizer=tokenizer)
    responses = []
    for b, prompt_ids in enumerate(enc):
        n = int(out.n_tokens[b])
        tokens = out.tokens[b, : n + (out.stop_reason[b] == "stop_string")].tolist()  # a stop string's token is kept
        text = _decode_continuation(tokenizer, prompt_ids, tokens)
        text, hit_stop = _cut_at_stop(text, config.stop, config.include_stop)
        responses.append(Response(text, len(tokens), out.stop_reason[b] != "max_new_tokens" or hit_stop))
    return responses


def _decode_continuation(tokenizer, prompt_ids: list[int], tokens: list[int]) -> str:  # noqa: ANN001
    """The text the new tokens add to the prompt, leading space kept (SentencePiece; TRL joins strings)."""
    prompt = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = tokenizer.decode(prompt_ids + tokens, skip_special_tokens=True)
    if full.startswith(prompt):
        return full[len(prompt):]
    return tokenizer.decode(tokens, skip_special_tokens=True)  # pragma: no cover - exotic decoders


# ---- the run -----------------------------------------------------------------------------------------


def _summarise(out_path: Path, items: Sequence[PromptItem], heads: list[Head], config: PairConfig,
               n_resumed: int, n_generated: int, meta: dict[str, Any]) -> PairStats:
    kept = list(read_jsonl(out_path))
    dropped = list(read_jsonl(dropped_path(out_path)))
    reasons = Counter(d["reason"] for d in dropped)

    def mean(key: str) -> float:
        return sum(r["meta"][key] for r in kept) / len(kept) if kept else 0.0

    def frac_truncated(key: str) -> float:
        return sum(1 for r in kept if not r["meta"][key]) / len(kept) if kept else 0.0

    return PairStats(
        n_prompts=len(items), n_pairs=len(kept), n_resumed=n_resumed, n_generated=n_generated,
        dropped={r: reasons[r] for r in DROP_REASONS if reasons[r]},
        mean_chosen_tokens=mean("chosen_tokens"), mean_rejected_tokens=mean("rejected_tokens"),
        frac_chosen_truncated=frac_truncated("chosen_stopped"),
        frac_rejected_truncated=frac_truncated("rejected_stopped"),
        heads=heads_to_strings(heads), settings=config.sampling_settings(), meta=meta,
    )


def generate_pairs(
    model: PreTrainedModel,
    tokenizer,  # noqa: ANN001 - any HF tokenizer
    heads: Iterable[Head | tuple[int, int]],
    prompts: Sequence[dict[str, Any]],
    config: PairConfig | None = None,
    out_path: str | Path = "pairs.jsonl",
    progress: bool = True,
) -> PairStats:
    """Sample chosen (original) and rejected (heads zeroed) responses for ``prompts``; write TRL preference rows.

    Rows are ``{"id", "prompt", "chosen", "rejected", "meta"}``; stats also go to ``OUT.stats.json``.
    Resumes: prompt ids already in ``OUT`` or ``OUT.dropped.jsonl`` are skipped.
    """
    config = config or PairConfig()
    out_path = Path(out_path)
    spec = ModelSpec.from_model(model)
    heads = check_heads(heads, spec.n_layers, spec.n_heads)  # fail before any work on a head the model lacks
    items = prepare_prompts(prompts, tokenizer, config)
    identity = model_identity(model)
    run = open_run(
        out_path.parent, "retmask-pairs", {"--heads (masked)": heads_to_strings(heads), **flags(config.sampling_settings())},
        fingerprints={"the model's weights": identity["weights"]}, discard=(), record_file=run_path(out_path).name,
        journal=out_path.name, hint=f"Write to a new --out, or delete {out_path} and its .run/.stats/.dropped files.",
        **identity, seed=config.seed, engine=config.engine, n_heads_masked=len(heads),
    )
    done = {r["id"] for r in run.records()} | {r["id"] for r in run.records(dropped_path(out_path).name)}
    pending = [it for it in items if it.id not in done]
    n_resumed = len(items) - len(pending)
    meta = run.meta

    if config.max_prompt_tokens is not None:
        keep = []
        for it in pending:
            n = len(encode_prompt(tokenizer, it))
            if n > config.max_prompt_tokens:
                run.append({"id": it.id, "reason": "prompt_too_long", "prompt_tokens": n}, dropped_path(out_path).name)
            else:
                keep.append(it)
        pending = keep
    if pending:
        if config.engine == "vllm":
            from .vllm_engine import run_vllm

            run_vllm(model, tokenizer, heads, pending, config, out_path)
        else:
            _run_transformers(model, tokenizer, heads, pending, config, run, progress, len(items))
    stats = _summarise(out_path, items, heads, config, n_resumed, len(pending), meta)
    stats.save(stats_path(out_path))
    return stats


def _run_transformers(model, tokenizer, heads, pending, config, run: Run, progress, total: int) -> None:  # noqa: ANN001
    # longest first, so padding is small within a batch and a memory error shows up at once
    lengths = {it.id: len(encode_prompt(tokenizer, it)) for it in pending}
    order = sorted(pending, key=lambda it: -lengths[it.id])
    dropped = dropped_path(run.journal).name
    with track("RetMask pairs", total, total - len(order), enabled=progress) as bar:
        for start in range(0, len(order), config.batch_size):
            batch = order[start: start + config.batch_size]
            seeds = [pair_seeds(it, config) for it in batch]
            chosen = _sample_batch(model, tokenizer, batch, [s[0] for s in seeds], config)
            with masked_heads(model, heads, mode="zero"):
                rejected = _sample_batch(model, tokenizer, batch, [s[1] for s in seeds], config)
            for it, c, r, s in zip(batch, chosen, rejected, seeds, strict=True):
                row, reason = pair_row(it, c, r, s)
                run.append(row, dropped if reason else None)
            bar.advance(len(batch))
