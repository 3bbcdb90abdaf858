"""Config is the CLI: a command's options are made from its config dataclass's fields (the TRL way).

Each setting is written once, as a dataclass field with ``metadata={"help": ...}``; :func:`option`
turns it into a ``typer.Option`` with the field's default and help, so a command reads::

    mode: str = option(DetectConfig, "mode")

The options several commands share are written once too, as :class:`ModelOptions`,
:class:`MaskingOptions` and :class:`GridOptions`. :func:`config_parameters` makes the
parameters of every field of a config, for a command that takes them all (``organism train``).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any

import typer

_FROM_FIELD: Any = object()


@dataclass
class ModelOptions:
    """Which model, and how it is loaded (every command that loads a model)."""

    model: str = field(default="organism", metadata={"help": "Hub id, local checkpoint, or a built-in name (organism)."})
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:1, cpu ... (default: CUDA when available)."})
    device_map: str | None = field(default=None, metadata={
        "help": "auto: split a model larger than one GPU over the GPUs and CPU (accelerate); replaces --device."})
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention backend: sdpa (default), eager, flash_attention_2."}
    )


@dataclass
class MaskingOptions:
    """Which heads are masked and how (niah-eval, compare)."""

    heads: list[str] = field(
        default_factory=list, metadata={"help": "A head set NAME=head_scores.json (repeat for several)."}
    )
    top_k: int | None = field(
        default=None, metadata={"help": "Heads masked per set, and per random control (default: 5 % of the model's heads)."}
    )
    mode: str = field(default="zero", metadata={"help": "zero | mean | uniform."})
    means: str | None = field(default=None, metadata={"help": "Per-head mean outputs (.pt/.safetensors) for --mode mean."})
    random_seeds: int = field(default=0, metadata={"help": "Random controls (seeds 0..n-1), drawn outside every set."})
    layer_matched: bool = field(
        default=False, metadata={"help": "Random controls follow each set's per-layer head counts."}
    )


@dataclass
class GridOptions:
    """The needle-in-a-haystack grid (detect, languages, niah-eval)."""

    lengths: str = field(default="256,512,1024", metadata={"help": "Context lengths: 'start:stop:count' or '256,512'."})
    depths: str = field(default="5", metadata={"help": "Needle depths: a count (ends included) or '0,0.5,1'."})
    per_cell: int = field(default=2, metadata={"help": "Built-in model: prompts per length x depth cell."})
    haystack: str | None = field(
        default=None,
        metadata={"help": "A built-in language, folder, file, dataset:NAME[:CONFIG] or organism (default: "
                          "organism for the built-in model, else the needles' language)."},
    )
    needles: str | None = field(default=None, metadata={"help": "Needles JSONL (default: the built-in ones)."})
    chat_template: bool = field(default=False, metadata={"help": "Wrap prompts in the tokenizer's chat template."})
    batch_size: int = field(default=1, metadata={"help": "Prompts per forward (results do not depend on it)."})
    seed: int = field(default=0, metadata={"help": "Seed (recorded in the outputs)."})


def config_field(config: type, name: str) -> dataclasses.Field:
    """The dataclass field ``name`` of ``config`` (a KeyError names the config when there is none)."""
    found = next((f for f in dataclasses.fields(config) if f.name == name), None)
    if found is None:
        raise KeyError(f"{config.__name__} has no field {name!r}")
    return found


def field_default(f: dataclasses.Field) -> Any:
    """The field's default (``...``, typer's "required", when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


def option(config: type, name: str, *flags: str, default: Any = _FROM_FIELD, **kwargs: Any) -> Any:
    """A ``typer.Option`` for field ``name`` of dataclass ``config``: its default, its help, ``--name-like-this``.

    ``default`` overrides the field's (a command whose own default differs); ``flags`` the option names;
    other keywords go to ``typer.Option`` (``min=1``, ``exists=True``...).
    """
    f = config_field(config, name)
    if "help" not in f.metadata:
        raise ValueError(f"{config.__name__}.{name} has no help metadata: add field(metadata={{'help': ...}})")
    value = field_default(f) if default is _FROM_FIELD else default
    names = flags or ("--" + name.replace("_", "-"),)
    return typer.Option(value, *names, help=f.metadata["help"], **kwargs)


def config_parameters(config: type, *, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """Keyword parameters with a ``typer.Option`` for every int/float/str/bool field of ``config``.

    Each defaults to ``None`` (so a command can tell which settings were given); its help is the
    field's, with the field's own default.
    """
    hints = typing.get_type_hints(config)
    params = []
    for f in dataclasses.fields(config):
        kind = hints[f.name]
        if f.name in skip or kind not in (int, float, str, bool):
            continue
        text = f.metadata.get("help", "")
        text = f"{text[:1].upper()}{text[1:]} [default: {field_default(f)}]"
        opt = typer.Option(None, "--" + f.name.replace("_", "-"), help=text, show_default=False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind | None))
    return params
