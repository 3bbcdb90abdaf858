"""A command group whose commands (and the heavy extra they need) load only when the group is invoked.

``headatlas --help`` and every other command then never import the extra (``retmask``: TRL, PEFT,
datasets); invoked without the extra installed, the group says which extra to install, in one line, exit 2.

    app.add_typer(lazy_group("headatlas.commands.retmask:retmask_app", "train", ("trl", "peft", "datasets"),
                             help="RetMask: ..."), name="retmask")
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click
import typer
from typer.core import TyperGroup

from .errors import refuse


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The ``modules`` that are not installed (found without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


class LazyGroup(TyperGroup):
    """Delegates to the typer app ``target`` (``module:attribute``), imported on first use."""

    target: str = ""
    extra: str = ""
    needs: tuple[str, ...] = ()

    def _real(self) -> click.Group:
        loaded = self.__dict__.get("_loaded")
        if loaded is None:
            missing = missing_modules(self.needs)
            if missing:
                raise refuse(f"headatlas {self.name}", f"needs the {self.extra} extra ({', '.join(missing)} not "
                             f"installed): pip install 'headatlas[{self.extra}]'")
            module, _, attr = self.target.partition(":")
            app = getattr(importlib.import_module(module), attr)
            from ..cli import _refuse_in_one_line  # the same one-line refusals as every mounted command

            _refuse_in_one_line(app, f"{self.name} ")
            app.rich_markup_mode = self.rich_markup_mode  # the parent's help style (plain click when None)
            loaded = self.__dict__["_loaded"] = typer.main.get_group(app)
        return loaded

    @property
    def commands(self) -> dict[str, click.Command]:  # type: ignore[override]
        """The real group's commands, loaded on access (for tools that walk ``group.commands``)."""
        return self._real().commands

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:  # click's __init__ sets {}: nothing to keep
        pass

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._real().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._real().get_command(ctx, cmd_name)


def lazy_group(target: str, extra: str, needs: tuple[str, ...], **typer_kwargs: Any) -> typer.Typer:
    """A typer app to mount with ``add_typer``: its commands are ``target``'s, loaded when it is invoked."""
    cls = type("Lazy_" + target.rsplit(":", 1)[-1], (LazyGroup,), {"target": target, "extra": extra, "needs": needs})
    return typer.Typer(cls=cls, no_args_is_help=True, **typer_kwargs)
