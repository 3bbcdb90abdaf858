"""RetMask preference pairs: chosen = the original model, rejected = the model with its retrieval heads zeroed.

For every prompt one response is sampled from the original model and one from
the ablated model (the selected heads zeroed in the output projection; here
through :func:`~retrieval_heads.masked_heads` with ``mode="zero"`` on the same
model object, which computes exactly what the baked checkpoint of
:func:`~retrieval_heads.save_ablated_model` computes). Pairs with an empty
response, or with two identical responses, are dropped and counted.

Sampling is seeded *per prompt*: each prompt gets a seed derived from the base
seed and its id, and every row of a batch draws from its own
``torch.Generator``, so a prompt's responses do not depend on the batch size,
the batch it landed in, or whether the run was resumed. By default the chosen
and rejected responses use the *same* random stream (common random numbers):
the two differ only where the masked heads change the distribution, not
through sampling noise.

The output JSONL is the journal: a re-run with the same arguments skips the
prompt ids already written (kept pairs in ``OUT``, dropped ones in
``OUT.dropped.jsonl``) and the counts in ``OUT.stats.json`` cover the whole file.

>>> from retrieval_heads import load_model
>>> from retrieval_heads.heads import HeadScores
>>> model, tokenizer, spec = load_model("organism")  # doctest: +SKIP
>>> heads = HeadScores.load("runs/detect/head_scores.json").top_k(8)  # doctest: +SKIP
>>> prompts = load_prompts("prompts.jsonl")  # doctest: +SKIP
>>> stats = generate_pairs(model, tokenizer, heads, prompts, PairConfig(max_new_tokens=64), "pairs.jsonl")  # doctest: +SKIP
>>> stats.n_pairs, stats.dropped  # doctest: +SKIP
(412, {'identical': 80, 'empty_rejected': 8})
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from ..artifacts import ResumeMismatchError, append_jsonl, atomic_write_json, read_jsonl, run_metadata
from ..generation import RowSampler, StopTokens, generate
from ..heads import Head, check_heads, heads_to_strings
from ..masking import masked_heads
from ..model_spec import ModelSpec, eos_token_ids, model_identity
from ..progress import progress_bar
from .pair_records import PairConfig, PromptItem, Response, dropped_path, encode_prompt, pair_row, pair_seeds

DROP_REASONS = ("empty_chosen", "empty_rejected", "empty_both", "identical", "prompt_too_long")


class PairsResumeMismatchError(ResumeMismatchError, ValueError):
    """The pairs file was made with other heads, sampling settings or model weights (a ``ValueError`` too, as
    before the shared :class:`~retrieval_heads.artifacts.ResumeMismatchError`)."""


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
        return atomic_write_json(path, {**asdict(self), "n_dropped": self.n_dropped})

    @classmethod
    def load(cls, path: str | Path) -> PairStats:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data.pop("n_dropped", None)
        return cls(**data)


# ---- prompts -----------------------------------------------------------------------------------------


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
        raise ImportError("dataset:NAME prompts need the `datasets` package: pip install 'retrieval-heads[datasets]'") from err
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


def _first_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System message(s) plus the first user message."""
    out = []
    for m in messages:
        out.append(m)
        if m.get("role") == "user":
            return out
    raise ValueError("a chat prompt has no user message")


def _prompt_messages(messages: list[dict[str, Any]], first_turn_only: bool) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ValueError("chat prompts must be a list of {'role': ..., 'content': ...} messages")
    if first_turn_only:
        return _first_turn(messages)
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
    best = None
    for s in stop:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    if best is None:
        return text, False
    i, s = best
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
    """The text the new tokens add to the prompt, leading space included.

    Decoding the new tokens alone drops the leading space of SentencePiece-style
    tokens (``"▁Paris"`` -> ``"Paris"``), and TRL joins prompt and response as
    strings, so the response is read off the decoded prompt + response instead.
    """
    prompt = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = tokenizer.decode(prompt_ids + tokens, skip_special_tokens=True)
    if full.startswith(prompt):
        return full[len(prompt):]
    return tokenizer.decode(tokens, skip_special_tokens=True)  # pragma: no cover - exotic decoders


