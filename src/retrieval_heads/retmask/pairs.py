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

The output JSONL is the journal of a run (:func:`retrieval_heads.runs.open_run`,
recorded in ``OUT.run.json``): a re-run with the same heads, sampling settings
and weights skips the prompt ids already written (kept pairs in ``OUT``,
dropped ones in ``OUT.dropped.jsonl``), other ones are refused by name; the
counts in ``OUT.stats.json`` cover the whole file.

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

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from ..heads import Head, HeadScores, check_heads, heads_to_strings
from ..masking import masked_heads
from ..model_spec import ModelSpec, eos_token_ids, model_identity
from ..runs import Run, atomic_write_json, flags, open_run, read_jsonl, stamp, track
from ..selection import concentration, random_heads, select_heads

DROP_REASONS = ("empty_chosen", "empty_rejected", "empty_both", "identical", "prompt_too_long")
ENGINES = ("transformers", "vllm")


class ChatTemplateError(ValueError):
    """A chat-formatted prompt was given to a tokenizer that has no chat template."""


@dataclass
class PairConfig:
    """Settings of RetMask pair generation (paper defaults: temperature 0.6, top_p 1.0).

    Sampling: ``temperature``, ``top_p``, ``max_new_tokens``, ``seed`` (the base
    seed; each prompt's seed is derived from it and the prompt id) and
    ``same_seed_for_both``. Stopping: the model's EOS tokens, and ``stop``
    strings (a response is cut after the first one; ``include_stop`` keeps it).
    Prompts: ``first_turn_only`` keeps the system message(s) and the first user
    turn of a conversation (the paper's first-turn chat prompts);
    ``max_prompt_tokens`` drops longer prompts (counted as ``prompt_too_long``).
    Engine: ``batch_size`` (transformers), ``engine`` (``transformers`` or
    ``vllm``), ``vllm_kwargs`` (passed to ``vllm.LLM``), ``ablated_dir`` (where
    the vLLM engine writes the baked ablated checkpoint).

    >>> PairConfig(max_new_tokens=32).temperature
    0.6
    """

    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature (paper: 0.6)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (paper: 1.0)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens generated per response."})
    seed: int = field(default=0, metadata={"help": "Base seed; per-prompt seeds are derived from it and the id."})
    same_seed_for_both: bool = field(
        default=True,
        metadata={"help": "Sample chosen and rejected with the same per-prompt random stream (common random numbers)."},
    )
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Stop strings (besides EOS), e.g. ('\\n',)."})
    include_stop: bool = field(default=True, metadata={"help": "Keep the stop string at the end of a response."})
    first_turn_only: bool = field(
        default=True, metadata={"help": "Chat prompts: keep system message(s) and the first user turn only."}
    )
    max_prompt_tokens: int | None = field(
        default=None, metadata={"help": "Drop prompts longer than this many tokens (None: keep all)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call (transformers engine)."})
    engine: str = field(default="transformers", metadata={"help": "Generation engine: transformers or vllm."})
    vllm_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "Keyword arguments for vllm.LLM."})
    ablated_dir: str | None = field(
        default=None, metadata={"help": "vLLM engine: directory for the baked ablated checkpoint (default: OUT.ablated)."}
    )

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (RetMask samples; the paper uses 0.6)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        self.stop = tuple(self.stop)
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    def sampling_settings(self) -> dict[str, Any]:
        """The settings that determine the responses (a resumed run must use the same)."""
        keys = ("temperature", "top_p", "max_new_tokens", "seed", "same_seed_for_both", "stop", "include_stop",
                "first_turn_only", "max_prompt_tokens")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keys}


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


@dataclass
class PromptItem:
    """One prompt: its id, the text fed to the model, the original form (str or messages) and extra fields."""

    id: str
    text: str
    original: str | list[dict[str, Any]]
    is_chat: bool
    extra: dict[str, Any] = field(default_factory=dict)


# ---- prompts -----------------------------------------------------------------------------------------


