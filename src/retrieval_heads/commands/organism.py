"""``retrieval-heads organism train``: train the built-in model from scratch (see docs/organism.md)."""

from __future__ import annotations

import typer

organism_app = typer.Typer(help="The built-in model: train it from scratch.", no_args_is_help=True)


@organism_app.command(
    "train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)
def train_command(ctx: typer.Context) -> None:
    """Train the organism: ``--out DIR`` alone trains the shipped recipe (every stage); any
    OrganismTrainConfig field as ``--field-name VALUE`` or ``--config FILE.json`` trains one run;
    ``--recipe DIR`` your own stage files (``--help`` lists them all)."""
    from ..organism.train import main

    main(list(ctx.args))
