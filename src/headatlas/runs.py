"""The run contract: every resumable command opens its output folder here.

:func:`open_run` opens a folder for one kind of run and its settings. A folder holding a run of another
kind or with other settings raises :class:`ResumeMismatchError` *before writing anything*, naming each
differing setting with its recorded and new value; otherwise the run is recorded (``run.json``) and a
:class:`Run` returned. Finished work goes to an append-only, fsync'd JSONL journal (a torn last line is
ignored) or to per-cell files; every JSON artifact is stamped with ``format`` (``headatlas/<kind>``),
``format_version`` and the run's metadata. :func:`track` shows the progress bar, ``resuming: N of M done``
and, on Ctrl-C, ``interrupted after N of M; rerun the same command to resume``. Files are written through
a temporary file and ``os.replace``, with the permissions the umask gives (``0o666 & ~umask``).

>>> run = open_run("runs/x", "detect", {"--mode": "greedy"}, model="organism", seed=0)  # doctest: +SKIP
>>> with track("detect", total=10, done=len(run.records())) as bar:  # doctest: +SKIP
...     run.append({"id": 1}); bar.advance()
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FORMAT_PREFIX = "headatlas/"
#: Format prefixes of files written before the rename to headatlas (read as if written today).
LEGACY_FORMAT_PREFIXES: tuple[str, ...] = ("retrieval-heads/",)
FORMAT_VERSION = 1
RUN_FILE = "run.json"
JOURNAL_FILE = "journal.jsonl"


class ResumeMismatchError(ValueError):
    """An output folder holds another run (other kind, settings or weights): resuming would mix the two.

    A ``ValueError``: a folder that cannot take this run is bad input, which every command reports in one line.
    """


# ---- files --------------------------------------------------------------------------------------
def _umask() -> int:
    try:  # Linux says it without changing it (another thread may be creating files meanwhile)
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0)  # elsewhere: set and restore at once
        os.umask(mask)
        return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (atomic on POSIX).

    The file gets the mode a plain ``open(path, "w")`` would give it (``0o666`` less the umask),
    not ``mkstemp``'s private ``0o600``, so results can be shared as the user's umask intends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


def atomic_write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]], default: Any = None) -> Path:
    """Write ``rows`` as a whole JSONL file, atomically (``default`` as in :func:`json.dumps`)."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=default) + "\n" for r in rows))


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one record as a single line and fsync it: a finished unit of work is never lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def repair_journal(path: str | Path) -> None:
    """Cut a torn last line (a crash mid-write) so that the next record starts on a line of its own."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


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
            if i == len(lines) - 1:  # a write interrupted mid-line: that unit is simply redone
                continue
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None


# ---- metadata and stamps ------------------------------------------------------------------------
def package_versions(names: Iterable[str] = ("torch", "transformers", "headatlas")) -> dict[str, str]:
    """Installed versions of the packages that shape a result."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def typed_command(argv: Iterable[str] | None = None) -> list[str]:
    """The command line as the user typed it: the program's name, never its path, then the arguments.

    ``/venv/bin/headatlas detect ...`` is ``headatlas detect ...``; ``python -m pkg.mod ...`` (whose
    ``sys.argv[0]`` is the module's file) is ``python -m pkg.mod ...``. No host name, no install path.

    >>> typed_command(["/opt/venv/bin/headatlas", "detect", "--model", "organism"])
    ['headatlas', 'detect', '--model', 'organism']
    """
    args = [str(a) for a in (sys.argv if argv is None else argv)]
    if not args:
        return []
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if argv is None and spec is not None and spec.name and args[0].endswith(".py"):  # python -m NAME
        return ["python", "-m", spec.name.removesuffix(".__main__"), *args[1:]]
    return [Path(args[0]).name, *args[1:]]


def run_metadata(**settings: Any) -> dict[str, Any]:
    """Metadata stamped on every artifact: the settings given, versions, time and the command as typed
    (:func:`typed_command`); nothing that names the machine (no host name, no interpreter path)."""
    return {**settings, "versions": package_versions(), "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": typed_command()}


def format_name(kind: str) -> str:
    """``headatlas/<kind>``, the ``format`` of an artifact of that kind."""
    return kind if kind.startswith(FORMAT_PREFIX) else FORMAT_PREFIX + kind


def canonical_format(name: Any) -> str:
    """An artifact's ``format`` as written today: legacy prefixes are read as :data:`FORMAT_PREFIX`.

    >>> canonical_format("retrieval-heads/head-scores")
    'headatlas/head-scores'
    >>> canonical_format(None)
    ''
    """
    name = name if isinstance(name, str) else ""
    for old in LEGACY_FORMAT_PREFIXES:
        if name.startswith(old):
            return FORMAT_PREFIX + name[len(old):]
    return name


