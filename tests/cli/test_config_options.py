"""Every command's options are generated from its config dataclasses: each field once, with the field's help."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from typer.main import get_command

from headatlas.cli import app

from .test_help import COMMANDS

NOT_GENERATED = {
    (): "the group itself",
    ("version",): "no settings",
    ("report",): "run folders as arguments and --out only",
    ("retmask",): "a group", ("retmask", "ablate"): "retmask's commands: issue 29 (TRL DPOConfig) rebuilds them",
    ("retmask", "pairs"): "issue 29", ("retmask", "train"): "issue 29", ("retmask", "evaluate"): "issue 29",
    ("organism",): "a group", ("organism", "train"): "options from OrganismTrainConfig (config_parameters)",
    ("organism", "measure"): "the model card's measurement (no run config)",
}


def _generated():
    out = []
    for path, command in COMMANDS:
        configs = getattr(command.callback, "configs", None)
        if configs is None:
            assert path in NOT_GENERATED, f"{' '.join(path)}: options not generated from a config"
            continue
        out.append((path, command, configs))
    return out


GENERATED = _generated()


@pytest.mark.parametrize("path,command,configs", GENERATED, ids=[" ".join(p) for p, _, _ in GENERATED])
def test_each_config_field_is_exactly_one_option_with_its_help(path, command, configs):
    params = [p for p in command.params if p.param_type_name == "option"]
    own = set(command.callback.__signature__.parameters) - {
        f.name for c in configs.values() for f in dataclasses.fields(c) if f.metadata.get("help")}
    for config in configs.values():
        for f in dataclasses.fields(config):
            if not f.metadata.get("help"):
                continue
            matching = [p for p in params if p.name == f.name]
            assert len(matching) == 1, f"{' '.join(path)}: {config.__name__}.{f.name} is {len(matching)} options"
            assert matching[0].help == f.metadata["help"] or f.name in own
    names = [o for p in params for o in p.opts + p.secondary_opts]
    assert len(names) == len(set(names)), f"{' '.join(path)}: an option name given twice"


def test_the_generated_commands_cover_the_model_commands():
    assert {" ".join(p) for p, _, _ in GENERATED} >= {"detect", "niah-eval", "compare", "languages", "kv-compress",
                                                      "decore", "demo", "info"}


@pytest.mark.parametrize("path,command,configs", GENERATED, ids=[" ".join(p) for p, _, _ in GENERATED])
def test_a_value_out_of_a_fields_bounds_is_refused_before_anything_runs(path, command, configs, tmp_path):
    """Every bounded numeric option, given a value below its bound: exit 2, one usage line naming the option."""
    from typer.testing import CliRunner

    required = {"model": "organism", "out": str(tmp_path / "o"), "tasks": "t", "heads": str(tmp_path / "h.json")}
    for config in configs.values():
        for f in dataclasses.fields(config):
            low = f.metadata.get("min")
            if low is None or not f.metadata.get("help"):
                continue
            flag = (f.metadata.get("flags") or (f"--{f.name.replace('_', '-')}",))[0]
            args = [a for name, v in required.items() if name in {p.name for p in command.params}
                    for a in (f"--{name}", v)]
            result = CliRunner().invoke(app, [*path, *args, flag, str(low - 1)])
            assert result.exit_code == 2, (path, flag, result.output)
            assert result.output.strip().splitlines() == [
                f"{path[-1]}: {flag} {low - 1}: must be {'>' if f.metadata.get('min_open') else '>='} {low}"]
            assert not (tmp_path / "o").exists()


def test_importing_the_cli_imports_neither_torch_nor_transformers():
    code = ("import sys, json, headatlas.cli; "
            "print(json.dumps([m for m in ('torch', 'transformers', 'lm_eval', 'trl') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


#: Commands whose --help must load a heavy library: retmask's options are TRL's DPOConfig fields; lm-eval is
#: lm-eval's own CLI.
HEAVY_HELP = ("retmask", "lm-eval")


def test_help_of_every_command_but_retmask_imports_no_torch():
    """Every command and subcommand the app lists (organism's included), each --help in a fresh process."""
    code = ("import sys, json, click\n"
            "from typer.testing import CliRunner\n"
            "from typer.main import get_command\n"
            "from headatlas.cli import app\n"
            f"heavy = {HEAVY_HELP!r}\n"
            "root = get_command(app)\n"
            "ctx = click.Context(root)\n"
            "paths = [[]]\n"
            "for name in root.list_commands(ctx):\n"
            "    if name in heavy:\n"
            "        continue\n"
            "    paths.append([name])\n"
            "    cmd = root.get_command(ctx, name)\n"
            "    if hasattr(cmd, 'list_commands'):\n"
            "        paths += [[name, sub] for sub in cmd.list_commands(ctx)]\n"
            "codes = [CliRunner().invoke(app, [*p, '--help']).exit_code for p in paths]\n"
            "print(json.dumps([paths, codes, 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    paths, codes, torch_loaded = json.loads(done.stdout)
    assert ["organism", "train"] in paths and ["compare-scorers"] in paths and len(paths) >= 14
    assert set(codes) == {0} and not torch_loaded


def test_the_app_still_builds():
    assert get_command(app).name in (None, "headatlas")


def test_ctrl_c_while_the_model_loads_prints_no_traceback(monkeypatch):
    from typer.testing import CliRunner

    import headatlas.model_spec

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(headatlas.model_spec, "load_model", interrupted)
    result = CliRunner().invoke(app, ["info", "--model", "organism"])
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, KeyboardInterrupt) or result.exit_code in (1, 130)
