"""kv-compress and decore results, as their runs write them, appear in the run report with their numbers."""

from __future__ import annotations

from types import SimpleNamespace

from headatlas.decore import experiment as dx
from headatlas.heads import Head
from headatlas.kvcache import experiment as kx
from headatlas.kvcache.plan import KVHead
from headatlas.report import collect_runs, render_report
from headatlas.runs import atomic_write_json, stamp


def _kv_result() -> dict:
    prompts = [SimpleNamespace(meta={"prompt_id": f"p{i}"}) for i in range(4)]
    conds = [kx.Condition("full", "full", [KVHead(0, 0), KVHead(0, 1)], 2),
             kx.Condition("windowed", "windowed", [], 0),
             kx.Condition("retrieval", "retrieval", [KVHead(0, 1)], 1),
             kx.Condition("random-retrieval-s0", "random-retrieval", [KVHead(0, 0)], 1, 0)]
    acc = {"full": 1.0, "windowed": 0.0, "retrieval": 1.0, "random-retrieval-s0": 0.25}
    kv = {"full": 4096, "windowed": 512, "retrieval": 2304, "random-retrieval-s0": 2304}
    done = {(c.name, p.meta["prompt_id"]): {"correct": float(i < 4 * acc[c.name]), "kv_bytes": kv[c.name]}
            for c in conds for i, p in enumerate(prompts)}
    return stamp("kv-compress", {"meta": {"model": "tiny"}, **kx.summarize(conds, prompts, done)})


def _decore_result() -> dict:
    items = [{"id": f"i{i}"} for i in range(4)]
    conds = [dx.Condition("base", "base", [], None), dx.Condition("retrieval-a1", "retrieval", [Head(0, 1)], 1.0),
             dx.Condition("random-a1-s0", "random", [Head(0, 2)], 1.0, 0)]
    faithful = {"base": 1, "retrieval-a1": 3, "random-a1-s0": 1}
    done = {(c.name, it["id"]): {"faithful": float(i < faithful[c.name]), "memorised": float(i >= faithful[c.name])}
            for c in conds for i, it in enumerate(items)}
    return stamp("decore", {"meta": {"model": "tiny"}, **dx.summarize(conds, items, done)})


def test_summaries_and_report_section(tmp_path):
    kv, de = _kv_result(), _decore_result()
    assert kv["headline"]["retrieval_accuracy"] == 1.0 and kv["headline"]["random_retrieval_accuracy"] == 0.25
    assert kv["headline"]["retrieval_kv_share"] == 2304 / 4096
    assert [r["faithful"]["rate"] for r in de["conditions"]] == [0.25, 0.75, 0.25]
    atomic_write_json(tmp_path / "kv" / kx.RESULT_FILE, kv)
    atomic_write_json(tmp_path / "decore" / dx.RESULT_FILE, de)
    report = collect_runs([tmp_path / "kv", tmp_path / "decore"])
    assert len(report.uses) == 2 and not report.warnings
    html = render_report(report)
    assert 'id="uses"' in html and "random-retrieval-s0" in html and "retrieval-a1" in html
    assert "0.5625" in html and "0.7500" in html  # the retrieval KV share, the faithful rate
