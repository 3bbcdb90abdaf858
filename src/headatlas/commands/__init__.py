"""Typer command functions; :mod:`headatlas.cli` mounts them on the ``headatlas`` app."""
