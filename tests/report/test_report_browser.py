"""The report in a real browser: headless Chromium via Playwright, the page opened from disk.

Checks the interactive heatmap (one element per head, a tooltip on hover), table sorting, that nothing is
fetched from the network, and that with JavaScript disabled the static figure shows. Saves screenshots to
``docs/screenshots/`` when RH_UPDATE_SCREENSHOTS=1 (else to a temporary folder). Needs ``/usr/bin/chromium`` (``sh scripts/install_browser.sh``); skips without it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from headatlas.heads import HeadScores
from headatlas.report import write_report
from tests.report.conftest import N_HEADS, N_LAYERS, make_run

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
# the committed screenshots are refreshed only on request, so a test run leaves the tree clean
SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("RH_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "headatlas-screenshots"
)
VIEWPORT = {"width": 1200, "height": 900}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Chromium with `sh scripts/install_browser.sh` "
                    "(Debian package 'chromium') to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        except sync_api.Error as err:  # e.g. a Chromium that cannot start in this container
            pytest.skip(f"{CHROMIUM} does not start: {str(err).splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A 6 x 8 detection run plus NIAH, comparison and RetMask results, and its report page.

    Each run records its command line (``sys.argv``): a fixed one, so that the page, its height and the
    screenshots do not depend on how pytest was called."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["headatlas", "detect", "--model", "tiny-llama"])
        run = make_run(tmp_path_factory.mktemp("browser") / "run", parts=("scores", "samples", "niah", "compare", "retmask"))
    return write_report([run]), HeadScores.load(run / "detect" / "head_scores.json")


def open_page(browser, path: Path, javascript: bool = True):
    context = browser.new_context(viewport=VIEWPORT, java_script_enabled=javascript)
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    return context, page, requests, errors


def column(page, table: str, index: int) -> list[str]:
    return page.eval_on_selector_all(f"{table} tbody tr", f"rows => rows.map(r => r.cells[{index}].textContent.trim())")


def test_heatmap_tooltip_and_sorting(browser, report):
    path, scores = report
    context, page, requests, errors = open_page(browser, path)
    try:
        cells = page.locator("#scores-0 [data-heatmap] .cell")
        assert cells.count() == N_LAYERS * N_HEADS == 48
        coords = page.eval_on_selector_all(
            "#scores-0 [data-heatmap] .cell", "cs => cs.map(c => [+c.dataset.layer, +c.dataset.head, +c.dataset.score])")
        assert sorted((layer, head) for layer, head, _ in coords) == [(i, j) for i in range(N_LAYERS) for j in range(N_HEADS)]
        assert all(score == pytest.approx(scores[(layer, head)]) for layer, head, score in coords)
        # the static fallback is hidden once the interactive figure is drawn
        assert page.locator("#scores-0 .figure:has([data-heatmap]) .static-fig img").is_hidden()

        # hover: the tooltip names the head and its score
        best = scores.ranked()[0][0]
        page.locator("#head-scores").scroll_into_view_if_needed()
        page.hover(f'#scores-0 .cell[data-layer="{best.layer}"][data-head="{best.head}"]')
        tooltip = page.locator("#tooltip")
        assert tooltip.is_visible()
        text = tooltip.inner_text()
        assert f"layer {best.layer}" in text and f"head {best.head}" in text and f"{scores[best]:.4f}" in text
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "report-heatmap.png"))

        # sorting: numeric, both directions
        table = "#topk-0"
        page.click(f"{table} th:has-text('score')")
        ascending = [float(x) for x in column(page, table, 4)]
        assert ascending == sorted(ascending) and len(ascending) == 20
        page.click(f"{table} th:has-text('score')")
        assert [float(x) for x in column(page, table, 4)] == sorted(ascending, reverse=True)
        page.click(f"{table} th:has-text('rank')")
        page.click(f"{table} th:has-text('rank')")  # descending: numeric (20, 19, ..., 10, 9, ...), not text order
        assert [int(x) for x in column(page, table, 0)] == list(range(20, 0, -1))
        assert page.get_attribute(f"{table} th:has-text('rank')", "aria-sort") == "descending"

        # a comparison table sorts too (text column)
        page.click("#compare-0 th:has-text('condition')")
        conditions = column(page, "#compare-0", 1)
        assert conditions == sorted(conditions, key=str.lower)

        assert errors == []
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
    finally:
        context.close()


def test_static_figures_without_javascript(browser, report):
    path, _ = report
    context, page, requests, errors = open_page(browser, path, javascript=False)
    try:
        img = page.locator("#scores-0 .figure:has([data-heatmap]) .static-fig img")
        assert img.is_visible() and img.get_attribute("alt") == "Retrieval heads"
        assert img.evaluate("el => el.naturalWidth") > 0  # the data: URI decoded
        assert page.locator(".cell").count() == 0  # nothing drawn by script
        assert page.locator("#topk-0 tbody tr").count() == 20  # tables are plain HTML
        # 2 metrics x (3 conditions + 2 differences)
        assert page.locator("#niah .static-fig img").count() == 10
        page.locator("#head-scores").scroll_into_view_if_needed()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "report-heatmap-nojs.png"))
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
    finally:
        context.close()


def test_metadata_section_is_compact(browser, report):
    """One row per run (model, kind, settings that differ, seed, versions, created, command), not a field per row."""
    path, _ = report
    context, page, requests, errors = open_page(browser, path)
    try:
        section = page.locator("#metadata")
        section.scroll_into_view_if_needed()
        rows = page.locator("#run-metadata tbody tr")
        assert rows.count() >= 2
        assert section.bounding_box()["height"] < 900  # the old 16-column table of every field was ~2,600 px
        # no word is broken: cells wrap between words (and after a "/" in paths) and none overflows its column
        cells = page.eval_on_selector_all("#run-metadata td", """cells => cells.map(td => {
            const style = getComputedStyle(td);
            return [style.overflowWrap, style.wordBreak, td.scrollWidth <= td.clientWidth + 1];
        })""")
        assert cells and all(c == ["normal", "normal", True] for c in cells), cells
        split = page.evaluate("""() => {  // every run of non-space text lies on one line (one client rect)
            const out = [], walker = document.createTreeWalker(document.querySelector("#run-metadata tbody"), 4);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                for (const m of node.textContent.matchAll(/\\S+/g)) {
                    const range = document.createRange();
                    range.setStart(node, m.index);
                    range.setEnd(node, m.index + m[0].length);
                    if (range.getClientRects().length > 1) out.push(m[0]);
                }
            }
            return out;
        }""")
        assert split == [], split
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        section.screenshot(path=str(SCREENSHOTS / "report-metadata.png"))
        assert errors == []
    finally:
        context.close()
