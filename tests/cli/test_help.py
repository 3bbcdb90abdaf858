"""Every command's ``--help`` at 80 columns: each option shown whole, each with a help text."""

from __future__ import annotations

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from headatlas.cli import app

PASSTHROUGH = {("lm-eval",)}  # every argument, --help included, goes to lm-eval's own CLI


def _commands(group: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command under ``group`` (the lazily loaded groups loaded)."""
    out = [(path, group)]
    if hasattr(group, "list_commands"):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            out += _commands(group.get_command(ctx, name), (*path, name))
    return out


COMMANDS = [(p, c) for p, c in _commands(get_command(app)) if p not in PASSTHROUGH]


def test_every_command_is_listed():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"detect", "niah-eval", "compare", "languages", "info", "report", "demo", "retmask ablate",
            "retmask pairs", "retmask train", "retmask evaluate", "organism train", "organism measure"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "headatlas" for p, _ in COMMANDS])
def test_help_at_80_columns_shows_every_option_whole_with_help(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"},
                                terminal_width=80)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "…" not in text and "``" not in text  # nothing cut, no reST markup
    assert max(len(line) for line in text.splitlines()) <= 80
    for param in command.params:
        if param.param_type_name != "option" or param.hidden:
            continue
        assert (param.help or "").strip(), f"{' '.join(path)} {param.opts[0]} has no help"
        for name in param.opts + param.secondary_opts:
            assert name in text, f"{' '.join(path)}: {name} is not shown whole at 80 columns"


def test_one_cli_style_no_argparse_entry_points():
    """Every command is a typer command of ``headatlas``; no module parses its own argv."""
    from pathlib import Path

    import headatlas

    src = Path(headatlas.__file__).parent
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py") if "argparse" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_options_come_from_config_fields():
    """A command's default and help are its config field's (commands.options.option)."""
    from headatlas.detect.config import DetectConfig
    from headatlas.evaluate.niah_eval import NiahEvalConfig

    detect = dict(_commands(get_command(app)))[("detect",)]
    params = {p.name: p for p in detect.params}
    for name in ("mode", "rouge_threshold", "max_new_tokens", "dedup"):
        f = DetectConfig.__dataclass_fields__[name]
        assert params[name].default == f.default and params[name].help == f.metadata["help"]
    niah = {p.name: p for p in dict(_commands(get_command(app)))[("niah-eval",)].params}
    assert niah["needle_lang"].help == NiahEvalConfig.__dataclass_fields__["needle_lang"].metadata["help"]


def test_every_command_that_loads_a_model_takes_a_device_map():
    """``--device``, ``--device-map`` (accelerate, e.g. ``auto``), ``--dtype``: one shared piece (config.ModelConfig)."""
    commands = dict(_commands(get_command(app)))
    for name in ("detect", "niah-eval", "compare", "languages", "kv-compress", "decore", "info"):
        opts = [o for p in commands[(name,)].params for o in getattr(p, "opts", [])]
        wanted = {"--device", "--device-map", "--dtype"} | ({"--seed"} if name != "info" else set())
        assert wanted <= set(opts), name
