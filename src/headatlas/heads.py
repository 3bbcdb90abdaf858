"""Typed heads and head-score files.

A *head* is a (layer, query-head) pair, zero-based, written ``"L.H"`` in text.
A :class:`HeadScores` is a ``[n_layers, n_heads]`` float tensor plus the
metadata of the run that produced it. It is saved as JSON::

    {"format": "headatlas/head-scores", "format_version": 1, "n_layers": 32, "n_heads": 32,
     "null_level": 0.0,  # the scorer's own null level: a head scoring at or below it is not scored
     "scores": [[0.0, 0.12, ...], ...],  # one list per layer
     "meta": {"model": ..., "method": ..., "seed": ..., "version": ..., ...}}

A head is *scored* when its score lies above the scorer's null level (0 for
copy and transition events: a head with no event scores 0 and is no retrieval
head). Rankings, "top" tables and selections only ever hold scored heads
(:meth:`HeadScores.scored`, :meth:`HeadScores.top_k`); files without a
``null_level`` (written before it existed) read as 0.

The reference code's format (``{"L-H": [per-sample scores]}``) can be read and
written too (:meth:`HeadScores.from_reference` / :meth:`HeadScores.to_reference`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .runs import atomic_write_text, canonical_format

FORMAT_NAME = "headatlas/head-scores"
FORMAT_VERSION = 1


class HeadScoreFileError(ValueError):
    """A head-score file is corrupt, of an unknown format, or does not fit the model."""


class Head(NamedTuple):
    """One attention head: zero-based ``layer`` and query-``head`` index.

    >>> Head(3, 7)
    Head(layer=3, head=7)
    >>> str(Head(3, 7)), Head.parse("3.7"), Head.parse("3-7")
    ('3.7', Head(layer=3, head=7), Head(layer=3, head=7))
    """

    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """Parse ``"L.H"`` (this project) or ``"L-H"`` (the reference code)."""
        for sep in (".", "-", ":"):
            if sep in text:
                left, right = text.split(sep, 1)
                try:
                    return cls(int(left), int(right))
                except ValueError:
                    break
        raise ValueError(f"cannot parse head {text!r}: expected 'LAYER.HEAD', e.g. '12.5'")


def check_heads(heads: Iterable[Head | tuple[int, int]], n_layers: int, n_heads: int) -> list[Head]:
    """Return ``heads`` as sorted, unique :class:`Head` s, or raise ``ValueError`` naming a head that does not exist."""
    out = set()
    for item in heads:
        h = Head(int(item[0]), int(item[1]))
        if not (0 <= h.layer < n_layers and 0 <= h.head < n_heads):
            raise ValueError(
                f"head {h} does not exist: the model has {n_layers} layers x {n_heads} query heads "
                f"(valid: 0.0 .. {n_layers - 1}.{n_heads - 1})"
            )
        out.add(h)
    return sorted(out)


@dataclass(eq=False)  # identity: comparing score tensors elementwise has no single truth value
class HeadScores:
    """Per-head scores ``[n_layers, n_heads]`` and the metadata of the run that made them.

    ``null_level`` is the scorer's own null level: only heads scoring above it are *scored*
    (0 for event counts; a continuous score declares its own).

    >>> import torch
    >>> s = HeadScores(torch.tensor([[0.0, 0.5], [0.2, 0.1]]), meta={"model": "toy"})
    >>> s.top_k(2)
    [Head(layer=0, head=1), Head(layer=1, head=0)]
    >>> s.top_k(4)  # only 3 heads score above the null level 0
    [Head(layer=0, head=1), Head(layer=1, head=0), Head(layer=1, head=1)]
    >>> s.n_scored, HeadScores(s.scores, null_level=0.15).n_scored
    (3, 2)
    >>> s[Head(1, 0)]
    0.2...
    """

    scores: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    null_level: float = 0.0

    def __post_init__(self) -> None:
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).detach().cpu()
        if self.scores.ndim != 2:
            raise HeadScoreFileError(f"scores must be [n_layers, n_heads], got shape {tuple(self.scores.shape)}")
        finite = torch.isfinite(self.scores)
        # a layer without softmax heads (linear attention, SSM, convolution) is a row of NaN: never scored
        unscored_layer = self.scores.isnan().all(dim=1, keepdim=True) if self.scores.numel() else finite
        if not (finite | unscored_layer).all():
            raise HeadScoreFileError("scores contain NaN or infinite values (NaN only fills a whole layer without "
                                     "softmax heads)")
        if isinstance(self.null_level, bool) or not isinstance(self.null_level, (int, float)) \
                or not math.isfinite(self.null_level):
            raise HeadScoreFileError(f"null_level must be a finite number, got {self.null_level!r}")
        self.null_level = float(self.null_level)

    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.scores.shape[1])

    def __getitem__(self, head: Head | tuple[int, int]) -> float:
        return float(self.scores[head[0], head[1]])

    @property
    def n_total(self) -> int:
        """Every head of the map (``n_layers * n_heads``)."""
        return self.n_layers * self.n_heads

    @property
    def n_scored(self) -> int:
        """How many heads score above the null level."""
        return sum(1 for x in self.scores.flatten().tolist() if x > self.null_level)

    def ranked(self) -> list[tuple[Head, float]]:
        """All heads, best first (ties broken by layer, then head), scored or not: for "top" lists use :meth:`scored`."""
        flat = self.scores.flatten().tolist()
        order = sorted((i for i in range(len(flat)) if flat[i] == flat[i]), key=lambda i: (-flat[i], i))  # NaN: none
        return [(Head(i // self.n_heads, i % self.n_heads), flat[i]) for i in order]

    def scored(self) -> list[tuple[Head, float]]:
        """The heads scoring above the null level, best first: the only heads a "top" table or selection shows."""
        return [(h, s) for h, s in self.ranked() if s > self.null_level]

    def top_k(self, k: int) -> list[Head]:
        """The ``k`` best scored heads, best first; fewer when fewer than ``k`` heads score above the null level."""
        if k < 0:
            raise ValueError("k must be >= 0")
        return [h for h, _ in self.scored()[:k]]

    def above(self, threshold: float) -> list[Head]:
        """Scored heads whose score is strictly above ``threshold``, best first."""
        return [h for h, s in self.scored() if s > threshold]

    def check_model(self, n_layers: int, n_heads: int, model_name: str | None = None, *,
                    allow_other_model: bool = False) -> None:
        """Raise :class:`HeadScoreFileError` when these scores were made for another model.

        Another shape is always refused. With ``model_name`` (the model the heads will be applied to, as
        the user names it), a file whose metadata names another model of the same shape is refused too,
        naming both, unless ``allow_other_model``; the model's recorded base model (a RetMask or ablated
        checkpoint, :func:`recorded_base_models`) counts as the same model. A file that names no model
        (the reference format, scores made in memory) is not checked.
        """
        made_for = self.meta.get("model")
        if (self.n_layers, self.n_heads) != (n_layers, n_heads):
            raise HeadScoreFileError(
                f"head scores are {self.n_layers} layers x {self.n_heads} heads (made for {made_for or 'an unknown model'}), "
                f"but the model{' ' + model_name if model_name else ''} has {n_layers} x {n_heads}"
            )
        if model_name is None or allow_other_model or not isinstance(made_for, str) or not made_for:
            return
        if not model_names(made_for) & (model_names(model_name) | {n for b in recorded_base_models(model_name)
                                                                    for n in model_names(b)}):
            raise HeadScoreFileError(
                f"head scores were made for model {made_for}, not for {model_name}; "
                "pass --allow-other-model (allow_other_model=True) to use them on it anyway"
            )

    # ---- files -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "null_level": self.null_level,
                "scores": [[round(float(x), 8) if x == x else None for x in row] for row in self.scores.tolist()],
                "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        """Write the scores as JSON, atomically (a crash never leaves a half-written file)."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def from_json(cls, data: Any, source: str = "<data>") -> HeadScores:
        if not isinstance(data, Mapping):
            raise HeadScoreFileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if canonical_format(data.get("format")) != FORMAT_NAME:
            if data and all(isinstance(k, str) and isinstance(v, list) for k, v in data.items()):
                return cls.from_reference(data, source=source)
            raise HeadScoreFileError(f"{source}: not a head-score file (format {data.get('format')!r})")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise HeadScoreFileError(
                f"{source}: format_version {data['format_version']} is newer than this package reads ({FORMAT_VERSION})"
            )
        rows = data.get("scores")
        if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
            raise HeadScoreFileError(f"{source}: 'scores' must be a non-empty list of per-layer lists")
        widths = {len(r) for r in rows}
        if len(widths) != 1:
            raise HeadScoreFileError(f"{source}: layers have different head counts {sorted(widths)}")
        n_layers, n_heads = len(rows), widths.pop()
        if (data.get("n_layers", n_layers), data.get("n_heads", n_heads)) != (n_layers, n_heads):
            raise HeadScoreFileError(
                f"{source}: header says {data.get('n_layers')} x {data.get('n_heads')} heads "
                f"but 'scores' is {n_layers} x {n_heads}"
            )
        try:
            tensor = torch.tensor([[float("nan") if x is None else x for x in r] for r in rows], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise HeadScoreFileError(f"{source}: 'scores' holds non-numbers ({err})") from err
        null_level = data.get("null_level", 0.0)  # files written before it existed: event scores, null level 0
        if isinstance(null_level, bool) or not isinstance(null_level, (int, float)) or not math.isfinite(null_level):
            raise HeadScoreFileError(f"{source}: 'null_level' must be a finite number, got {null_level!r}")
        return cls(tensor, dict(data.get("meta") or {}), float(null_level))

    @classmethod
    def load(cls, path: str | Path) -> HeadScores:
        """Read a head-score file (this project's format or the reference code's)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HeadScoreFileError(f"{path}: corrupt head-score file ({err})") from err
        return cls.from_json(data, source=str(path))

    # ---- the reference code's format ----------------------------------------------------------
    @classmethod
    def from_reference(cls, data: Mapping[str, list[float]], n_layers: int | None = None, n_heads: int | None = None,
                       source: str = "<reference>") -> HeadScores:
        """Read ``{"L-H": [per-sample scores]}``; a head's score is the mean of its list (0 when empty)."""
        parsed: dict[Head, float] = {}
        for key, values in data.items():
            try:
                head = Head.parse(key)
            except ValueError as err:
                raise HeadScoreFileError(f"{source}: {err}") from err
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
                raise HeadScoreFileError(f"{source}: head {key} must map to a list of numbers")
            parsed[head] = sum(values) / len(values) if values else 0.0
        if not parsed:
            raise HeadScoreFileError(f"{source}: no heads")
        n_layers = n_layers or max(h.layer for h in parsed) + 1
        n_heads = n_heads or max(h.head for h in parsed) + 1
        scores = torch.zeros(n_layers, n_heads)
        for head, value in parsed.items():
            if head.layer >= n_layers or head.head >= n_heads:
                raise HeadScoreFileError(f"{source}: head {head} outside {n_layers} x {n_heads}")
            scores[head.layer, head.head] = value
        return cls(scores, {"imported_from": "reference-format", "source": source})

    def to_reference(self, per_sample: Mapping[Head, list[float]] | None = None) -> dict[str, list[float]]:
        """Write ``{"L-H": [scores]}``; without per-sample scores each list holds the head's mean score."""
        out: dict[str, list[float]] = {}
        for layer in range(self.n_layers):
            for head in range(self.n_heads):
                h = Head(layer, head)
                out[f"{layer}-{head}"] = list(per_sample[h]) if per_sample and h in per_sample else [self[h]]
        return out


def heads_to_strings(heads: Iterable[Head]) -> list[str]:
    """``[Head(1, 2)] -> ["1.2"]`` (for JSON metadata)."""
    return [str(Head(*h)) for h in heads]



#: Files beside a checkpoint that record the model it was made from (``base_model``): the ablated checkpoint's
#: (:data:`headatlas.masking.ABLATION_FILE`, and its name before the rename) and RetMask training's
#: (:data:`headatlas.retmask.train.RUN_FILE`; its merged LoRA model sits in the ``merged`` folder below it).
BASE_MODEL_RECORDS = ("headatlas_ablation.json", "retrieval_heads_ablation.json", "retmask_run.json")


def model_names(name_or_path: str) -> set[str]:
    """The names one model goes by: as given, its built-in name, and its resolved directory when it is one."""
    from .builtins import builtin_name, get_builtin

    names = {name_or_path, str(builtin_name(name_or_path))}
    builtin = get_builtin(name_or_path)
    try:
        path = builtin.checkpoint() if builtin is not None else Path(name_or_path)
        if path.is_dir():
            names |= {str(path.resolve()), str(builtin_name(str(path.resolve())))}
    except OSError:
        pass
    return names


def recorded_base_models(name_or_path: str) -> list[str]:
    """The base models a checkpoint directory records (an ablated or RetMask-trained checkpoint); ``[]`` for others."""
    path = Path(name_or_path)
    if not path.is_dir():
        return []
    found = []
    for folder in (path, path.parent) if path.name == "merged" else (path,):
        for name in BASE_MODEL_RECORDS:
            try:
                base = json.loads((folder / name).read_text(encoding="utf-8")).get("base_model")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(base, str) and base:
                found.append(base)
    return found
