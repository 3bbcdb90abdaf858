"""The shared file helpers: atomic writes, torn JSONL lines, and the resume check every resumable command uses."""

import json

import pytest

from retrieval_heads.artifacts import (
    ResumeMismatchError,
    append_jsonl,
    atomic_write_json,
    check_or_record,
    read_jsonl,
)


def test_check_or_record_records_resumes_refuses_and_overwrites(tmp_path):
    path = tmp_path / "run" / "run.json"
    settings = {"mode": "greedy", "lengths": (128, 256), "weights": "aaaa"}
    assert check_or_record(path, "settings", settings, what="a test run", hint="hint", record={"format": "x"}) is False
    saved = json.loads(path.read_text())
    assert saved == {"format": "x", "settings": {"mode": "greedy", "lengths": [128, 256], "weights": "aaaa"}}
    # same settings (a tuple equals its JSON list): resumable, file untouched
    assert check_or_record(path, "settings", settings, what="a test run", hint="hint") is False
    assert json.loads(path.read_text()) == saved
    # other weights and a new key: refused, naming both, and nothing is overwritten
    other = {**settings, "weights": "bbbb", "seed": 1}
    with pytest.raises(ResumeMismatchError) as err:
        check_or_record(path, "settings", other, what="a test run", hint="Use another folder.")
    msg = str(err.value)
    assert "weights: 'aaaa' (recorded) vs 'bbbb' (now)" in msg and "seed: None (recorded) vs 1 (now)" in msg
    assert "mode" not in msg and msg.endswith("Use another folder.")
    assert json.loads(path.read_text()) == saved
    # overwrite: the new settings are recorded and the caller is told to discard the old work
    assert check_or_record(path, "settings", other, what="a test run", hint="", overwrite=True) is True
    assert json.loads(path.read_text())["settings"]["weights"] == "bbbb"


def test_check_or_record_raises_the_callers_subclass(tmp_path):
    from retrieval_heads.detect import DetectionError
    from retrieval_heads.detect import ResumeMismatchError as DetectResumeMismatchError

    path = tmp_path / "run.json"
    check_or_record(path, "fingerprint", {"a": 1}, what="a detection run", hint="")
    with pytest.raises(DetectionError):
        check_or_record(path, "fingerprint", {"a": 2}, what="a detection run", hint="", error=DetectResumeMismatchError)
    assert issubclass(DetectResumeMismatchError, ResumeMismatchError)


def test_jsonl_skips_a_torn_last_line_only(tmp_path):
    path = tmp_path / "j.jsonl"
    append_jsonl(path, {"i": 0})
    append_jsonl(path, {"i": 1})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"i": 2, "trunc')  # a crash mid-write
    assert [r["i"] for r in read_jsonl(path)] == [0, 1]
    path.write_text('{"i": 0}\nnot json\n{"i": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        list(read_jsonl(path))


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
