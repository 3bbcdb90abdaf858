"""The retmask command group loads TRL only when it runs; without the train extra it says which to install."""

from __future__ import annotations

import subprocess
import sys

from headatlas.retmask.train import TUNED_FIELDS, RetMaskTrainConfig


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_help_and_other_commands_never_import_trl():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from headatlas.cli import app\n"
        "for args in (['--help'], ['info', '--help'], ['detect', '--help'], ['version']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print('trl' in sys.modules, 'headatlas.retmask.train' in sys.modules)\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "False"]
    # and the group does load it when it runs (in this process: the CLI tests run it)
    from typer.testing import CliRunner

    from headatlas.cli import app

    assert CliRunner().invoke(app, ["retmask", "train", "--help"]).exit_code == 0 and "trl" in sys.modules


def test_without_the_train_extra_the_group_names_it_in_one_line():
    every = [["retmask"], ["retmask", "pairs", "--help"], ["retmask", "train", "--model", "organism"]]
    code = (
        "import sys\n"
        "sys.modules['trl'] = None  # as if TRL were not installed: importlib.util.find_spec says None\n"
        "from typer.testing import CliRunner\n"
        "from headatlas.cli import app\n"
        f"for args in {every!r}:\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    print(r.exit_code, r.output.strip().replace('\\n', ' | '))\n"
    )
    proc = _run(code)
    line = "2 headatlas retmask: needs the train extra (trl not installed): pip install 'headatlas[train]'"
    assert proc.stdout.splitlines() == [line] * len(every), proc.stdout + proc.stderr[-2000:]


def test_train_command_exposes_exactly_the_tuned_fields_with_their_help():
    from typer import _click as click  # typer's own click: the one its commands are made of
    from typer.main import get_command

    from headatlas.cli import app

    group = get_command(app)
    ctx = click.Context(group)
    train = group.get_command(ctx, "retmask").get_command(ctx, "train")
    options = {p.name: p for p in train.params if p.param_type_name == "option"}
    assert set(options) == {"model", "pairs", "out", *TUNED_FIELDS}
    fields = {f.name: f for f in __import__("dataclasses").fields(RetMaskTrainConfig)}
    for name in TUNED_FIELDS:
        assert options[name].help == fields[name].metadata["help"]
