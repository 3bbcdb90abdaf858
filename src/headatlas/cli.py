"""The ``headatlas`` command line: a thin layer over the Python API.

Each command lives in :mod:`headatlas.commands`; this module only mounts them.
"""

from __future__ import annotations

import typer

from . import __version__
from .commands.compare import LM_EVAL_CONTEXT, compare_command, lm_eval_command
from .commands.decore import decore_command
from .commands.demo import demo_command
from .commands.detect import detect_command
from .commands.errors import one_line_errors
from .commands.info import info_command
from .commands.kv_compress import kv_compress_command
from .commands.languages import languages_command
from .commands.lazy import lazy_group
from .commands.niah_eval import niah_eval_command
from .commands.organism import organism_app
from .commands.quiet import quiet_libraries
from .commands.report import report_command

HELP_WIDTH = {"max_content_width": 100}
"""Every command's help: plain click formatting (no rich panels), wrapped to the terminal, at most 100 columns."""

app = typer.Typer(
    name="headatlas",
    help="Find, mask and use the retrieval heads of Hugging Face causal LMs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings=HELP_WIDTH,
    rich_markup_mode=None,
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
app.command("niah-eval")(niah_eval_command)
app.command("kv-compress")(kv_compress_command)
app.command("decore")(decore_command)
app.command("lm-eval", context_settings=LM_EVAL_CONTEXT)(lm_eval_command)
app.add_typer(lazy_group("headatlas.commands.retmask:retmask_app", "train", ("trl", "peft", "datasets"),
                         help="RetMask: DPO with the retrieval-heads-ablated model's responses as the rejected ones "
                              "(needs the train extra)."), name="retmask")
app.add_typer(organism_app, name="organism")


@app.command("version")
def version_command() -> None:
    """Print the package version."""
    typer.echo(__version__)


def _refuse_in_one_line(group: typer.Typer, prefix: str = "") -> None:
    """Wrap every command of ``group`` (and its sub-groups) so that input errors print one line."""
    for info in group.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        info.callback = one_line_errors(f"{prefix}{name}", info.callback)
    for sub in group.registered_groups:
        _refuse_in_one_line(sub.typer_instance, f"{prefix}{sub.name} ")


_refuse_in_one_line(app)


if __name__ == "__main__":
    app()
