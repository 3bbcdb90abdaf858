"""``headatlas organism``: train the built-in model from scratch, and measure a checkpoint (docs/organism.md).

::

    headatlas organism train --out runs/organism                # the shipped recipe (= --recipe shipped)
    headatlas organism train --out /tmp/o --steps 20 --n-layers 2   # one run: a smoke test
    headatlas organism measure --model runs/organism --out runs/organism-measure.json
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import typer

from ..organism.train_config import OrganismTrainConfig
from .options import config_parameters

organism_app = typer.Typer(help="The built-in model: train it from scratch, measure a checkpoint.", no_args_is_help=True)


def train_command(
    out: str | None = None,
    config: Path | None = None,
    recipe: str | None = None,
    **settings: Any,
) -> Path:
    """Train the organism. --out DIR alone trains the shipped recipe (every stage, hours on a CPU); any
    setting below, or --config FILE.json, trains one run; --recipe DIR trains your own stage files."""
    from ..organism import train as train_module
    from ..organism.recipe import RECIPES, recipe_stages, train_recipe

    given = {k: v for k, v in settings.items() if v is not None}
    threads = given.pop("threads", None)
    if out is not None:
        given.pop("out_dir", None)
    one_run = config is not None or bool(given)
    if not recipe and not one_run:  # nothing asked but where: the recipe the model card describes
        typer.echo("no settings given: training the shipped recipe (every stage of organism/recipes/, hours on a "
                   "CPU); --config FILE or any --setting trains one run instead", err=True)
        recipe = "shipped"
    if recipe:
        if one_run:
            raise typer.BadParameter("--recipe takes only --out and --threads (each stage file holds its settings)")
        recipe_dir = RECIPES if recipe == "shipped" else Path(recipe)
        try:
            recipe_stages(recipe_dir)
        except FileNotFoundError:
            raise typer.BadParameter(f"{recipe!r} is neither 'shipped' nor a directory of stage1.json, "
                                     "stage2.json, ...", param_hint="--recipe") from None
        path = train_recipe(out or settings.get("out_dir") or "runs/organism", recipe_dir, threads)
    else:
        values = json.loads(config.read_text()) if config is not None else {}
        values.update(given)
        if threads is not None:
            values["threads"] = threads
        if out is not None:
            values["out_dir"] = out
        path = train_module.train_organism(OrganismTrainConfig(**values))
    typer.echo(f"saved {path}")
    return path


_FIXED = [
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                      default=typer.Option(None, "--out", help="Where the checkpoint is saved (= --out-dir).")),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                      default=typer.Option(None, "--config", exists=True, dir_okay=False,
                                           help="JSON file of settings below (flags override it).")),
    inspect.Parameter("recipe", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                      default=typer.Option(None, "--recipe", help="Train every stage of a recipe: 'shipped' (the "
                                           "built-in checkpoint's) or a folder of stage1.json, stage2.json, ...")),
]
train_command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [*_FIXED, *config_parameters(OrganismTrainConfig)], return_annotation=Path
)
organism_app.command("train")(train_command)


@organism_app.command("measure")
def measure_command(
    model: str = typer.Option(..., "--model", "-m", help="The built-in name (organism) or a checkpoint directory "
                              "trained like it."),
    out: Path = typer.Option(Path("runs/organism-measure.json"), "--out", help="The report JSON to write."),
    n_per_task: int = typer.Option(160, "--n-per-task", min=1, help="Held-out examples per task."),
    n_detect: int = typer.Option(80, "--n-detect", min=1, help="Prompts of the retrieval-score detection."),
) -> None:
    """Accuracy per task, retrieval and transition heads, and masking effects of a checkpoint (the model card)."""
    from ..model_spec import resolve_model_path
    from ..organism.measure import measure, summary_lines
    from ..runs import atomic_write_text

    report = measure(resolve_model_path(model), n_per_task, n_detect)
    atomic_write_text(out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for line in summary_lines(report):
        typer.echo(line)
