"""Settings declared once: a field's help, default, bounds and role in a run, read by the CLI and by runs.

A setting is a dataclass field made with :func:`setting`; its metadata carries

- ``help``: the option's help (a field without help is Python-only, never an option);
- ``flags``: the option's names (default ``--field-name``; ``--x/--no-x`` for a switch);
- ``min`` / ``max``: bounds the command line enforces (``min_open``: strictly above ``min``);
- ``parse``: turns the typed text into the field's value (``repeat``: the option repeats);
- ``resume``: True when a rerun may change it (a batch size, a device): not part of the run's identity;
- ``kind``: what the value names (``device``, ``dtype``, ``out``, ``model``, ``lang``, ``heads``), whose checks
  refuse a wrong one before anything runs (the CLI's refusal tests are generated from it).

:func:`run_identity` is the identity of a run (every setting without ``resume``, less the output folder).
The pieces several commands share (model, head sets, grid, run, decoding) are below; a command's config
inherits the pieces it needs. This module imports nothing heavy: the CLI builds its options from it.

>>> from dataclasses import dataclass
>>> @dataclass(kw_only=True)
... class Toy(RunConfig):
...     k: int = setting(3, "How many.", min=1)
...     batch_size: int = setting(1, "Per step.", resume=True)
>>> run_identity(Toy(out="x", k=2))
{'seed': 0, 'k': 2}
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MASK_MODES: tuple[str, ...] = ("zero", "mean", "uniform")
"""How a masked head's output is replaced: zeros, its mean output, or uniform attention."""

ANSWER_TOKENS = 16
"""Most tokens generated per short answer (kv-compress, DeCoRe)."""

SCORE_THRESHOLD = 0.1
"""The retrieval score above which a head counts as a retrieval head (Wu et al.)."""

_NOT_GIVEN: Any = dataclasses.MISSING
_NOT_IDENTITY = ("out", "overwrite")


def setting(default: Any = _NOT_GIVEN, help: str | None = None, *, factory: Callable[[], Any] | None = None,  # noqa: A002
            flags: tuple[str, ...] = (), min: float | None = None, max: float | None = None,  # noqa: A002
            min_open: bool = False, parse: Callable[[Any], Any] | None = None, repeat: bool = False,
            resume: bool = False, **metadata: Any) -> Any:
    """A dataclass field with the metadata described in the module docstring."""
    meta = {"help": help, "flags": flags, "min": min, "max": max, "min_open": min_open, "parse": parse,
            "repeat": repeat, "resume": resume, **metadata}
    meta = {k: v for k, v in meta.items() if v not in (None, (), False)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=_NOT_GIVEN if default is ... else default, metadata=meta)


def like(config: type, name: str, default: Any = _NOT_GIVEN, **changes: Any) -> Any:
    """The field ``name`` of ``config`` again, with another default (a command whose default differs)."""
    base = next(f for f in dataclasses.fields(config) if f.name == name)
    meta = {**base.metadata, **changes}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=_NOT_GIVEN if default is ... else default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line name of a setting (its first flag)."""
    return (f.metadata.get("flags") or (f"--{f.name.replace('_', '-')}",))[0].split("/")[0]


def check_bounds(config: type, values: Mapping[str, Any]) -> None:
    """Raise ValueError naming the option, the value and what is accepted, for the first numeric setting
    in ``values`` outside its field's bounds or not a finite number."""
    for f in dataclasses.fields(config):
        value = values.get(f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        low, high, open_low = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("min_open")
        accepted = " and ".join(([f"{'>' if open_low else '>='} {low}"] if low is not None else [])
                                + ([f"<= {high}"] if high is not None else [])) or "a finite number"
        if (not math.isfinite(value) or (low is not None and (value < low or (open_low and value == low)))
                or (high is not None and value > high)):
            raise ValueError(f"{flag_of(f)} {value}: must be {accepted}")


def run_identity(config: Any, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings that define a run: every field not marked ``resume`` (and not ``out``/``overwrite``)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if not f.metadata.get("resume") and f.name not in _NOT_IDENTITY + skip}


def resumable(config: Any) -> dict[str, Any]:
    """The settings a rerun may change (recorded, not compared)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("resume")}


def parse_head_sets(values: list[str] | Mapping[str, str]) -> dict[str, str]:
    """``[NAME=]FILE`` items -> ``{name: file}``; an unnamed file is ``heads`` (``heads2``, ... for more)."""
    if isinstance(values, Mapping):
        return dict(values)
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = next(f"heads{i if i > 1 else ''}" for i in range(1, len(values) + 2)
                              if f"heads{i if i > 1 else ''}" not in out), value
        if not name or not path:
            raise ValueError(f"--heads must be [NAME=]FILE, got {value!r}")
        if name in out:
            raise ValueError(f"--heads: {name!r} given twice")
        out[name] = path
    return out


def split_list(text: str | list[Any] | tuple[Any, ...], kind: Callable[[str], Any] = str,
               into: Callable[[list[Any]], Any] = list) -> Any:
    """``"a,b"`` -> ``into([kind("a"), kind("b")])`` (a list or tuple is converted item by item)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return into([kind(x.strip()) if isinstance(x, str) else x for x in items if not isinstance(x, str) or x.strip()])


def batch_size(value: int | str) -> int | str:
    """``auto`` or a whole number >= 1 (as text or a number)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value != "auto" and (not isinstance(value, int) or value < 1):
        raise ValueError(f"--batch-size {value}: use auto or a whole number >= 1")
    return value


# ---- checks of the values a user types (run when a command builds its config, before any model loads) --
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device(flag: str, device: str | None) -> None:
    """Refuse a device torch does not know, or one this machine does not have."""
    if device is None or (flag == "--device-map" and device in DEVICE_MAPS):
        return
    import torch

    accepted = "cpu, cuda, cuda:N" + (f", or {' | '.join(DEVICE_MAPS)}" if flag == "--device-map" else "")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {device}: not a device; use {accepted}") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"{flag} {device}: this machine has no such device; use cpu or a device it has")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {device}: MPS is not available here; use cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag} {device}: not a device headatlas runs on; use {accepted}")


def check_out(out: str | None) -> None:
    """Refuse an output folder that is an existing file, or a place that cannot be written."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder (new or holding an earlier run)")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {parent} cannot be written; give a folder you can write to")


