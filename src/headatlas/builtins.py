"""Built-in models: a registry that :func:`~headatlas.model_spec.load_model` consults and plug-ins fill.

A built-in model is a name (``--model NAME``) with a shipped checkpoint, a
*prompt source* (builds its detection/NIAH prompts for a
:class:`~headatlas.prompt_sources.PromptRequest`) and a *task suite*
(held-out example sets by task, scored by exact match: the RetMask evaluation,
the lm-eval fixtures and the model card's measurements use it). The core never
imports a built-in model; packages declare theirs as a Python entry point::

    [project.entry-points."headatlas.builtin_models"]
    organism = "headatlas.organism.plugin:entry"

The entry point names a callable returning a :class:`BuiltinModel` (or an
iterable of them). Entry points are read lazily, on the first lookup. Where no
installed distribution declares the group (a source checkout whose installed
metadata predates the entry point), the modules in :data:`FALLBACK_PLUGINS`
are loaded instead (see ``docs/decisions.md``). :func:`register` adds one by hand.

>>> get_builtin("organism").name, get_builtin("no-such-model")
('organism', None)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ENTRY_POINT_GROUP = "headatlas.builtin_models"
#: Plug-ins loaded only when no installed distribution declares :data:`ENTRY_POINT_GROUP`.
FALLBACK_PLUGINS: tuple[str, ...] = ("headatlas.organism.plugin:entry",)


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model.

    ``checkpoint()``: its directory (resolved when used). ``prompts(model_path, tokenizer, max_positions,
    request)``: its prompts. ``tasks(model_path)``: its task suite (``tasks``, ``make_eval_set(task, n, seed,
    lengths=..., langs=...)``, ``exact_match_accuracy(model, tokenizer, examples, batch_size)``). ``marker``:
    a file marking another checkpoint as trained like this one (it then gets these prompts and tasks too).
    ``conflict(model_path, n, seed, lengths)``: knowledge-conflict items for DeCoRe (``decore --task conflict``):
    dicts ``{"id", "prompt", "context_answer", "memory_answer"}``.
    """

    name: str
    checkpoint: Callable[[], Path]
    prompts: Callable[..., list[Any]] | None
    tasks: Callable[[str | None], Any] | None
    marker: str | None = None
    conflict: Callable[..., list[dict[str, Any]]] | None = None


_REGISTRY: dict[str, BuiltinModel] = {}
_loaded = False


def register(model: BuiltinModel) -> None:
    """Add (or replace) a built-in model."""
    _REGISTRY[model.name] = model


def _add(obj: Any) -> None:
    if callable(obj) and not isinstance(obj, BuiltinModel):
        obj = obj()
    for model in [obj] if isinstance(obj, BuiltinModel) else list(obj):
        _REGISTRY.setdefault(model.name, model)  # an explicit register() wins over a plug-in


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    points: Iterable[Any] = metadata.entry_points(group=ENTRY_POINT_GROUP)
    targets = [ep.load for ep in points] or [
        (lambda ref=ref: getattr(importlib.import_module(ref.split(":")[0]), ref.split(":")[1]))
        for ref in FALLBACK_PLUGINS
    ]
    for load in targets:
        try:
            _add(load())
        except ImportError:  # a plug-in whose package is not installed: it offers no model
            continue


def builtin_models() -> dict[str, BuiltinModel]:
    """Every registered built-in model by name."""
    _load_plugins()
    return dict(_REGISTRY)


def default_builtin() -> str:
    """The name of the first registered built-in model (what a setting with no model given uses)."""
    names = list(builtin_models())
    if not names:
        raise ValueError("no built-in model is installed")
    return names[0]


def get_builtin(name: str) -> BuiltinModel | None:
    """The built-in model called ``name``, or None."""
    return builtin_models().get(name)


def builtin_for(name_or_path: str | Path) -> BuiltinModel | None:
    """The built-in model ``name_or_path`` names, or whose marker file its directory holds, or None."""
    models = builtin_models()
    if str(name_or_path) in models:
        return models[str(name_or_path)]
    path = Path(name_or_path)
    for model in models.values():
        if model.marker and (path / model.marker).is_file():
            return model
    return None


def builtin_name(name_or_path: Any) -> Any:
    """The name a user gives for a model: a built-in model's shipped checkpoint directory becomes its name.

    Anything else (a hub id, another directory, a non-string) comes back unchanged.
    """
    if not isinstance(name_or_path, str) or "/" not in name_or_path:
        return name_or_path
    for model in builtin_models().values():
        try:
            if Path(name_or_path).resolve() == model.checkpoint().resolve():
                return model.name
        except OSError:
            continue
    return name_or_path


def task_suite(name_or_path: str | Path) -> Any:
    """The task suite of a built-in model (or of a checkpoint trained like one), for that checkpoint.

    Raises ``ValueError`` (one line) when ``name_or_path`` is no built-in model.
    """
    model = builtin_for(name_or_path)
    if model is None or model.tasks is None:
        known = ", ".join(sorted(builtin_models())) or "none installed"
        raise ValueError(f"{name_or_path} has no task suite: tasks come with a built-in model ({known})")
    path = None if str(name_or_path) == model.name else str(name_or_path)
    return model.tasks(path)
