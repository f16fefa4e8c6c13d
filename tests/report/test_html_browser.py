"""The HTML page in a real browser: Debian's Chromium driven by Playwright for Python (never a
browser Playwright downloads). The page of a real local `run --html`, and of schema 2 reports,
must draw every chart's canvas, log no error, fetch nothing but itself, and fit a phone's width.
Screenshots go to test-artifacts/ (at 1280 px and at 390 px, a phone's width).

Skipped, with the reason, where Chromium (`apt-get install chromium`, `make deps` as root) or
the playwright package (the `test` extra) is missing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.local import LocalCli
from support.sample_reports import as_v2, send_report, subscribe_report

from elf_async.report.html import render_compare_html, render_html

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WIDTHS = (1280, 390)

# Each .plot element's canvas: drawn when some pixel is not transparent.
DRAWN = """() => [...document.querySelectorAll(".plot")].map(el => {
  const canvas = el.querySelector("canvas");
  if (!canvas || !canvas.width || !canvas.height) return false;
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) return true;
  return false;
})"""
# Each plot as wide as its container (after a resize too), and the page no wider than the window.
FITS = """() => [...document.querySelectorAll(".plot")].every(el =>
  Math.abs(el.querySelector(".uplot").getBoundingClientRect().width - el.clientWidth) <= 1)
  && document.documentElement.scrollWidth <= window.innerWidth"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (make deps, as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def check_page(browser: Any, page_file: Path, name: str) -> None:
    """Open `page_file` at each width: every chart drawn, no error, no request but the file's
    own, nothing wider than the window; a screenshot of each."""
    ARTIFACTS.mkdir(exist_ok=True)
    for width in WIDTHS:
        errors, requests = visit(browser, page_file, width, ARTIFACTS / f"{name}-{width}px.png")
        assert errors == []
        assert {r for r in requests if not r.startswith("data:")} == {page_file.as_uri()}


def visit(browser: Any, page_file: Path, width: int, shot: Path) -> tuple[list[str], list[str]]:
    """The errors logged and the requests made while the page is drawn at `width` (and then
    narrowed to a phone's width); a screenshot at `width`."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_file.as_uri(), wait_until="load")
    page.wait_for_function(f"() => ({DRAWN})().every(Boolean)", timeout=30_000)
    assert page.evaluate(DRAWN) == [True] * len(json_of(page_file, "elf-charts"))
    page.wait_for_function(FITS, timeout=30_000)
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    if width != WIDTHS[-1]:  # narrowed to a phone's width: the charts follow
        page.set_viewport_size({"width": WIDTHS[-1], "height": 900})
        page.wait_for_function(FITS, timeout=30_000)
    page.close()
    return errors, requests


def json_of(page_file: Path, element: str) -> Any:
    text = page_file.read_text()
    start = text.index(f'<script type="application/json" id="{element}">')
    start = text.index(">", start) + 1
    return json.loads(text[start : text.index("</script>", start)])


def test_the_page_of_a_real_run_draws_every_chart(
    browser: Any, local_cli: LocalCli, tmp_path: Path
) -> None:
    page = (tmp_path / "run.html").resolve()
    result = local_cli(
        "--local", "run", "3", "--rate", "2/s", "--duration", "3s", "--html", str(page),
        "--threshold", "ack.p99<5s",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json_of(page, "elf-report")
    assert report["run"]["exit_code"] == 0
    titles = [chart["title"] for chart in json_of(page, "elf-charts")]
    assert len(titles) >= 5
    check_page(browser, page, "run")


@pytest.mark.parametrize(
    ("name", "report"),
    [
        ("send-v2-20000-things", as_v2(send_report(things=20_000, seconds=2))),
        ("subscribe-v2", as_v2(subscribe_report(things=5, seconds=8))),
    ],
)
def test_the_page_of_a_version_2_report_draws_every_chart(
    browser: Any, tmp_path: Path, name: str, report: dict[str, Any]
) -> None:
    """Schema 2's charts (per-second percentiles, HDR distributions) and a bucketed strip."""
    page = (tmp_path / f"{name}.html").resolve()
    page.write_text(render_html(report))
    assert "not in this report" not in page.read_text()
    check_page(browser, page, name)


def test_the_compare_page_draws_both_runs(browser: Any, tmp_path: Path) -> None:
    """`report compare --html`: base and new over each other, per second."""
    base, new = as_v2(send_report(things=3, seconds=6)), as_v2(send_report(things=3, seconds=8))
    rows = [("ack p99", "1 ms", "2 ms", "+100.0%", "REGRESSED")]
    page = (tmp_path / "compare.html").resolve()
    page.write_text(
        render_compare_html(base, new, rows=rows, verdict="compare failed", passed=False)
    )
    assert "not in this report" not in page.read_text()
    check_page(browser, page, "compare")


def test_chromium_is_debians_not_a_download() -> None:
    """The browser the tests drive is the system's (a `playwright install` is never needed)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing")
    assert shutil.which("chromium") == str(CHROMIUM)
