"""Files written before the rename (``retrieval-heads/<kind>`` formats) still load: one of each kind.

The fixtures in tests/fixtures/legacy_retrieval_heads were written by the code of 22e6942 (see its README).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from headatlas.heads import HeadScores
from headatlas.masking import read_ablation
from headatlas.report.collect import collect_runs
from headatlas.runs import FORMAT_PREFIX, ResumeMismatchError, canonical_format, open_run

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_retrieval_heads"
JSON_FILES = sorted(p for p in LEGACY.rglob("*.json"))


def test_every_fixture_is_written_under_the_old_name():
    formats = {json.loads(p.read_text())["format"] for p in JSON_FILES if "format" in json.loads(p.read_text())}
    assert len(formats) >= 15 and all(f.startswith("retrieval-heads/") for f in formats)


@pytest.mark.parametrize("path", JSON_FILES, ids=[str(p.relative_to(LEGACY)) for p in JSON_FILES])
def test_old_format_names_read_as_todays(path):
    fmt = json.loads(path.read_text()).get("format")
    if fmt is not None:
        assert canonical_format(fmt) == FORMAT_PREFIX + fmt.split("/", 1)[1]


def test_old_head_scores_load():
    scores = HeadScores.load(LEGACY / "head_scores.json")
    assert (scores.n_layers, scores.n_heads) == (4, 32)
    best, score = scores.ranked()[0]
    assert best.layer == 3 and score > 0.1


def test_old_ablation_record_loads():
    heads = read_ablation(LEGACY / "ablated")
    assert len(heads) == 6 and all(h.layer == 3 for h in heads)


def test_report_reads_every_old_artifact():
    report = collect_runs([LEGACY])
    assert report.unrecognised == [] and report.warnings == []
    assert report.score_maps and report.niah and report.compare and report.retmask and report.pair_stats
    assert report.training and report.dpo_curves and report.sharing and report.rh_vs_rth
    assert {d["format"].rsplit("/", 1)[1] for _, d in report.uses} == {"kv-compress", "decore"}


@pytest.mark.parametrize("run", ["niah", "kv", "decore", "compare", "detect"])
def test_old_run_records_resume_and_refuse_as_todays(tmp_path, run):
    out = tmp_path / run
    shutil.copytree(LEGACY / run, out)
    old = json.loads((out / "run.json").read_text())
    kind = old["format"].rsplit("/", 1)[1].removesuffix("-run")
    settings = old["settings"]
    fingerprints = old.get("fingerprints") or {}
    # the same settings resume the old run (it is not refused for its format name) ...
    assert open_run(out, kind, settings, fingerprints=fingerprints).resumed
    changed = {**settings, "--seed": 12345}
    # ... and other settings are refused naming the setting, not the format
    with pytest.raises(ResumeMismatchError) as err:
        open_run(out, kind, changed, fingerprints=fingerprints)
    assert "--seed" in str(err.value) and "retrieval-heads/" not in str(err.value)
