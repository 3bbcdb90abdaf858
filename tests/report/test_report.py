"""Report collection and rendering on synthetic artifacts: every section, each one missing, broken files."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from headatlas.heads import HeadScores
from headatlas.report import (
    REPORT_FILE,
    NoArtifactsError,
    build_report,
    collect_runs,
    render_report,
    write_report,
)
from headatlas.runs import append_jsonl, atomic_write_json
from tests.report.conftest import ALL_PARTS, LENGTHS, N_HEADS, N_LAYERS, make_run, subset_run

ALL_SECTIONS = {"head-scores", "rh-vs-rth", "sharing", "detection", "niah", "compare", "retmask", "metadata"}
# the sections a run holding only one kind of artifact shows
ONLY = {
    "scores": {"head-scores", "metadata"},
    "samples": {"detection"},
    "transition": {"head-scores", "metadata"},
    "languages": {"head-scores", "sharing", "metadata"},
    "rh_rth": {"rh-vs-rth"},
    "niah": {"niah", "metadata"},
    "compare": {"compare", "metadata"},
    "retmask": {"retmask", "metadata"},
}
DATA_RE = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.S)


def sections(page: str) -> set[str]:
    return set(re.findall(r'<section id="([\w-]+)">', page))


def page_data(page: str) -> dict:
    match = DATA_RE.search(page)
    assert match, "the page must embed its data as JSON"
    return json.loads(match.group(1))


def test_full_run_has_every_section(full_run, full_page):
    path, report, page = full_page
    assert path == full_run / REPORT_FILE
    assert report.warnings == [] and 'id="warnings"' not in page
    assert sections(page) == ALL_SECTIONS
    assert [m.label for m in report.score_maps] == [
        "retrieval", "retrieval · de", "retrieval · en", "retrieval · zh", "transition · en→de"]
    for text in ("Gini coefficient", "top-10 share of the total score", "Difference vs unmasked", "95 % CI of Δ",
                 "Before and after RetMask training", "Preference pairs", "DPO training", "Top-5 overlap",
                 "Exact match by context length", "Rouge1 by context length"):
        assert text in page


@pytest.mark.parametrize("part", ALL_PARTS)
def test_only_one_artifact(full_run, tmp_path, part):
    page = render_report(collect_runs([subset_run(full_run, tmp_path / "run", (part,))]))
    assert sections(page) == ONLY[part]


@pytest.mark.parametrize(("part", "section"), [("samples", "detection"), ("niah", "niah"), ("compare", "compare"),
                                               ("retmask", "retmask"), ("languages", "sharing")])
def test_each_missing_artifact_drops_its_section(full_run, tmp_path, part, section):
    parts = tuple(p for p in ALL_PARTS if p != part)
    report = collect_runs([subset_run(full_run, tmp_path / "run", parts)])
    page = render_report(report)
    assert sections(page) == ALL_SECTIONS - {section}
    assert report.warnings == []


def test_rh_vs_rth_and_sharing_are_computed_without_their_files(full_run, tmp_path):
    run = subset_run(full_run, tmp_path / "run", ("scores", "transition", "languages"))
    (run / "ml" / "sharing.json").unlink()
    report = collect_runs([run])
    assert report.rh_vs_rth[0][0].startswith("computed from")
    assert report.rh_vs_rth[0][1]["top_k"] == 20
    assert report.sharing[0][1]["languages"] == ["de", "en", "zh"]
    assert {"rh-vs-rth", "sharing"} <= sections(render_report(report))


def test_no_external_urls_and_data_embedded(full_run, full_page):
    page = full_page[2]
    assert "http://" not in page and "https://" not in page
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert links and all(link.startswith(("data:", "#")) for link in links), "only data: URIs and in-page anchors"
    assert "<link" not in page and "<script src" not in page
    data = page_data(page)
    first = HeadScores.load(full_run / "detect" / "head_scores.json")
    heatmap = data["heatmaps"]["hm-0"]
    assert (heatmap["rowKey"], heatmap["colKey"]) == ("layer", "head")
    assert heatmap["values"] == first.scores.tolist()
    assert data["scoreMaps"][0]["n_layers"] == N_LAYERS and data["scoreMaps"][0]["n_heads"] == N_HEADS
    # every interactive figure has a static PNG fallback
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(pngs) >= len(data["heatmaps"]) + len(data["bars"])
    assert base64.b64decode(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count('class="static-fig"') == len(data["heatmaps"]) + len(data["bars"])


def test_niah_eval_cells(full_page):
    _, report, page = full_page
    assert [(r.source, r.metric) for r in report.niah] == [("run/niah/cells.json", "exact_match"),
                                                           ("run/niah/cells.json", "rouge1")]
    result = report.niah[0]
    assert result.baseline == "unmasked"
    assert [g.name for g in result.grids] == ["unmasked", "rh", "random-s0"]
    assert result.heads == {"unmasked": [], "rh": ["4.1", "5.3"], "random-s0": ["0.2", "1.5"]}
    grid = result.grids[0]
    assert grid.rows == [0.0, 0.5, 1.0] and grid.cols == LENGTHS
    assert all(v in (0.0, 0.5, 1.0) for row in grid.values for v in row)  # means of 2 prompts per cell
    data = page_data(page)
    diverging = [h for h in data["heatmaps"].values() if h["diverging"]]
    assert len(diverging) == 4 and all(h["rowKey"] == "depth" and h["colKey"] == "length" for h in diverging)
    assert "run/niah/cells.json" in [source for source, _ in report.metadata]


def test_compare_results(full_page):
    _, report, page = full_page
    (source, rows), = report.compare  # results.csv repeats results.json: read once
    assert source == "run/compare/results.json"
    by = {(r.task, r.condition): r for r in rows}
    assert set(by) == {(t, c) for t in ("mgsm", "xquad") for c in ("unmasked", "rh", "random")}
    rh, base = by[("mgsm", "rh")], by[("mgsm", "unmasked")]
    assert rh.delta == pytest.approx(rh.score - base.score)  # the paired change's mean is the difference
    assert rh.ci_low <= rh.score <= rh.ci_high and rh.delta_ci_low <= rh.delta <= rh.delta_ci_high
    assert (rh.k, rh.n, rh.metric) == (2, 40, "exact_match,none")
    assert "metric: exact_match,none" in page


def test_retmask_before_after(full_page):
    (cmp,) = full_page[1].retmask
    assert (cmp.source, cmp.base, cmp.models) == ("run/retmask/retmask_eval.json", "base", ["base", "retmask"])
    assert cmp.suites == ["multikey_long", "mono_long", "parametric"]
    assert cmp.results["retmask"]["multikey_long"]["delta"] == pytest.approx(0.13)
    assert cmp.results["base"]["parametric"]["ci95"] == pytest.approx(1.96 * (0.9 * 0.1 / 50) ** 0.5)
    assert cmp.concentration and cmp.concentration["gini"] > 0


def test_files_are_read_by_their_format_not_their_keys(tmp_path):
    """A file that looks like NIAH records or a comparison but carries no format is not guessed at."""
    run = tmp_path / "run"
    append_jsonl(run / "niah_results.jsonl", {"condition": "unmasked", "length": 100, "depth": 0.0, "score": 1.0})
    atomic_write_json(run / "compare.json", {"rows": [{"task": "mgsm", "condition": "unmasked", "score": 0.62}]})
    atomic_write_json(run / "sharing.json", {"languages": ["en"], "jaccard_matrix": [[1.0]]})  # unstamped
    report = collect_runs([run])
    assert report.empty and report.warnings == []
    assert sorted(report.unrecognised) == ["run/compare.json: not a headatlas artifact (no known format)",
                                           "run/sharing.json: not a headatlas artifact (no known format)"]


def test_corrupt_files_become_warnings(full_run, tmp_path):
    run = subset_run(full_run, tmp_path / "run", ("scores", "niah", "compare"))
    (run / "detect" / "head_scores.json").write_text('{"format": "headatlas/head-scores", "scores": [[0.1', "utf-8")
    atomic_write_json(run / "other_scores.json", {"format": "headatlas/head-scores", "n_layers": 3,
                                                  "n_heads": 2, "scores": [[0.1, 0.2], [0.3]]})
    cells = run / "niah" / "cells.json"
    cells.write_text(cells.read_text()[:200], "utf-8")  # cut short, as by a full disk
    append_jsonl(run / "extra" / "samples.jsonl", {"prompt_id": "a", "length": 1, "depth": 0.0, "counted": True})
    with open(run / "extra" / "samples.jsonl", "a") as fh:  # a torn line in the middle (not just the last) is corrupt
        fh.write("{torn\n" + json.dumps({"prompt_id": "b", "length": 2, "depth": 0.0, "counted": True}) + "\n")
    path, report = build_report([run])
    page = path.read_text(encoding="utf-8")
    assert len(report.warnings) == 4, report.warnings
    assert 'id="warnings"' in page
    for name in ("head_scores.json", "other_scores.json", "cells.json", "extra/samples.jsonl"):
        assert name in page.split('id="warnings"')[1].split("</div>")[0]
    assert "compare" in sections(page)  # the rest still renders
    assert "head-scores" not in sections(page) and "niah" not in sections(page)


def test_unknown_and_missing_inputs_never_crash_but_write_no_empty_report(tmp_path):
    run = tmp_path / "run"
    atomic_write_json(run / "notes.json", {"anything": [1, 2, 3]})
    (run / "config.json").write_text("{not json")  # a checkpoint file: skipped, no warning
    (run / "checkpoint-10").mkdir()
    (run / "checkpoint-10" / "head_scores.json").write_text("{broken")
    report = collect_runs([run, tmp_path / "missing"])
    assert report.empty and report.warnings == [f"{tmp_path / 'missing'}: no such directory"]
    with pytest.raises(NoArtifactsError, match=r"^no recognised artifacts in .*run/notes.json: not a headatlas"):
        build_report([run], require_artifacts=True)
    assert not (run / REPORT_FILE).exists()


def test_reference_format(tmp_path):
    run = tmp_path / "run"
    atomic_write_json(run / "reference_scores.json", {"0-0": [0.5, 0.7], "0-1": [0.0], "1-0": [], "1-1": [0.2]})
    report = collect_runs([run])
    assert report.warnings == [] and report.unrecognised == []
    assert report.score_maps[0].scores[(0, 0)] == pytest.approx(0.6)


def test_several_run_dirs_and_out_path(full_run, tmp_path):
    a = subset_run(full_run, tmp_path / "detect-run", ("scores", "samples"))
    b = subset_run(full_run, tmp_path / "eval-run", ("niah", "compare"))
    out = tmp_path / "reports"
    out.mkdir()
    path = write_report([a, b], out, title="Two runs")
    assert path == out / REPORT_FILE
    page = path.read_text(encoding="utf-8")
    assert sections(page) == {"head-scores", "detection", "niah", "compare", "metadata"}
    assert "<title>Two runs</title>" in page
    assert "detect-run/detect/head_scores.json" in page and "eval-run/compare/results.json" in page
    with pytest.raises(ValueError, match="at least one"):
        write_report([])


def test_cli(tmp_path):
    from headatlas.commands.report import report_command

    app = typer.Typer()
    app.command()(report_command)
    runner = CliRunner()
    run = make_run(tmp_path / "run", parts=("scores",))
    result = runner.invoke(app, [str(run), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "report written to" in result.output and (tmp_path / "r.html").exists()
    result = runner.invoke(app, [str(tmp_path / "nope")])
    assert result.exit_code != 0 and "no such run directory" in result.output
    broken = tmp_path / "broken"  # only a corrupt file: refused in one line naming it, no page written
    broken.mkdir()
    (broken / "head_scores.json").write_text('{"format": "headatlas/head-scores", "scores": [[0.1')
    result = runner.invoke(app, [str(broken)])
    assert result.exit_code != 0 and not (broken / REPORT_FILE).exists()
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "broken/head_scores.json: corrupt JSON" in lines[0], result.output


def test_top_k_table_is_sorted_by_score(full_page):
    page = render_report(full_page[1], heads_listed=7)
    table = page.split('id="topk-0"')[1].split("</table>")[0]
    scores = [float(v) for v in re.findall(r'<td class="num" data-value="([0-9.e-]+)">[0-9.]+</td></tr>', table)]
    assert len(scores) == 7 and scores == sorted(scores, reverse=True)


def test_static_figures_exist_without_a_page(tmp_path):
    from headatlas.report.figures import bars_png, heatmap_png, line_png

    for uri in (heatmap_png([[None, 1.0]], ["0"], ["a", "b"], "r", "c", "v", diverging=True),
                bars_png(["x", "y"], [("s", [1, None])], "x", "y"), line_png([1, 2], [3, 4], "x", "y")):
        assert base64.b64decode(uri.split(",", 1)[1])[:4] == b"\x89PNG"


def test_kind_from_folder_name(tmp_path):
    run = tmp_path / "runs"
    HeadScores(torch.rand(2, 3)).save(run / "rh" / "head_scores.json")  # no meta["method"]: the folder decides
    HeadScores(torch.rand(2, 3)).save(run / "rth" / "head_scores.json")
    report = collect_runs([run])
    assert [(m.kind, m.source) for m in report.score_maps] == [("retrieval", "runs/rh/head_scores.json"),
                                                               ("transition", "runs/rth/head_scores.json")]
    assert report.rh_vs_rth and report.rh_vs_rth[0][0].startswith("computed from")
    assert [m.kind for m in collect_runs([run / "rh", run / "rth"]).score_maps] == ["retrieval", "transition"]


def test_path_is_a_file(tmp_path):
    run = make_run(tmp_path / "run", parts=("scores",))
    report = collect_runs([run / "detect" / "head_scores.json"])
    assert [m.source for m in report.score_maps] == ["detect/head_scores.json"]
    assert Path(write_report([run / "detect" / "head_scores.json"])) == run / "detect" / REPORT_FILE


def test_panels_are_titled_by_language_in_the_runs_order_and_the_note_gives_the_real_k(full_page):
    _, report, page = full_page
    titles = re.findall(r'<details class="card" id="scores-\d+"[^>]*><summary>([^<]*)</summary>', page)
    assert [t.split(" — ")[0] for t in titles] == [
        "Retrieval heads", "Retrieval-transition heads: English (en) → German (de)",
        "English (en): retrieval heads", "German (de): retrieval heads", "Chinese (zh): retrieval heads"]
    k = 2  # 5 % of 6 x 8 heads, rounded: what selection.share_of_heads gives
    assert f"The {k} best heads (5 % of the heads" in page and "The 10 best heads" not in page
    outlines = [h["outline"] for h in page_data(page)["heatmaps"].values() if h["rowKey"] == "layer"]
    assert len(outlines) == 5 and all(len(o) == k for o in outlines)
    assert [5, 3] in outlines[0] and [4, 1] in outlines[0]  # the two strongest heads of the synthetic map


def test_the_built_in_model_is_shown_by_its_name_not_its_install_path(tmp_path):
    from headatlas.model_spec import resolve_model_path

    installed = resolve_model_path("organism")
    scores = HeadScores(torch.rand(N_LAYERS, N_HEADS), {"model": installed, "seed": 0})
    scores.save(tmp_path / "run" / "head_scores.json")
    page = render_report(collect_runs([tmp_path / "run"]))
    assert "headatlas report: organism" in page
    body = page.split('<script type="application/json"')[0]
    assert installed not in body.split("all fields")[0]  # only the raw JSON under "all fields" keeps it


def test_metadata_is_one_row_per_run(full_page):
    _, report, page = full_page
    table = re.search(r'<table[^>]*id="run-metadata".*?</table>', page, re.S).group(0)
    headers = re.findall(r"<th(?: [^>]*)?>([^<]*)</th>", table)
    assert headers == ["run", "kind", "model", "settings that differ", "seed", "versions", "created", "command"]
    assert table.count("<tr>") == len(report.metadata) + 1
    text = re.sub(r"<[^>]+>", "", table)  # each word is a span of its own (no break inside it)
    assert "tiny-llama" in text and "torch " in text


@pytest.mark.parametrize("null_level, expected", [(0.0, ["5.3", "4.1", "2.2"]), (0.2, ["5.3", "4.1"]), (0.95, [])])
def test_zero_score_heads_are_never_top_heads(tmp_path, null_level, expected):
    """The top table, the outlines and the layer chart hold only heads above the scorer's null level."""
    scores = torch.zeros(N_LAYERS, N_HEADS)
    scores[5, 3], scores[4, 1], scores[2, 2] = 0.9, 0.5, 0.1
    HeadScores(scores, {"model": "m"}, null_level=null_level).save(tmp_path / "rh" / "head_scores.json")
    page = render_report(collect_runs([tmp_path / "rh"]), heads_listed=20)
    table = page.split('id="topk-0"')[1].split("</table>")[0]
    assert re.findall(r'<td data-value="([0-9.]+)">', table) == expected
    data = page_data(page)
    outline = next(h["outline"] for h in data["heatmaps"].values() if h["rowKey"] == "layer")
    assert outline == [[int(x) for x in h.split(".")] for h in expected[:2]]  # 5 % of 48 heads = 2, or fewer
    chart = next(b for b in data["bars"].values() if b["title"].endswith("heads per layer"))
    top = chart["series"][0]
    assert top["name"] == f"top-{len(expected)}" and sum(top["values"]) == len(expected)
    assert f"{len(expected)} scored (above {null_level:g})" in page


def test_a_detect_run_is_one_metadata_row_and_its_cells_break_no_word(tmp_path):
    """run.json and head_scores.json of one detection: one row (the scores', which hold the outcome);
    paths break after a "/" only, and the table's CSS breaks no word."""
    run = make_run(tmp_path / "run", parts=("scores",))
    report = collect_runs([run])
    assert [s for s, _ in report.metadata] == ["run/detect/head_scores.json"]
    (run / "detect" / "head_scores.json").unlink()  # a detection that scored nothing keeps its run.json row
    assert [s for s, _ in collect_runs([run]).metadata] == ["run/detect/run.json"]
    page = render_report(report)
    table = re.search(r'<table[^>]*id="run-metadata".*?</table>', page, re.S).group(0)
    assert table.count("<tr>") == 2 and ('<span class="nobr">run/</span><wbr><span class="nobr">detect/</span><wbr>'
                                       '<span class="nobr">head_scores.json</span>') in table
    css = (Path(__file__).resolve().parents[2] / "src/headatlas/report/assets/report.css").read_text()
    rule = re.search(r"#run-metadata td \{([^}]*)\}", css).group(1)
    assert "overflow-wrap: normal" in rule and "word-break: normal" in rule and "anywhere" not in css