# ---- the run -----------------------------------------------------------------------------------------


def _check_resume(out_path: Path, heads: list[Head], config: PairConfig, weights: str) -> None:
    path = stats_path(out_path)
    if not path.exists():
        return
    old = PairStats.load(path)
    want = {"heads": heads_to_strings(heads), "settings": config.sampling_settings(), "weights": weights}
    have = {"heads": old.heads, "settings": old.settings, "weights": old.meta.get("weights")}
    if want != have:
        raise PairsResumeMismatchError(
            f"{out_path} was made with other heads, sampling settings or model weights ({path}: {have}); "
            f"this run asks for {want}. Write to a new --out, or delete the old files to start over."
        )


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

    ``prompts`` are records as :func:`load_prompts` returns them. Rows are
    ``{"id", "prompt", "chosen", "rejected", "meta"}`` (conversational when the
    prompt was chat). Returns the :class:`PairStats`, also saved as
    ``OUT.stats.json``. Resumes: prompt ids already in ``OUT`` or
    ``OUT.dropped.jsonl`` are skipped.

    >>> stats = generate_pairs(model, tokenizer, [Head(5, 3)], [{"prompt": "Hi"}], PairConfig(), "p.jsonl")  # doctest: +SKIP
    """
    config = config or PairConfig()
    out_path = Path(out_path)
    spec = ModelSpec.from_model(model)
    heads = check_heads(heads, spec.n_layers, spec.n_heads)  # fail before any work on a head the model lacks
    items = prepare_prompts(prompts, tokenizer, config)
    identity = model_identity(model)
    _check_resume(out_path, heads, config, identity["weights"])
    done = {r["id"] for r in read_jsonl(out_path)} | {r["id"] for r in read_jsonl(dropped_path(out_path))}
    pending = [it for it in items if it.id not in done]
    n_resumed = len(items) - len(pending)
    meta = run_metadata(**identity, engine=config.engine, n_heads_masked=len(heads))
    PairStats(heads=heads_to_strings(heads), settings=config.sampling_settings(), meta=meta).save(stats_path(out_path))

    if config.max_prompt_tokens is not None:
        keep = []
        for it in pending:
            n = len(encode_prompt(tokenizer, it))
            if n > config.max_prompt_tokens:
                append_jsonl(dropped_path(out_path), {"id": it.id, "reason": "prompt_too_long", "prompt_tokens": n})
            else:
                keep.append(it)
        pending = keep
    if pending:
        if config.engine == "vllm":
            from .vllm_engine import run_vllm

            run_vllm(model, tokenizer, heads, pending, config, out_path)
        else:
            _run_transformers(model, tokenizer, heads, pending, config, out_path, progress)
    stats = _summarise(out_path, items, heads, config, n_resumed, len(pending), meta)
    stats.save(stats_path(out_path))
    return stats


def _run_transformers(model, tokenizer, heads, pending, config, out_path, progress) -> None:  # noqa: ANN001
    # longest first, so padding is small within a batch and a memory error shows up at once
    lengths = {it.id: len(encode_prompt(tokenizer, it)) for it in pending}
    order = sorted(pending, key=lambda it: -lengths[it.id])
    with progress_bar(progress) as bar:
        task = bar.add_task("RetMask pairs", total=len(order))
        for start in range(0, len(order), config.batch_size):
            batch = order[start: start + config.batch_size]
            seeds = [pair_seeds(it, config) for it in batch]
            chosen = _sample_batch(model, tokenizer, batch, [s[0] for s in seeds], config)
            with masked_heads(model, heads, mode="zero"):
                rejected = _sample_batch(model, tokenizer, batch, [s[1] for s in seeds], config)
            for it, c, r, s in zip(batch, chosen, rejected, seeds, strict=True):
                row, reason = pair_row(it, c, r, s)
                append_jsonl(dropped_path(out_path) if reason else out_path, row)
            bar.advance(task, len(batch))
