"""The comparison: conditions, random controls outside every set, determinism, resume, tables."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer import Typer
from typer.testing import CliRunner

from headatlas import Head, HeadScoreFileError, HeadScores
from headatlas.commands.compare import compare_command
from headatlas.evaluate.compare import (
    CompareConfig,
    format_csv,
    format_markdown,
    run_compare,
    summarize,
)
from headatlas.evaluate.conditions import Condition, build_conditions
from headatlas.runs import ResumeMismatchError
from headatlas.selection import HeadSelection, layer_histogram, random_heads


def _config(out, tiny_dir, head_files, local_tasks, **kw) -> CompareConfig:
    base = dict(model=str(tiny_dir), tasks=["tiny_mc", "organism_mono"], out=str(out),
                heads={k: str(v) for k, v in head_files.items()}, top_k=3, random_seeds=2, limit=4,
                include_path=[str(local_tasks)], gen_kwargs={"max_gen_toks": 6}, device="cpu")  # fmt: skip
    return CompareConfig(**{**base, **kw})


def test_random_controls_never_hit_a_given_set():
    a, b = torch.zeros(4, 6), torch.zeros(4, 6)
    a[3, :2], a[2, 0], b[1, 2], b[2, 2], b[3, 4] = 1.0, 0.95, 0.9, 0.8, 0.7
    sets = {"rh": HeadScores(a), "rth": HeadScores(b)}
    banned = set(sets["rh"].top_k(3)) | set(sets["rth"].top_k(3))
    plain = build_conditions(sets, top_k=3, random_seeds=20, n_layers=4, n_heads=6)
    matched = build_conditions(sets, top_k=3, random_seeds=5, n_layers=4, n_heads=6, layer_matched=True)
    for c in plain + matched:
        if c.kind == "random":
            assert len(c.heads) == 3 and not banned & set(c.heads), c
    assert [c.name for c in plain[:3]] == ["unmasked", "rh", "rth"] and plain[3].name == "random-s0"
    assert len({c.heads for c in plain if c.kind == "random"}) > 1  # seeds differ
    for c in matched:
        if c.kind == "random":
            assert layer_histogram(c.heads, 4) == layer_histogram(sets[c.head_set].top_k(3), 4)
            assert c.name == f"random-{c.head_set}-s{c.seed}" and c.group == f"random-{c.head_set}"
            top = sets[c.head_set].top_k(3)
            assert list(c.heads) == random_heads(4, 6, 3, c.seed, exclude=banned, layer_matched_to=top)
    # the draws are the package's one rule: random_heads(n_layers, n_heads, K, seed, exclude=union of the top-Ks)
    assert [list(c.heads) for c in plain[3:]] == [random_heads(4, 6, 3, s, exclude=banned) for s in range(20)]
    default = build_conditions(sets, top_k=None, random_seeds=1, n_layers=4, n_heads=6)  # K = 5 % of 24 heads
    assert [len(c.heads) for c in default] == [0, 1, 1, 1]


def test_a_score_file_for_another_model_is_named_with_both_shapes(tmp_path):
    path = HeadScores(torch.rand(3, 6)).save(tmp_path / "rh.json")
    with pytest.raises(HeadScoreFileError, match=r"rh\.json: head scores are 3 layers x 6 heads.*has 4 x 6"):
        build_conditions({"rh": str(path)}, top_k=2, random_seeds=1, n_layers=4, n_heads=6)


def test_summary_numbers_by_hand():
    conds = [Condition("unmasked"), Condition("rh", HeadSelection(heads=(Head(0, 0),)), (Head(0, 0),), "rh"),
             Condition("random-s0", HeadSelection(random_seed=0, top_k=1), (Head(0, 1),)),
             Condition("random-s1", HeadSelection(random_seed=1, top_k=1), (Head(0, 2),))]  # fmt: skip
    items = {"unmasked": [1, 1, 0, 0], "rh": [0, 0, 0, 0], "random-s0": [1, 0, 0, 0], "random-s1": [1, 1, 1, 0]}
    cells = {(c, "t"): {"items": {str(i): float(v) for i, v in enumerate(vals)}, "metric": "acc", "filter": "none"}
             for c, vals in items.items()}  # fmt: skip
    rows, seed_rows = summarize(cells, conds, ["t"], n_bootstrap=500)
    by = {r["condition"]: r for r in rows}
    assert by["unmasked"]["score"] == 0.5 and by["unmasked"]["delta"] == 0.0
    assert by["rh"]["score"] == 0.0 and by["rh"]["delta"] == -0.5 and by["rh"]["delta_ci_high"] <= 0.0
    assert by["random"]["score"] == 0.5 and by["random"]["seeds"] == [0, 1]  # seed means 0.25 and 0.75
    assert by["random"]["seed_sd"] == pytest.approx(0.3535534) and by["random"]["seed_min"] == 0.25
    assert [s["score"] for s in seed_rows] == [0.25, 0.75]
    md = format_markdown(rows)
    assert "| t | 50.0 | 0.0 (-50.0) | 50.0 (+0.0) |" in md and "random 1 (2 seeds)" in md
    assert format_csv(rows, seed_rows).count("random-seed") == 2


def test_compare_twice_gives_the_same_table_and_resumes(tiny_dir, tiny_model, head_files, local_tasks,
                                                         organism_standin, tmp_path):  # fmt: skip
    model, tok = tiny_model
    cfg = _config(tmp_path / "a", tiny_dir, head_files, local_tasks)
    first = run_compare(cfg, model=model, tokenizer=tok, progress=False)
    assert len(first.computed) == 5 * 2  # unmasked, rh, rth, 2 random seeds x 2 tasks
    for name in ("results.md", "results.csv", "results.json", "results.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0

    # the recorded heads are the ones masked; random heads avoid both sets' top-3
    report = json.loads((tmp_path / "a" / "results.json").read_text())
    conds = {c["name"]: c for c in report["conditions"]}
    top = {k: [str(h) for h in sorted(HeadScores.load(v).top_k(3))] for k, v in head_files.items()}
    assert conds["rh"]["heads"] == top["rh"] and conds["rth"]["heads"] == top["rth"]
    for seed in (0, 1):
        assert conds[f"random-s{seed}"]["seed"] == seed
        assert not set(conds[f"random-s{seed}"]["heads"]) & (set(top["rh"]) | set(top["rth"]))
    cell = json.loads((tmp_path / "a" / "cells" / "random-s1" / "tiny_mc.json").read_text())
    assert cell["meta"]["heads"] == conds["random-s1"]["heads"] and cell["meta"]["top_k"] == 3
    assert cell["meta"]["mode"] == "zero" and "lm-eval" in cell["meta"]["versions"]
    assert [r["seeds"] for r in report["rows"] if r["kind"] == "random"] == [[0, 1], [0, 1]]
    assert len(cell["items"]) == 4
    # the masks were applied: the log-likelihoods of the choices differ from unmasked under every condition
    unmasked = json.loads((tmp_path / "a" / "cells" / "unmasked" / "tiny_mc.json").read_text())["responses"]
    for name in ("rh", "rth", "random-s0"):
        masked = json.loads((tmp_path / "a" / "cells" / name / "tiny_mc.json").read_text())["responses"]
        assert masked.keys() == unmasked.keys() and masked != unmasked

    # the same command again, from the command line into a fresh folder: the same tables
    app = Typer()
    app.command()(compare_command)
    args = ["--model", str(tiny_dir), "--heads", f"rh={head_files['rh']}", "--heads", f"rth={head_files['rth']}",
            "--tasks", "tiny_mc,organism_mono", "--top-k", "3", "--random-seeds", "2", "--limit", "4",
            "--include-path", str(local_tasks), "--gen-kwargs", "max_gen_toks=6", "--device", "cpu",
            "--out", str(tmp_path / "b"), "--no-progress"]  # fmt: skip
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    for name in ("results.md", "results.csv"):
        assert (tmp_path / "b" / name).read_text() == (tmp_path / "a" / name).read_text()
    assert "tiny_mc" in run.output

    # resume: nothing to do; a lost cell is recomputed alone; the table does not change
    again = run_compare(cfg, model=model, tokenizer=tok, progress=False)
    assert again.computed == []
    (tmp_path / "a" / "cells" / "rth" / "organism_mono.json").unlink()
    again = run_compare(cfg, model=model, tokenizer=tok, progress=False)
    assert again.computed == [("rth", "organism_mono")]
    assert again.markdown == first.markdown

    # other settings in the same folder: refused before anything is written (the old code rewrote run.json
    # first, so the folder then recorded settings its cells were not made with), unless asked to overwrite
    files = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    other = _config(tmp_path / "a", tiny_dir, head_files, local_tasks, top_k=2, random_seeds=0, tasks=["tiny_mc"])
    with pytest.raises(ResumeMismatchError) as refused:
        run_compare(other, model=model, tokenizer=tok, progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == files
    assert re.search(r"cells/rh/tiny_mc.json .*\n  heads masked: \[", str(refused.value))
    with pytest.raises(ResumeMismatchError, match="--limit: 4 .recorded. vs 3 .now."):
        run_compare(_config(tmp_path / "a", tiny_dir, head_files, local_tasks, limit=3), model=model, tokenizer=tok,
                    progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == files
    other.overwrite = True
    assert len(run_compare(other, model=model, tokenizer=tok, progress=False).computed) == 2  # rh, rth changed


def test_config_is_validated(head_files, tmp_path):
    with pytest.raises(ValueError, match="mask mode"):
        CompareConfig(model="m", tasks=["t"], out=str(tmp_path), mode="drop")
    with pytest.raises(ValueError, match="head-set name"):
        CompareConfig(model="m", tasks=["t"], out=str(tmp_path), heads={"random": str(head_files["rh"])})
    with pytest.raises(FileNotFoundError):
        CompareConfig(model="m", tasks=["t"], out=str(tmp_path), heads={"rh": str(tmp_path / "missing.json")})
    with pytest.raises(ValueError, match="metric,filter"):
        CompareConfig(model="m", tasks=["t"], out=str(tmp_path), metrics={"t": "acc"})
    assert CompareConfig(model="m", tasks=["t"], out=str(tmp_path), limit=5.0).limit == 5


def test_head_counts_and_limits_are_refused_never_cut(head_files):
    """niah-eval --top-k 1000 masked every head (cut to the model's 24); compare --limit 2.5 ran 2 items."""
    from headatlas.evaluate.compare import CompareConfig
    from headatlas.evaluate.conditions import build_conditions
    from headatlas.selection import HeadSelectionError

    with pytest.raises(HeadSelectionError, match="top_k=1000 is more than the model's 24 heads"):
        build_conditions(head_files, 1000, 1, 3, 8)
    with pytest.raises(HeadSelectionError, match=r"rh=.*rh\.json: top_k=5: only 4 of the 24 heads score"):
        build_conditions({"rh": head_files["rh"]}, 5, 0, 3, 8)
    assert len(build_conditions(head_files, 4, 1, 3, 8)[1].heads) == 4
    with pytest.raises(ValueError, match="made for model .*tiny-llama.*, not for other"):
        build_conditions(head_files, 2, 0, 3, 8, model="other")
    assert build_conditions(head_files, 2, 0, 3, 8, model="other", allow_other_model=True)[1].heads
    with pytest.raises(ValueError, match="limit 2.5: give a whole number"):
        CompareConfig(model="m", tasks=["t"], out="o", limit=2.5)
    assert CompareConfig(model="m", tasks=["t"], out="o", limit=3.0).limit == 3
