"""The old home of the file helpers and the resume error, now in :mod:`retrieval_heads.runs` (re-exported here)."""

from .runs import (  # noqa: F401
    ResumeMismatchError,
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    package_versions,
    read_jsonl,
    run_metadata,
)
