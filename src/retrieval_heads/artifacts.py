"""The old home of the file helpers and the resume error: they live in :mod:`retrieval_heads.runs` now.

Kept so that ``from retrieval_heads.artifacts import atomic_write_json, ResumeMismatchError`` goes on working.
"""

from .runs import (
    ResumeMismatchError,
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    package_versions,
    read_jsonl,
    run_metadata,
)

__all__ = [
    "ResumeMismatchError",
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "package_versions",
    "read_jsonl",
    "run_metadata",
]
