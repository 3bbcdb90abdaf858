"""Safe files for long runs: atomic writes, append-only JSONL, run metadata.

Every artifact the toolkit writes records the model, settings, seed and
versions that produced it (:func:`run_metadata`), and is written so that an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8, atomically (:func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented UTF-8 JSON, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n")


class ResumeMismatchError(RuntimeError):
    """An output folder holds work made with other settings or weights than this run's: resuming would mix them."""


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line ``key: old vs new`` per key whose value differs (keys missing on one side count as ``None``).

    >>> settings_diff({"seed": 0, "mode": "greedy"}, {"seed": 1, "mode": "greedy"})
    ['seed: 0 (recorded) vs 1 (now)']
    """
    return [f"{k}: {old.get(k)!r} (recorded) vs {new.get(k)!r} (now)"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_or_record(
    path: str | Path, key: str, values: dict[str, Any], *, what: str, hint: str,
    record: dict[str, Any] | None = None, overwrite: bool = False,
    error: type[ResumeMismatchError] = ResumeMismatchError,
) -> bool:
    """Record the settings a folder's work depends on, or refuse to resume that work with other ones.

    If ``path`` does not exist, write ``{**record, key: values}`` there (atomically). If it does,
    compare its ``key`` with ``values`` (after a JSON round trip, so tuples equal lists): equal
    means the work in the folder can be resumed; different raises ``error`` (a
    :class:`ResumeMismatchError`) naming every differing setting, then ``hint`` — unless
    ``overwrite``, which records the new values and returns ``True`` (the caller then discards the
    old work). ``what`` names the work, e.g. ``"a detection run"``. Returns whether old work was
    overwritten. Detection, NIAH evaluation and RetMask use it; lm-eval comparisons fingerprint
    each cell instead (a new condition adds cells to a folder).
    """
    path = Path(path)
    values = json.loads(json.dumps(values, default=str))
    overwritten = False
    if path.exists():
        recorded = json.loads(path.read_text(encoding="utf-8")).get(key) or {}
        diffs = settings_diff(recorded, values)
        if not diffs:
            return False
        if not overwrite:
            raise error(
                f"{path.parent} holds {what} made with other settings, so it cannot be resumed:\n  "
                + "\n  ".join(diffs) + f"\n{hint}"
            )
        overwritten = True
    atomic_write_json(path, {**(record or {}), key: values})
    return overwritten


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record as a single line and fsync it: a finished sample is never lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file, skipping a torn last line left by a crash mid-write."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a write interrupted mid-line: the sample is simply redone
                continue
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None


def package_versions(names: Iterable[str] = ("torch", "transformers", "retrieval-heads")) -> dict[str, str]:
    """Installed versions of the packages that shape a result."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_metadata(**settings: Any) -> dict[str, Any]:
    """Metadata stamped on every artifact: the settings given, versions, host and time."""
    return {
        **settings,
        "versions": package_versions(),
        "python": platform.python_version(),
        "host": platform.node(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