def check_lang(flag: str, langs: list[str] | tuple[str, ...]) -> None:
    """Refuse a language with no built-in haystack and needles (before any language runs)."""
    from .niah.haystack import BUILTIN_LANGS

    unknown = [lang for lang in langs if lang not in BUILTIN_LANGS]
    if unknown:
        raise ValueError(f"{flag} {','.join(unknown)}: no built-in haystack and needles in that language; "
                         f"choose from {', '.join(BUILTIN_LANGS)} (or give --haystack and --needles)")


# ---- the shared pieces -------------------------------------------------------------------------------
class Settings:
    """The base of every piece: the bounds of every field, then each piece's own ``__post_init__`` checks."""

    def __post_init__(self) -> None:
        check_bounds(type(self), vars(self))


@dataclass(kw_only=True)
class ModelConfig(Settings):
    """Which model, and how it is loaded (every command that loads a model)."""

    model: str = setting(..., "Hub id, local checkpoint, or a built-in name (organism).", flags=("--model", "-m"),
                         kind="model")
    device: str | None = setting(None, "cuda, cuda:1, cpu ... (default: CUDA when available).", resume=True,
                                 kind="device")
    device_map: str | None = setting(None, "auto: split a model larger than one GPU over the GPUs and CPU "
                                     "(accelerate); replaces --device.", resume=True, kind="device")
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16.", kind="dtype")
    attn_implementation: str | None = setting(None, "Attention backend: sdpa (default), eager, flash_attention_2.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype}: unknown; use {' | '.join(DTYPES)}")
        check_device("--device", self.device)
        check_device("--device-map", self.device_map)
        folder = Path(self.model).expanduser()
        if folder.is_dir() and not any((folder / f).is_file() for f in ("config.json", "adapter_config.json")):
            raise ValueError(f"--model {self.model}: the folder holds no model (no config.json); give a checkpoint "
                             "folder, a Hub id or a built-in name")


@dataclass(kw_only=True)
class OutConfig(Settings):
    """Where a run is written."""

    out: str = setting(..., "Output directory (a rerun of the same command resumes).", kind="out")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_out(self.out)


@dataclass(kw_only=True)
class RunConfig(OutConfig):
    """Where a run is written, whether an earlier run there with other settings is discarded, its seed."""

    overwrite: bool = setting(False, "Discard an earlier run in --out made with other settings (else refused).")
    seed: int = setting(0, "Seed (recorded in the outputs).")


@dataclass(kw_only=True)
class HeadSetConfig(Settings):
    """Which heads a run masks or keeps: head sets, how many of each, random controls."""

    heads: dict[str, str] = setting(help="A head set [NAME=]head_scores.json (repeat for several).", factory=dict,
                                    parse=parse_head_sets, repeat=True, kind="heads")
    top_k: int | None = setting(None, "Heads used per set, and per random control (default: 5 % of the "
                                "model's heads).", min=1)
    random_seeds: int = setting(0, "Random controls (seeds 0..n-1), drawn outside every set.", min=0)
    allow_other_model: bool = setting(False, "Use --heads made for another model of the same shape (a checkpoint "
                                      "whose recorded base model made the file needs no flag).", resume=True)


@dataclass(kw_only=True)
class GridConfig(Settings):
    """The needle-in-a-haystack grid and where its prompts come from."""

    lengths: str = setting("256,512,1024", "Context lengths: 'start:stop:count' or '256,512'.")
    depths: str = setting("5", "Needle depths: a count (ends included) or '0,0.5,1'.")
    per_cell: int = setting(2, "Built-in model: prompts per length x depth cell.", min=1)
    haystack: str | None = setting(None, "A built-in language, folder, file, dataset:NAME[:CONFIG] or organism "
                                   "(default: organism for the built-in model, else the needles' language).")
    needles: str | None = setting(None, "Needles JSONL (default: the built-in ones).")
    chat_template: bool = setting(False, "Wrap prompts in the tokenizer's chat template.")


@dataclass(kw_only=True)
class DecodingConfig(Settings):
    """How answers are generated."""

    max_new_tokens: int = setting(50, "Most tokens generated per answer.", min=1)
    batch_size: int | str = setting("auto", "Prompts per forward, or auto: as many as the GPU's free memory "
                                    "holds (1 on CPU). Results do not depend on it.", resume=True, parse=batch_size)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.batch_size = batch_size(self.batch_size)
