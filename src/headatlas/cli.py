"""The ``headatlas`` command line: a thin layer over the Python API.

Each command lives in :mod:`headatlas.commands`; this module only mounts them.
"""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec

import click
import typer
from typer.core import TyperGroup

from . import __version__
from .commands.compare import LM_EVAL_CONTEXT, compare_command, lm_eval_command
from .commands.compare_scorers import compare_scorers_command
from .commands.decore import decore_command
from .commands.demo import demo_command
from .commands.detect import detect_command
from .commands.errors import one_line_errors, refuse
from .commands.info import info_command
from .commands.kv_compress import kv_compress_command
from .commands.languages import languages_command
from .commands.niah_eval import niah_eval_command
from .commands.quiet import quiet_libraries
from .commands.report import report_command

LAZY_GROUPS = {
    "retmask": ("headatlas.commands.retmask", "retmask_app",
                "RetMask: DPO with the retrieval-heads-ablated model's responses as the rejected ones "
                "(needs the train extra).", "train", ("trl", "peft", "datasets")),
    "organism": ("headatlas.commands.organism", "organism_app",
                 "The built-in model: train it from scratch, measure a checkpoint.", "", ()),
}
"""Command groups imported only when named (their modules import torch and TRL at import time): module,
attribute, help, and the extra whose packages they need (named in one line, exit 2, when missing)."""


class LazyGroup(TyperGroup):
    """The ``headatlas`` group: :data:`LAZY_GROUPS` are listed by name and help, loaded when run."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_GROUPS if n not in self.commands)]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_GROUPS and cmd_name not in self.commands:
            module, attr, text, extra, needs = LAZY_GROUPS[cmd_name]
            if self._listing:
                return click.Command(cmd_name, help=text)
            if missing := [m for m in needs if find_spec(m) is None]:
                raise refuse(f"headatlas {cmd_name}", f"needs the {extra} extra ({', '.join(missing)} not "
                             f"installed): pip install 'headatlas[{extra}]'")
            group = getattr(import_module(module), attr)
            _refuse_in_one_line(group, f"{cmd_name} ")
            group.rich_markup_mode, group._add_completion = None, False  # as every other command's
            self.commands[cmd_name] = typer.main.get_command(group)
            self.commands[cmd_name].name = cmd_name
        return super().get_command(ctx, cmd_name)


HELP_WIDTH = {"max_content_width": 100}
"""Every command's help: plain click formatting (no rich panels), wrapped to the terminal, at most 100 columns."""

app = typer.Typer(
    name="headatlas",
    help="Find, mask and use the retrieval heads of Hugging Face causal LMs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings=HELP_WIDTH,
    rich_markup_mode=None,
    cls=LazyGroup,
)


@app.callback()
def main_callback(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the libraries' logs, warnings and bars."),
) -> None:
    """Find, mask and use the retrieval heads of Hugging Face causal LMs."""
    quiet_libraries(verbose)


app.command("demo")(demo_command)
app.command("info")(info_command)
app.command("detect")(detect_command)
app.command("languages")(languages_command)
app.command("report")(report_command)
app.command("compare")(compare_command)
app.command("compare-scorers")(compare_scorers_command)
app.command("niah-eval")(niah_eval_command)
app.command("kv-compress")(kv_compress_command)
app.command("decore")(decore_command)
app.command("lm-eval", context_settings=LM_EVAL_CONTEXT)(lm_eval_command)


@app.command("version")
def version_command() -> None:
    """Print the package version."""
    typer.echo(__version__)


def _refuse_in_one_line(group: typer.Typer, prefix: str = "") -> None:
    """Wrap every command of ``group`` (and its sub-groups) so that input errors print one line."""
    if getattr(group, "_one_line", False):
        return
    group._one_line = True  # type: ignore[attr-defined]
    for info in group.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        info.callback = one_line_errors(f"{prefix}{name}", info.callback)
    for sub in group.registered_groups:
        _refuse_in_one_line(sub.typer_instance, f"{prefix}{sub.name} ")


_refuse_in_one_line(app)


if __name__ == "__main__":
    app()
