"""Benchmark fixtures: schemas, real task names resolving to local data, end-to-end runs; organism tasks."""

from __future__ import annotations

import json

import pytest
from lm_eval import simple_evaluate

from headatlas import Head
from headatlas.evaluate import fixtures
from headatlas.evaluate.lm_eval_backend import MaskedHFLM
from tests.evaluate.conftest import standin_eval_set

REAL_NAMES = ["mgsm_native_cot_de", "mgsm_en_cot_de", "mmlu_prox_de_biology", "mlqa_de_de", "xquad_de"]


def test_schemas_are_what_lm_eval_reads(bench_fixtures):
    from datasets import load_dataset

    def load(family, name, split):
        path = bench_fixtures.root / "data" / family / name / f"{split}.parquet"
        return load_dataset("parquet", data_files={split: str(path)})[split]

    mgsm = load("mgsm", "de", "test")
    assert mgsm.features == fixtures.schemas()["mgsm"]
    assert mgsm[0]["answer"] is None and isinstance(mgsm[0]["answer_number"], int)
    train = load("mgsm", "de", "train")[0]
    assert train["answer"].startswith("Schritt-für-Schritt-Antwort: ")  # lm-eval slices answer[29:]
    mc = load("mmlu_prox", "zh", "validation")
    assert mc.features == fixtures.schemas()["mmlu_prox"] and mc[0]["cot_content"].startswith("A: 让我们一步一步地思考。")
    assert {r["category"] for r in mc} == {s.replace("_", " ") for s in fixtures.MMLU_PROX_SUBJECTS}
    for family, name, split in [("mlqa", "de.en", "test"), ("xquad", "zh", "validation")]:
        ds = load(family, name, split)
        assert ds.features == fixtures.schemas()[family]
        for r in ds:
            start, text = r["answers"]["answer_start"][0], r["answers"]["text"][0]
            assert r["context"][start : start + len(text)] == text


def test_every_fixture_task_resolves_to_the_local_copy(bench_fixtures, task_manager):
    assert set(REAL_NAMES) <= set(bench_fixtures.all_tasks)
    assert len(bench_fixtures.tasks["mmlu_prox"]) == 3 * 2 * 14 and len(bench_fixtures.tasks["mlqa"]) == 9
    for name in bench_fixtures.all_tasks:
        entry = task_manager.task_index[name]
        assert entry.yaml_path.is_relative_to(bench_fixtures.include_path), name


@pytest.mark.parametrize("task", ["mgsm_native_cot_de", "mmlu_prox_de_biology", "mlqa_de_de", "xquad_de", "mgsm_en_cot_zh"])
def test_real_benchmark_runs_end_to_end_on_fixtures(task, tiny_model, task_manager):
    model, tok = tiny_model
    lm = MaskedHFLM.from_model(model, tok, heads=[Head(1, 3), Head(2, 1)], batch_size=1)
    res = simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, limit=2, bootstrap_iters=0,
                          gen_kwargs={"max_gen_toks": 6}, log_samples=True)  # fmt: skip
    samples = res["samples"][task]
    assert len({s["doc_id"] for s in samples}) == 2
    config = res["configs"][task]
    assert config["dataset_path"] == "parquet" and config["task"] == task
    prompt = samples[0]["arguments"][0][0]
    if task.startswith("mgsm_native"):
        assert prompt.endswith("Schritt-für-Schritt-Antwort:") and "Die Antwort lautet" in str(config["filter_list"])
    elif task.startswith("mmlu_prox"):  # lm-eval's own 5-shot CoT prompt, fed from the fixture's validation split
        assert prompt.count("Antwort: Denken wir Schritt für Schritt nach.") == 6
    elif task.startswith("xquad"):
        assert prompt.startswith("Kontext: ") and set(res["results"][task]) >= {"f1,none", "exact_match,none"}
    assert res["config"]["masked_heads"] == ["1.3", "2.1"]


def test_organism_tasks_are_generate_until_exact_match(tiny_model, task_manager, organism_standin):
    model, tok = tiny_model
    lm = MaskedHFLM.from_model(model, tok, batch_size=1)
    res = simple_evaluate(model=lm, tasks=["organism_cross"], task_manager=task_manager, limit=3, bootstrap_iters=0,
                          log_samples=True)  # fmt: skip
    cfg = res["configs"]["organism_cross"]
    assert cfg["output_type"] == "generate_until" and cfg["generation_kwargs"]["until"] == ["\n"]
    sample, expected = res["samples"]["organism_cross"][0], standin_eval_set("cross", 1, 1234)[0]
    assert sample["arguments"][0][0] == expected.prompt and sample["target"] == expected.answer
    assert "exact_match,strip" in res["results"]["organism_cross"]
    written = list((organism_standin / "organism_tasks").glob("cross-n200-seed1234-*.jsonl"))
    assert len(written) == 1 and json.loads(written[0].read_text().splitlines()[0])["answer"] == expected.answer


def test_organism_data_is_cached_and_validated(organism_standin, monkeypatch):
    first = fixtures.write_organism_data("mono", n=5, seed=1)
    calls = []
    monkeypatch.setattr(fixtures, "organism_eval_set", lambda *a: calls.append(a) or [])
    assert fixtures.write_organism_data("mono", n=5, seed=1) == first and not calls  # reused, not regenerated
    with pytest.raises(ValueError, match="no examples"):
        fixtures.write_organism_data("mono", n=6, seed=1)
    with pytest.raises(ValueError, match="unknown organism task"):
        fixtures.write_organism_data("nope")


def test_derive_local_task_and_mlqa_conversion(tmp_path, tiny_model):
    squad = {"data": [{"title": "T", "paragraphs": [{"context": "Bonn liegt am Rhein.", "qas": [
        {"id": "q1", "question": "Wo liegt Bonn?", "answers": [{"text": "am Rhein", "answer_start": 11}]}]}]}]}  # fmt: skip
    (tmp_path / "mlqa.json").write_text(json.dumps(squad))
    rows = fixtures.mlqa_from_squad_json(tmp_path / "mlqa.json")
    data = fixtures.write_parquet(rows, fixtures.schemas()["mlqa"], tmp_path / "mlqa" / "test.parquet")
    yaml_path = fixtures.derive_local_task("mlqa_de_en", {"test": data, "validation": data}, tmp_path / "tasks")
    assert "mlqa/mlqa_de_en.yaml" in yaml_path.read_text()
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    model, tok = tiny_model
    res = simple_evaluate(model=MaskedHFLM.from_model(model, tok), tasks=["mlqa_de_en"], task_manager=tm, limit=1,
                          bootstrap_iters=0, gen_kwargs={"max_gen_toks": 4}, log_samples=True)  # fmt: skip
    assert res["samples"]["mlqa_de_en"][0]["target"] == ["am Rhein"]


def test_organism_examples_become_json_rows():
    from headatlas.organism.corpus import Example, NeedleSpan

    ex = Example(task="cross", prompt="... Nata lives in Berlin. ... Answer:", answer="Berlin", lang_needle="en",
                 lang_question="de", needles=[NeedleSpan(4, 25, 18, 24, "Berlin", "en")], length=128, depth=0.5)  # fmt: skip
    row = fixtures._as_row(ex, 7, "cross")
    assert row["id"] == "cross-7" and row["answer"] == "Berlin" and row["needles"][0]["target"] == "Berlin"
    assert json.loads(json.dumps(row)) == row
