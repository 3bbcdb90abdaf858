"""Scorers: the rule that turns what a head attends to into its score, passed into detection as an object.

A :class:`Scorer` decides which units a run journals (NIAH prompts, or its own synthetic sequences),
scores a batch of them through the capture engine (:func:`headatlas.capture_attention`: top-1 keys and,
where a scorer asks, span masses, from the same probabilities, never an attention map), and reduces the
journal to a ``(layers, heads)`` score matrix. :func:`headatlas.detect.detect` runs any scorer under the
same run contract (``runs.open_run``: resumable, refusing other settings) and writes the same
``head_scores.json``, which records the scorer, its settings and its ``null_level`` (the score at or
under which a head counts as not scored). As TransformerLens passes a pattern to ``detect_head``, a
caller may pass any object with this interface::

    detect(model, tok, prompts, DetectConfig(), "runs/x", scorer=MyScorer())

The seven built-in scorers (``docs/atlas.md``): ``copy`` and ``transition`` (this module), ``qr`` and
``mass`` (:mod:`.mass`), ``echo`` and ``induction`` (:mod:`.razor`), ``duo`` (:mod:`.duo`).

>>> from headatlas.detect.config import DetectConfig
>>> scorer_for(DetectConfig(scorer="copy", mode="teacher")).name
'copy'
>>> sorted(SCORERS)
['copy', 'duo', 'echo', 'induction', 'mass', 'qr', 'transition']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..generation import StopTokens, response_text
from ..heads import Head
from ..model_spec import ModelSpec
from ..niah import rouge1_recall
from ..prefix import Prefix
from .config import DetectConfig
from .greedy import greedy_batch
from .inputs import PromptError, PromptItem, prompt_item
from .teacher import teacher_batch


@dataclass
class BatchContext:
    """What a scorer gets besides its batch: the model and what the runner prepared for it."""

    model: Any
    tokenizer: Any
    spec: ModelSpec
    stops: StopTokens | None
    pad_id: int
    prefix: Prefix | None = None


@runtime_checkable
class Scorer(Protocol):
    """The interface every head scorer implements (see the module docstring)."""

    name: str  # the scorer's name (``--scorer NAME``)
    method: str  # recorded as the score file's ``method``
    kind: str  # the head kind: "retrieval", "transition", or the scorer's own
    greedy: bool  # needs the stop tokens of greedy decoding
    shares_prefix: bool  # may reuse a shared prompt prefix (prefix.PrefixKeeper)
    batchable: bool  # may score several units in one forward

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the scores (the run refuses to resume under others)."""
        ...

    def items(self, prompts: Sequence[Any], tokenizer: Any, spec: ModelSpec) -> list[PromptItem]:
        """The units the run journals, one record each (NIAH prompts, or the scorer's own sequences)."""
        ...

    def score_batch(self, ctx: BatchContext, batch: Sequence[PromptItem]) -> list[dict[str, Any]]:
        """One journal record per unit: at least ``counted`` (bool); the rest is the scorer's."""
        ...

    def reduce(self, records: Sequence[dict[str, Any]], n_layers: int, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Head scores ``(L, H)`` from the journal and, per head, the counted units where it scored."""
        ...

    def null_level(self, records: Sequence[dict[str, Any]]) -> float:
        """The score at or under which a head is "not scored" (0 for event counts)."""
        ...

    def resume(self, records: Sequence[dict[str, Any]]) -> None:
        """Take up the state of a resumed run from its journal (a stateful scorer: duo's gates)."""
        ...


# ---- shared pieces ----------------------------------------------------------------------------------
#: The event scores' null level: a head with no copy (or transition) event scores 0 and is no retrieval head.
NULL_LEVEL = 0.0


def events_dict(counts: torch.Tensor) -> dict[str, int]:
    """Sparse ``{"L.H": n}`` of a ``(L, H)`` count tensor."""
    nz = counts.nonzero().tolist()
    values = counts[counts != 0].tolist()
    return {f"{layer}.{head}": int(v) for (layer, head), v in zip(nz, values, strict=True)}


def values_dict(values: torch.Tensor, digits: int = 7) -> dict[str, float]:
    """Sparse ``{"L.H": x}`` of a ``(L, H)`` float tensor (zeros left out, rounded)."""
    out = {}
    for (layer, head), v in zip(values.nonzero().tolist(), values[values != 0].tolist(), strict=True):
        out[f"{layer}.{head}"] = round(float(v), digits)
    return out


def _mean_over_counted(records: Sequence[dict[str, Any]], n_layers: int, n_heads: int,
                       per_unit: Callable[[dict[str, Any]], dict[str, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over counted records of ``per_unit(record)`` ``{"L.H": x}`` (zeros if none counted); per head, the
    counted units where x > 0."""
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    positive = torch.zeros(n_layers, n_heads, dtype=torch.long)
    counted = 0
    for rec in records:
        if not rec["counted"]:
            continue
        counted += 1
        for key, x in per_unit(rec).items():
            head = Head.parse(key)
            total[head.layer, head.head] += x
            positive[head.layer, head.head] += int(x > 0)
    return (total / max(counted, 1)).float(), positive


def mean_of_values(records: Sequence[dict[str, Any]], n_layers: int, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over counted records of their per-unit ``values`` ``{"L.H": x}``; per head, units with x > 0.

    >>> s, n = mean_of_values([{"counted": True, "values": {"0.1": 0.5}}, {"counted": True, "values": {}}], 1, 2)
    >>> s.tolist(), n.tolist()
    ([[0.0, 0.25]], [[0, 1]])
    """
    return _mean_over_counted(records, n_layers, n_heads, lambda rec: rec["values"])


def scores_from_samples(records: Sequence[dict[str, Any]], n_layers: int, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Event scores ``(L, H)``: the mean over counted prompts of events / span length (the answer span, or
    the target answer for transition: the record's ``denominator``), and per head the number of counted
    prompts with at least one event.

    >>> s, n = scores_from_samples([{"counted": True, "span_len": 4, "events": {"0.1": 2}},
    ...                             {"counted": False, "span_len": 4, "events": {"0.0": 4}}], 1, 2)
    >>> s.tolist(), n.tolist()
    ([[0.0, 0.5]], [[0, 1]])
    """
    def per_prompt(rec: dict[str, Any]) -> dict[str, float]:
        denominator = rec["denominator"] if "denominator" in rec else rec["span_len"]
        return {key: n / denominator for key, n in rec["events"].items()}

    return _mean_over_counted(records, n_layers, n_heads, per_prompt)


class PromptScorer:
    """Defaults of a scorer over NIAH prompts: the prompts as units, the mean of per-prompt values."""

    name = "prompt"
    method = "prompt-score"
    kind = "retrieval"
    greedy = False
    shares_prefix = False
    batchable = True
    prompt_kind = "retrieval"  # what prompt_item checks

    def __init__(self, config: DetectConfig) -> None:
        self.config = config

    def fingerprint(self) -> dict[str, Any]:
        return {"scorer": self.name, "seed": self.config.seed}

    def items(self, prompts: Sequence[Any], tokenizer: Any, spec: ModelSpec) -> list[PromptItem]:
        return [prompt_item(p, self.prompt_kind) for p in prompts]

    def reduce(self, records: Sequence[dict[str, Any]], n_layers: int, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mean_of_values(records, n_layers, n_heads)

    def null_level(self, records: Sequence[dict[str, Any]]) -> float:
        return NULL_LEVEL

    def resume(self, records: Sequence[dict[str, Any]]) -> None:
        return None  # stateless: every unit is scored on its own


# ---- copy and transition: copy events (Wu et al.; retrieval-transition heads) -------------------------
class CopyScorer(PromptScorer):
    """Wu et al.'s retrieval score: copy events of the top-1 key per scored step (``docs/detection.md``)."""

    name = "copy"
    method = "retrieval-score"
    kind = "retrieval"

    def __init__(self, config: DetectConfig) -> None:
        super().__init__(config)
        self.greedy = config.mode == "greedy"
        self.shares_prefix = True

    def fingerprint(self) -> dict[str, Any]:
        return self.config.fingerprint()  # the settings today's runs recorded: their runs still resume

    def _event_rule(self, ctx: BatchContext, batch: Sequence[PromptItem]) -> Any:
        return None  # the copy rule, the default of greedy_batch and teacher_batch

    def _reference(self, item: PromptItem) -> tuple[str, str]:
        return item.answer, item.lang

    def _continuation(self, ctx: BatchContext, item: PromptItem) -> list[int] | None:
        return None  # the answer span's own tokens

    def score_batch(self, ctx: BatchContext, batch: Sequence[PromptItem]) -> list[dict[str, Any]]:
        config, tokenizer = self.config, ctx.tokenizer
        seqs, spans = [it.input_ids for it in batch], [it.span for it in batch]
        common = {"dedup": config.dedup, "pad_id": ctx.pad_id, "spec": ctx.spec,
                  "scorer": self._event_rule(ctx, batch), "prefix": ctx.prefix}
        records = []
        if self.greedy:
            assert ctx.stops is not None
            out = greedy_batch(ctx.model, seqs, spans, config.max_new_tokens, ctx.stops, **common)
            for b, item in enumerate(batch):
                reference, ref_lang = self._reference(item)
                n = int(out.n_scored[b])
                response = response_text(tokenizer, out.tokens[b].tolist(), n, out.stop_reason[b])
                rouge = rouge1_recall(response, reference, ref_lang)
                continuation = self._continuation(ctx, item)
                records.append({"response": response, "rouge": round(rouge, 6), "counted": rouge > config.rouge_threshold,
                                "n_scored": n, "stop": out.stop_reason[b],
                                "denominator": len(continuation) if continuation else item.span_len,
                                "events": events_dict(out.counts[b])})
        else:
            continuations = [self._continuation(ctx, it) for it in batch]
            out_t = teacher_batch(ctx.model, seqs, spans,
                                  continuations=None if continuations[0] is None else continuations, **common)
            accuracy = out_t.token_accuracy()
            for b, item in enumerate(batch):
                reference, ref_lang = self._reference(item)
                n = int(out_t.n_answer[b])
                response = tokenizer.decode(out_t.predictions[b, :n].tolist(), skip_special_tokens=True).strip()
                acc = float(accuracy[b])
                records.append({"response": response, "rouge": round(rouge1_recall(response, reference, ref_lang), 6),
                                "token_accuracy": round(acc, 6), "counted": acc > config.accuracy_threshold,
                                "n_scored": n, "denominator": n, "events": events_dict(out_t.counts[b])})
        return records

    def reduce(self, records: Sequence[dict[str, Any]], n_layers: int, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        return scores_from_samples(records, n_layers, n_heads)


class TransitionScorer(CopyScorer):
    """Retrieval-transition heads: the emitted token renders the attended source token in the target
    language (``docs/multilingual.md``)."""

    name = "transition"
    method = "transition-score"
    kind = "transition"
    prompt_kind = "transition"

    def _event_rule(self, ctx: BatchContext, batch: Sequence[PromptItem]) -> Any:
        from .transition import make_transition_scorer

        return make_transition_scorer(batch, ctx.tokenizer, self.config.alignment, self.config.lexicon)

    def _reference(self, item: PromptItem) -> tuple[str, str]:
        return str(item.target_answer), str(item.target_lang)

    def _continuation(self, ctx: BatchContext, item: PromptItem) -> list[int]:
        ids = ctx.tokenizer(item.target_continuation, add_special_tokens=False)["input_ids"]
        if not ids:
            raise PromptError(f"prompt {item.prompt_id}: the target answer {item.target_answer!r} has no tokens")
        return list(ids)


# ---- the registry: a name -> the scorer's class (the one place a name becomes an object) ------------------
def _lazy(path: str) -> Callable[[DetectConfig], Scorer]:
    module, name = path.split(":")
    return lambda config: getattr(importlib.import_module(module, __package__), name)(config)


SCORERS: dict[str, Callable[[DetectConfig], Scorer]] = {
    "copy": CopyScorer,
    "transition": TransitionScorer,
    "qr": _lazy(".mass:QrScorer"),
    "mass": _lazy(".mass:MassScorer"),
    "echo": _lazy(".razor:EchoScorer"),
    "induction": _lazy(".razor:InductionScorer"),
    "duo": _lazy(".duo:DuoScorer"),
}


def scorer_for(config: DetectConfig) -> Scorer:
    """The built-in scorer ``config.scorer`` names, with ``config``'s settings."""
    return SCORERS[config.scorer](config)