def run_path(out_path: str | Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.run.json`` (the run's settings: heads, sampling, weights)."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".run.json")


def stats_path(out_path: str | Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.stats.json``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".stats.json")


def dropped_path(out_path: str | Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.dropped.jsonl`` (the dropped prompts, with both responses and the reason)."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".dropped.jsonl")


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


def choose_heads(
    scores: HeadScores,
    top_k: int | None = None,
    threshold: float | None = None,
    random_control_seed: int | None = None,
) -> tuple[list[Head], dict[str, Any]]:
    """The heads to mask, and a description of the choice for metadata.

    Top-K or score > threshold; with ``random_control_seed`` the same number
    of *random* heads drawn outside that selection instead (the control).

    >>> import torch
    >>> s = HeadScores(torch.tensor([[0.9, 0.0], [0.5, 0.1]]))
    >>> choose_heads(s, top_k=1)[0]
    [Head(layer=0, head=0)]
    >>> choose_heads(s, top_k=1, random_control_seed=0)[0] != [Head(0, 0)]
    True
    """
    selected = select_heads(scores, top=top_k, threshold=threshold)
    info: dict[str, Any] = {"top_k": top_k, "threshold": threshold, "selected": heads_to_strings(selected),
                            "concentration": concentration(scores)}
    if random_control_seed is None:
        return selected, {**info, "kind": "retrieval", "masked": heads_to_strings(selected)}
    control = random_heads(scores.n_layers, scores.n_heads, len(selected), seed=random_control_seed, exclude=selected)
    return control, {**info, "kind": "random_control", "random_seed": random_control_seed,
                     "masked": heads_to_strings(control)}  # "selected" stays the retrieval heads it avoids


def prompt_seed(base_seed: int, prompt_id: str, stream: str = "") -> int:
    """A 63-bit seed for one prompt, derived from the base seed and the prompt id (stable across runs).

    >>> prompt_seed(0, "a") == prompt_seed(0, "a") != prompt_seed(1, "a")
    True
    """
    digest = hashlib.sha256(f"{base_seed}\x00{prompt_id}\x00{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ---- sampling ----------------------------------------------------------------------------------------


class PerRowSampler(LogitsProcessor):
    """Temperature + top-p sampling with one ``torch.Generator`` per batch row.

    Used with greedy ``generate`` (``do_sample=False``): it samples the next
    token of each row from that row's own generator and returns logits that are
    ``-inf`` except at the drawn token, so greedy picks it. A row's draws depend
    only on its seed and its logits, never on the other rows of the batch.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device):
        self.temperature, self.top_p = temperature, top_p
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(s))
            self.generators.append(g)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # (B, V)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least the best token)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        picks = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]
        chosen = torch.cat(picks)  # (B,)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
        return out


@dataclass
class Response:
    text: str
    n_tokens: int
    stopped: bool  # ended on EOS or a stop string (False: cut by max_new_tokens)


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
    device = next(model.parameters()).device
    enc = [_encode(tokenizer, it) for it in items]
    width = max(len(e) for e in enc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_ids(model, tokenizer)[0]
    input_ids = torch.full((len(enc), width), pad, dtype=torch.long)
    attention = torch.zeros((len(enc), width), dtype=torch.long)
    for i, e in enumerate(enc):  # left padding: the last prompt token of every row is the last column
        input_ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
        attention[i, width - len(e):] = 1
    eos = eos_token_ids(model, tokenizer)
    gen_config = GenerationConfig(
        max_new_tokens=config.max_new_tokens, do_sample=False, eos_token_id=eos or None, pad_token_id=pad,
        stop_strings=list(config.stop) or None,
    )
    sampler = PerRowSampler(seeds, config.temperature, config.top_p, device)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=gen_config,
            logits_processor=LogitsProcessorList([sampler]), tokenizer=tokenizer if config.stop else None,
        )
    new = out[:, width:].cpu()
    responses = []
    for prompt_ids, row in zip(enc, new.tolist(), strict=True):
        ended = next((j for j, t in enumerate(row) if t in eos), None)
        tokens = row[:ended] if ended is not None else row
        text = _decode_continuation(tokenizer, prompt_ids, tokens)
        text, hit_stop = _cut_at_stop(text, config.stop, config.include_stop)
        responses.append(Response(text, len(tokens), ended is not None or hit_stop))
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


def _encode(tokenizer, item: PromptItem) -> list[int]:  # noqa: ANN001
    # a rendered chat template already holds its special tokens (BOS ...): do not add them twice
    return tokenizer(item.text, add_special_tokens=not item.is_chat)["input_ids"]


def _drop_reason(chosen: str, rejected: str) -> str | None:
    empty_c, empty_r = not chosen.strip(), not rejected.strip()
    if empty_c and empty_r:
        return "empty_both"
    if empty_c:
        return "empty_chosen"
    if empty_r:
        return "empty_rejected"
    if chosen == rejected:
        return "identical"
    return None


def _as_completion(item: PromptItem, text: str) -> str | list[dict[str, str]]:
    return [{"role": "assistant", "content": text}] if item.is_chat else text


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


def _record(item: PromptItem, chosen: Response, rejected: Response, seeds: tuple[int, int]) -> tuple[dict, str | None]:
    if item.is_chat:  # the chat template renders its own separators around the reply
        chosen = Response(chosen.text.strip(), chosen.n_tokens, chosen.stopped)
        rejected = Response(rejected.text.strip(), rejected.n_tokens, rejected.stopped)
    reason = _drop_reason(chosen.text, rejected.text)
    meta = {
        "seed_chosen": seeds[0], "seed_rejected": seeds[1],
        "chosen_tokens": chosen.n_tokens, "rejected_tokens": rejected.n_tokens,
        "chosen_stopped": chosen.stopped, "rejected_stopped": rejected.stopped,
        **({"input": item.extra} if item.extra else {}),
    }
    if reason is not None:
        return {"id": item.id, "reason": reason, "prompt": item.original, "chosen": chosen.text,
                "rejected": rejected.text, "meta": meta}, reason
    row = {"id": item.id, "prompt": item.original, "chosen": _as_completion(item, chosen.text),
           "rejected": _as_completion(item, rejected.text), "meta": meta}
    return row, None


def _seeds(item: PromptItem, config: PairConfig) -> tuple[int, int]:
    chosen = prompt_seed(config.seed, item.id, "chosen")
    return chosen, chosen if config.same_seed_for_both else prompt_seed(config.seed, item.id, "rejected")


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
            n = len(_encode(tokenizer, it))
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
    lengths = {it.id: len(_encode(tokenizer, it)) for it in pending}
    order = sorted(pending, key=lambda it: -lengths[it.id])
    dropped = dropped_path(run.journal).name
    with track("RetMask pairs", total, total - len(order), enabled=progress) as bar:
        for start in range(0, len(order), config.batch_size):
            batch = order[start: start + config.batch_size]
            seeds = [_seeds(it, config) for it in batch]
            chosen = _sample_batch(model, tokenizer, batch, [s[0] for s in seeds], config)
            with masked_heads(model, heads, mode="zero"):
                rejected = _sample_batch(model, tokenizer, batch, [s[1] for s in seeds], config)
            for it, c, r, s in zip(batch, chosen, rejected, seeds, strict=True):
                row, reason = _record(it, c, r, s)
                run.append(row, dropped if reason else None)
            bar.advance(len(batch))
