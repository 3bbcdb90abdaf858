"""The run contract (runs.py): refusing another run before writing, journals, cells, stamps, messages, umask."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from headatlas.runs import (
    ResumeMismatchError,
    append_jsonl,
    atomic_write_json,
    open_run,
    read_jsonl,
    track,
    typed_command,
)


def _files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_open_run_records_resumes_refuses_before_writing_and_overwrites(tmp_path):
    out = tmp_path / "run"
    settings = {"--mode": "greedy", "--lengths": (128, 256)}
    run = open_run(out, "test", settings, fingerprints={"the model's weights": "aaaa"}, model="m", seed=3)
    assert not run.resumed
    saved = json.loads((out / "run.json").read_text())
    assert saved["format"] == "headatlas/test-run" and saved["format_version"] == 1
    assert saved["settings"] == {"--mode": "greedy", "--lengths": [128, 256]}  # a tuple equals its JSON list
    meta = saved["meta"]
    assert meta["model"] == "m" and meta["seed"] == 3 and meta["command"] == typed_command()
    assert "/" not in meta["command"][0] and meta["command"][len(meta["command"]) - len(sys.argv) + 1 :] == sys.argv[1:]
    assert {"versions", "created", "python"} <= set(meta) and "host" not in meta
    run.append({"i": 0})

    assert open_run(out, "test", settings, fingerprints={"the model's weights": "aaaa"}).resumed
    files = _files(out)
    with pytest.raises(ResumeMismatchError) as err:
        open_run(out, "test", {**settings, "--lengths": [512], "--seed": 1}, fingerprints={"the model's weights": "bb"})
    msg = str(err.value)
    assert "--lengths: [128, 256] (recorded) vs [512] (now)" in msg and "--seed: (not set) (recorded) vs 1 (now)" in msg
    assert "the model's weights differ from the recorded run's" in msg and "aaaa" not in msg  # no opaque hashes
    assert "--mode" not in msg and "nothing was written" in msg
    assert _files(out) == files
    with pytest.raises(ResumeMismatchError, match="is headatlas/test-run, not headatlas/other-run"):
        open_run(out, "other", settings)
    # overwrite: the old journal is discarded and the new settings recorded
    run = open_run(out, "test", {"--mode": "teacher"}, overwrite=True)
    assert not run.resumed and run.records() == []
    assert json.loads((out / "run.json").read_text())["settings"] == {"--mode": "teacher"}


def test_cells_are_checked_before_anything_is_written(tmp_path):
    run = open_run(tmp_path, "grid", {"--mode": "zero"}, cells={"cells/a.json": {"heads": ["0.1"]}})
    cell = run.save_cell("cells/a.json", {"heads": ["0.1"]}, {"score": 0.5})
    assert cell["format"] == "headatlas/grid-cell" and run.cell("cells/a.json")["score"] == 0.5
    files = _files(tmp_path)
    with pytest.raises(ResumeMismatchError, match=r"cells/a.json .*\n  heads: \['0.1'\] \(recorded\) vs \['0.2'\]"):
        open_run(tmp_path, "grid", {"--mode": "zero"}, cells={"cells/a.json": {"heads": ["0.2"]}})
    assert _files(tmp_path) == files
    run = open_run(tmp_path, "grid", {"--mode": "zero"}, cells={"cells/a.json": {"heads": ["0.2"]}}, overwrite=True)
    assert run.cell("cells/a.json") is None  # stale: recomputed


def test_write_json_stamps_format_version_and_metadata(tmp_path):
    run = open_run(tmp_path, "niah-eval", {"--mode": "zero"}, model="organism", seed=0)
    data = json.loads(run.write_json("cells.json", {"cells": [], "meta": {"n": 2}}).read_text())
    assert data["format"] == "headatlas/niah-eval" and data["format_version"] == 1
    assert data["meta"]["model"] == "organism" and data["meta"]["n"] == 2 and data["meta"]["settings"] == {
        "--mode": "zero"}


def test_track_says_resuming_and_interrupted(capsys):
    with track("job", total=5, done=2, enabled=False) as bar:
        bar.advance()
    assert "job: resuming: 2 of 5 done" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt), track("job", total=5, done=0, enabled=False) as bar:
        bar.advance()
        raise KeyboardInterrupt
    err = capsys.readouterr().err
    assert "job: interrupted after 1 of 5; rerun the same command to resume" in err and "resuming" not in err


def test_jsonl_skips_a_torn_last_line_only(tmp_path):
    path = tmp_path / "j.jsonl"
    append_jsonl(path, {"i": 0})
    append_jsonl(path, {"i": 1})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"i": 2, "trunc')  # a crash mid-write
    assert [r["i"] for r in read_jsonl(path)] == [0, 1]
    run = open_run(tmp_path, "j", {}, journal="j.jsonl")
    run.append({"i": 3})  # the torn line is cut first: the new record is a line of its own
    assert [r["i"] for r in run.records()] == [0, 1, 3]
    path.write_text('{"i": 0}\nnot json\n{"i": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        list(read_jsonl(path))


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    """mkstemp makes 0600 files; an artifact must get what a plain open() would give (shareable results)."""
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


def test_run_metadata_records_the_command_as_typed_and_nothing_of_the_machine(monkeypatch):
    """The program's name, not its path; no host name, no interpreter path anywhere in the metadata."""
    import platform

    from headatlas.runs import run_metadata

    typed = ["detect", "--model", "organism", "--out", "runs/x"]
    monkeypatch.setattr(sys, "argv", [str(Path(sys.executable).parent / "headatlas"), *typed])
    meta = run_metadata(model="organism", seed=0)
    assert meta["command"] == ["headatlas", *typed]
    text = json.dumps(meta)
    assert "host" not in meta and sys.executable not in text and str(Path(sys.executable).parent) not in text
    if len(platform.node()) > 3:  # a name that short could occur by chance in a version string
        assert platform.node() not in text
