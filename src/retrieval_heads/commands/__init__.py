"""Typer command functions; :mod:`retrieval_heads.cli` mounts them on the ``retrieval-heads`` app."""