def stamp(kind: str, data: Mapping[str, Any], version: int = FORMAT_VERSION) -> dict[str, Any]:
    """``data`` with ``format`` and ``format_version`` first (what :mod:`headatlas.report` dispatches on).

    >>> stamp("niah-eval", {"cells": []})
    {'format': 'headatlas/niah-eval', 'format_version': 1, 'cells': []}
    """
    rest = {k: v for k, v in data.items() if k not in ("format", "format_version")}
    return {"format": format_name(kind), "format_version": version, **rest}


def flags(settings: Mapping[str, Any], names: Iterable[str] | None = None) -> dict[str, Any]:
    """Settings keyed by their command-line flag (``rouge_threshold`` -> ``--rouge-threshold``).

    >>> flags({"rouge_threshold": 0.5, "seed": 0}, ["seed"])
    {'--seed': 0}
    """
    keys = list(settings) if names is None else list(names)
    return {"--" + k.replace("_", "-"): settings[k] for k in keys}


# ---- refusing another run -------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line ``name: old (recorded) vs new (now)`` per setting whose value differs.

    >>> settings_diff({"--seed": 0, "--mode": "greedy"}, {"--seed": 1, "--mode": "greedy"})
    ['--seed: 0 (recorded) vs 1 (now)']
    """
    old, new = _jsonable(dict(old)), _jsonable(dict(new))
    return [f"{k}: {_show(old.get(k))} (recorded) vs {_show(new.get(k))} (now)"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _show(value: Any) -> str:
    return "(not set)" if value is None else repr(value)


def fingerprint_diff(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """One line per content fingerprint that differs, in words (a hash tells a user nothing).

    >>> fingerprint_diff({"the model's weights": "ab"}, {"the model's weights": "cd"})
    ["the model's weights differ from the recorded run's"]
    """
    return [f"{k} differ from the recorded run's" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _refusal(where: Path, what: str, diffs: list[str], hint: str) -> ResumeMismatchError:
    return ResumeMismatchError(
        f"{where} holds {what} made with other settings, so it was not resumed (nothing was written):\n  "
        + "\n  ".join(diffs) + f"\n{hint}"
    )


class Run:
    """An opened run folder: its settings, metadata, journal, per-cell files and stamped artifacts."""

    def __init__(self, out_dir: Path, kind: str, settings: dict[str, Any], meta: dict[str, Any],
                 record_file: Path, journal: str, resumed: bool) -> None:
        self.dir, self.kind, self.settings, self.meta = out_dir, kind, settings, meta
        self.record_file, self.journal, self.resumed = record_file, out_dir / journal, resumed
        self._repaired: set[Path] = set()

    # journal
    def records(self, journal: str | Path | None = None) -> list[dict[str, Any]]:
        """The finished units in the journal (or in another journal file of the run)."""
        return list(read_jsonl(self._journal(journal)))

    def append(self, record: Mapping[str, Any], journal: str | Path | None = None) -> None:
        """Journal one finished unit (one line, fsync'd; a torn line left by a crash is cut first)."""
        path = self._journal(journal)
        if path not in self._repaired:
            repair_journal(path)
            self._repaired.add(path)
        append_jsonl(path, record)

    def _journal(self, journal: str | Path | None) -> Path:
        return self.journal if journal is None else self.dir / journal

    # artifacts
    def write_json(self, name: str | Path, data: Mapping[str, Any], kind: str | None = None) -> Path:
        """Write ``data`` under the run folder, stamped (format, version) and with the run's ``meta``."""
        body = dict(data)
        body["meta"] = {**self.meta, **body.get("meta", {})}
        return atomic_write_json(self.dir / name, stamp(kind or self.kind, body))

    # per-cell files
    def cell(self, name: str | Path) -> dict[str, Any] | None:
        """A finished cell file, or ``None`` when missing or unreadable (it is then recomputed)."""
        path = self.dir / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def save_cell(self, name: str | Path, settings: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
        """Write one cell with the settings it depends on (checked by :func:`open_run` on a rerun)."""
        cell = stamp(f"{self.kind}-cell", {"settings": _jsonable(dict(settings)), **data})
        atomic_write_json(self.dir / name, cell)
        return cell


def open_run(
    out_dir: str | Path, kind: str, settings: Mapping[str, Any], *, fingerprints: Mapping[str, str] | None = None,
    cells: Mapping[str, Mapping[str, Any]] | None = None, record: Mapping[str, Any] | None = None,
    overwrite: bool = False, discard: Iterable[str] = (JOURNAL_FILE,), record_file: str = RUN_FILE,
    journal: str = JOURNAL_FILE, hint: str | None = None, **meta: Any,
) -> Run:
    """Open ``out_dir`` for a run of ``kind``; refuse, before writing anything, a folder that holds another run.

    ``settings`` maps each setting's user-facing name (a CLI flag such as
    ``--lengths``, or a config field) to its value; ``fingerprints`` maps a
    description (``"the model's weights"``) to a content hash that is compared
    but never shown. ``cells`` maps the file name of each per-cell result this
    run may reuse to the settings it depends on: an existing cell recorded with
    others is refused too. The run's record (``record_file``) holds the kind,
    settings, fingerprints, ``record`` and :func:`run_metadata` of ``meta``; it
    is written on the first run and kept on a resume. ``overwrite`` discards
    the earlier run instead of refusing (its ``discard`` files are deleted, its
    mismatched cells are recomputed). ``hint`` ends the refusal.
    """
    out = Path(out_dir)
    settings = _jsonable(dict(settings))
    fingerprints = dict(fingerprints or {})
    path = out / record_file
    hint = hint or f"Use another output folder, or delete {out} to start over."
    what = f"a {kind} run"
    resumed = False
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        if canonical_format(old.get("format")) != format_name(f"{kind}-run"):
            diffs = [f"its {record_file} is {old.get('format') or 'not from this version of headatlas'}, "
                     f"not {format_name(f'{kind}-run')}"]
        else:
            diffs = settings_diff(old.get("settings", {}), settings) + fingerprint_diff(
                old.get("fingerprints", {}), fingerprints)
        if diffs and not overwrite:
            raise _refusal(out, what, diffs, hint)
        resumed = not diffs
    stale = []
    for name, wanted in (cells or {}).items():
        cell = json.loads((out / name).read_text(encoding="utf-8")) if (out / name).is_file() else None
        diffs = settings_diff(cell.get("settings", {}), wanted) if isinstance(cell, dict) else []
        if diffs and not overwrite:
            raise _refusal(out / name, f"a cell of {what}", diffs, hint + " Or pass --overwrite to recompute it.")
        if diffs:
            stale.append(out / name)
    run_meta = run_metadata(**meta, settings=settings)
    if not resumed:
        for name in discard:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        atomic_write_json(path, stamp(f"{kind}-run", {"kind": kind, "settings": settings,
                                                      "fingerprints": fingerprints, **(record or {}),
                                                      "meta": run_meta}))
    for cell_path in stale:
        cell_path.unlink()
    return Run(out, kind, settings, run_meta, path, journal, resumed)


# ---- progress, resume and interrupt messages ------------------------------------------------------
class Tracker:
    """What :func:`track` yields: ``advance(n)`` one finished unit (or ``n``), and the count so far."""

    def __init__(self, progress: Any, task: Any, done: int, total: int) -> None:
        self._progress, self._task, self.done, self.total = progress, task, done, total

    def advance(self, n: int = 1, description: str | None = None, **fields: Any) -> None:
        self.done += n
        if description:
            fields["description"] = description
        self._progress.update(self._task, advance=n, **fields)


@contextmanager
def track(label: str, total: int, done: int = 0, *, enabled: bool = True, console: Any = None,
          progress: Any = None, **fields: Any) -> Iterator[Tracker]:
    """A progress bar over ``total`` units of which ``done`` were finished before (the bar starts there).

    Prints ``resuming: N of M done`` when ``done`` > 0 and, on Ctrl-C,
    ``interrupted after N of M; rerun the same command to resume`` before the
    ``KeyboardInterrupt`` goes on (the command line exits 130). ``progress`` is
    a rich ``Progress`` with other columns (default: :func:`~headatlas.progress.progress_bar`),
    ``fields`` its task's extra fields.
    """
    from rich.console import Console

    from .progress import progress_bar

    console = console or Console(stderr=True)
    bar = progress or progress_bar(enabled, console)
    if done:
        console.print(f"{label}: resuming: {done} of {total} done", highlight=False, soft_wrap=True)
    with bar:
        task = bar.add_task(label, total=total, completed=done, **fields)
        if done >= total:  # all done before: a finished bar (ETA 0:00:00, not -:--:--)
            bar.update(task, completed=done)
        tracker = Tracker(bar, task, done, total)
        try:
            yield tracker
        except KeyboardInterrupt:
            bar.stop()
            console.print(f"{label}: interrupted after {tracker.done} of {total}; rerun the same command to resume",
                          highlight=False, soft_wrap=True)
            raise
