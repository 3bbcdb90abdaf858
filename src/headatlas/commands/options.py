"""Config is the CLI: every option of a command is generated from a field of its config dataclasses.

A setting is declared once, as a field made with :func:`headatlas.config.setting` (help, default,
bounds, parser). :func:`from_config` builds a command's options from the fields of the configs it
takes and hands the command the configs, built and checked::

    @from_config(config=NiahEvalConfig)
    def niah_eval_command(config: NiahEvalConfig, progress: bool = PROGRESS) -> None: ...

A new option is a new field with help in the config; a new command is a function decorated with the
configs it takes (its own parameters, such as ``progress``, stay typer parameters). A field without
help is Python-only. A setting that fails its config's checks is refused as a usage error (exit 2).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Union

import typer

from ..config import check_bounds, flag_of
from .errors import refuse

PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")

_SIMPLE = (int, float, str, bool)


def field_default(f: dataclasses.Field) -> Any:
    """The field's default (``...``, typer's "required", when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


def _cli_type(hint: Any, meta: typing.Mapping[str, Any]) -> tuple[Any, bool]:
    """The type typer parses a field as, and whether it may be absent (None)."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (Union, types.UnionType) and type(None) in args
    inner = [a for a in args if a is not type(None)] if optional else [hint]
    base = inner[0] if len(inner) == 1 else str
    if meta.get("repeat"):
        return list[str], optional
    if meta.get("parse") is not None or base not in _SIMPLE:
        return str, optional
    return base, optional


def _cli_default(value: Any, meta: typing.Mapping[str, Any]) -> Any:
    if meta.get("repeat"):
        return [] if value in (None, ...) else [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) \
            else list(value)
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return value


def option_parameter(f: dataclasses.Field, hint: Any) -> inspect.Parameter:
    """The keyword parameter (with its ``typer.Option``) of config field ``f``."""
    meta = f.metadata
    kind, optional = _cli_type(hint, meta)
    default = _cli_default(field_default(f), meta)
    dash = f.name.replace("_", "-")
    names = meta.get("flags") or ((f"--{dash}/--no-{dash}",) if kind is bool and default is True else (f"--{dash}",))
    opt = typer.Option(default, *names, help=meta["help"])  # bounds: checked by build_config, one refusal path
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt,
                             annotation=kind | None if optional or default is None else kind)


def config_options(*configs: type) -> dict[str, tuple[inspect.Parameter, dataclasses.Field]]:
    """Every option of ``configs`` by field name (a field several configs share is one option)."""
    out: dict[str, tuple[inspect.Parameter, dataclasses.Field]] = {}
    for config in configs:
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            if f.metadata.get("help") and f.name not in out:
                out[f.name] = (option_parameter(f, hints[f.name]), f)
    return out


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def build_config(config: type, values: typing.Mapping[str, Any]) -> Any:
    """``config`` from option values (each parsed by its field's ``parse``), bounds checked first."""
    check_bounds(config, values)
    given = {}
    for f in dataclasses.fields(config):
        if f.name not in values:
            continue
        value, parse = values[f.name], f.metadata.get("parse")
        try:
            given[f.name] = parse(value) if parse is not None and value is not None else value
        except ValueError as err:  # name the option and the value unless the parser did
            flag = flag_of(f)
            raise ValueError(str(err) if str(err).startswith(flag) else f"{flag} {_shown(value)}: {err}") from None
    return config(**given)


def from_config(**configs: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Generate a command's options from ``configs`` (parameter name -> config class); see the module docs."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        name = func.__name__.removesuffix("_command").replace("_", "-")
        own = [p for n, p in inspect.signature(func).parameters.items() if n not in configs]
        generated = config_options(*configs.values())
        for p in own:
            generated.pop(p.name, None)  # a command's own parameter of the same name feeds the config

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            values = {**kwargs, **{field: kwargs.pop(field) for field in generated}}
            try:
                built = {param: build_config(config, values) for param, config in configs.items()}
            except (ValueError, FileNotFoundError) as err:  # one line: COMMAND: --option VALUE: what is accepted
                raise refuse(name, str(err)) from None
            return func(**built, **kwargs)

        required = sorted(generated.values(), key=lambda pf: pf[0].default.default is not ...)
        params = [p for p, _ in required] + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}  # what typer validates against
        command.configs = configs  # type: ignore[attr-defined]
        return command

    return decorate


def option(config: type, name: str, *flags: str, default: Any = ..., **kwargs: Any) -> Any:
    """A ``typer.Option`` for field ``name`` of ``config`` (its default unless ``default``, its help), for a
    command not yet generated by :func:`from_config` (``retmask``)."""
    f = next(f for f in dataclasses.fields(config) if f.name == name)
    value = field_default(f) if default is ... else default
    return typer.Option(value, *(flags or ("--" + name.replace("_", "-"),)), help=f.metadata["help"], **kwargs)


def config_parameters(config: type, *, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """Keyword parameters with a ``typer.Option`` for every int/float/str/bool field of ``config``.

    Each defaults to ``None`` (so a command can tell which settings were given); its help is the
    field's, with the field's own default.
    """
    hints = typing.get_type_hints(config)
    params = []
    for f in dataclasses.fields(config):
        kind = hints[f.name]
        if f.name in skip or kind not in _SIMPLE:
            continue
        text = f.metadata.get("help", "")
        text = f"{text[:1].upper()}{text[1:]} [default: {field_default(f)}]"
        opt = typer.Option(None, "--" + f.name.replace("_", "-"), help=text, show_default=False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind | None))
    return params
