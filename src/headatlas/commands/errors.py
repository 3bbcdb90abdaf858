"""Bad input refused in one line: the CLI turns the toolkit's input errors into ``NAME: message``, exit 2.

The command functions stay plain; :func:`one_line_errors` wraps each one where :mod:`headatlas.cli`
mounts it, so every command refuses the same way (no traceback, nothing written).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

EXIT_REFUSED = 2


def refused_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the input is wrong" (imported lazily: ``--help`` stays fast)."""
    from ..detect.inputs import PromptError
    from ..heads import HeadScoreFileError
    from ..model_spec import ModelNotFoundError, UnsupportedModelError
    from ..retmask.pairs import ChatTemplateError
    from ..runs import ResumeMismatchError
    from ..selection import HeadSelectionError

    return (ModelNotFoundError, UnsupportedModelError, HeadScoreFileError, PromptError, ChatTemplateError,
            ResumeMismatchError, HeadSelectionError)


def refuse(command: str, message: str) -> typer.Exit:
    """Print ``command: message`` on one stderr line and return the exit to raise."""
    typer.secho(f"{command}: {' '.join(str(message).split())}", fg="red", err=True)
    return typer.Exit(EXIT_REFUSED)


@contextmanager
def refusing(command: str | None = None, errors: tuple[type[BaseException], ...] = (ValueError,)) -> Iterator[None]:
    """``errors`` raised inside become a refusal: one line ``command: message``, or typer's usage error without ``command``."""
    try:
        yield
    except errors as err:
        if command is None:
            raise typer.BadParameter(str(err)) from err
        raise refuse(command, str(err)) from None


def one_line_errors(command: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with the toolkit's input errors printed as one line (see :func:`refused_errors`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.BadParameter as err:  # raised by the command's own checks: one line too
            raise refuse(command, err.format_message()) from None
        except Exception as err:  # noqa: BLE001 - re-raised unless it is an input error
            if isinstance(err, refused_errors()):
                raise refuse(command, str(err)) from None
            raise

    return wrapper
