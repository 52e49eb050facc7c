"""The book: chapters paired with their Colab notebooks, built with warnings as errors, checked in a browser."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9]*.md"))
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"


def _toc_files() -> list[str]:
    return re.findall(r"file:\s*(\S+)", (ROOT / "_toc.yml").read_text())


PAGES = ("book/glossary", "book/references")
"""Pages of the book that are not chapters: no code runs in them, and Colab has no twin of them."""


def test_every_chapter_is_in_the_toc():
    assert sorted(f"book/{md.stem}" for md in CHAPTERS) + sorted(PAGES) == sorted(_toc_files())


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_colab_notebook_is_in_sync_with_its_chapter(md):
    """Colab opens book/<chapter>.ipynb; it must hold the same cells as the chapter (`make book` regenerates it)."""
    import jupytext
    import nbformat

    ipynb = md.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `make book` (it pairs each chapter with jupytext)"
    expected = jupytext.read(md)
    actual = nbformat.read(ipynb, as_version=4)
    pairs = list(zip(expected.cells, actual.cells, strict=True))
    for want, got in pairs:
        assert (want.cell_type, want.source) == (got.cell_type, got.source), (
            f"{ipynb.name} is out of date with {md.name}: run `make book`")
    assert all(not c.get("outputs") for c in actual.cells if c.cell_type == "code"), "commit notebooks without outputs"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_colab_install_cell_uses_the_configured_repository(md):
    url = re.search(r"^\s*url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.M).group(1)
    ref = re.search(r"^\s*branch:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.M).group(1)
    installs = re.findall(r"git\+(\S+?)[\"']", md.read_text())
    assert installs == [f"{url}@{ref}"], (f"{md.name}'s Colab install cell must install from the _config.yml "
                                          f"repository {url} at {ref}: run `python scripts/colab_cells.py`")
    assert "could not be installed" in md.read_text()  # a failed install says so, there and then


def test_the_install_cells_are_written_from_the_config():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "colab_cells.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def built_book() -> Path:
    """Build the book exactly as `make book` does (executed chapters are cached in _build/.jupyter_cache)."""
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(["bash", str(ROOT / "scripts" / "build_book.sh"), str(venv)], cwd=ROOT,
                            capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        pytest.fail(f"the book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return HTML


def _pages(html: Path) -> list[Path]:
    return ([html / "book" / "intro.html"] + [html / "book" / f"{md.stem}.html" for md in CHAPTERS]
            + [html / f"{page}.html" for page in PAGES])


@pytest.mark.slow
def test_book_builds_with_figures_and_math(built_book):
    for page in _pages(built_book):
        text = page.read_text()
        assert "<script" in text and page.stat().st_size > 1000, page
        assert "plotly.js v" not in text, f"{page.name}: plotly.js embedded in the page (the site has one copy)"
        if page.stem in ("intro", "glossary", "references"):
            continue
        assert "plotly-graph-div" in text, f"{page.name}: no plotly figure made it into the HTML"
        assert 'class="math' in text, f"{page.name}: no math"
    assert (built_book / "mathjax" / "tex-svg-full.js").exists(), "MathJax is not served locally"
    assert (built_book / "plotly.min.js").exists(), "plotly.js is not served locally"
    assert (built_book / "index.html").exists()
    size = sum(f.stat().st_size for f in built_book.rglob("*") if f.is_file())
    assert size < 30 * 2**20, f"the site weighs {size / 2**20:.1f} MiB (at most 30)"
    references = (built_book / "book" / "references.html").read_text()
    assert references.count("arxiv.org/abs/") >= 10  # the papers, linked


def _typeset(page) -> None:
    """Wait until MathJax has typeset the page."""
    page.wait_for_function("!!(window.MathJax && MathJax.startup && MathJax.startup.promise)", timeout=30000)
    page.evaluate("MathJax.startup.promise.then(() => true)")


def _chromium() -> str | None:
    for candidate in (os.environ.get("COMPANION_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate:
            return candidate
    return None


@pytest.fixture(scope="session")
def site_url(built_book):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the test's output is the pages' problems, not every request
            pass

    handler = functools.partial(Quiet, directory=str(built_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.slow
def test_pages_render_figures_and_math_in_chromium(built_book, site_url):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium found: `apt-get install chromium` (make test does it as root) or set COMPANION_CHROMIUM")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    report = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        for path in _pages(built_book):
            rel = path.relative_to(built_book).as_posix()
            page.goto(f"{site_url}/{rel}", wait_until="load")
            html = path.read_text()
            n_figures = html.count('class="plotly-graph-div"')
            if n_figures:
                page.wait_for_function(
                    f"document.querySelectorAll('.plotly-graph-div .main-svg').length >= {n_figures}", timeout=30000)
            if 'class="math' in html:
                _typeset(page)
                assert page.locator("mjx-container svg").count() > 0, f"{rel}: math was not typeset"
                assert page.locator("mjx-merror, [data-mjx-error]").count() == 0, f"{rel}: MathJax error"
            rendered = page.evaluate("document.querySelectorAll('.plotly-graph-div .main-svg').length")
            report[rel] = {"figures": n_figures, "rendered_svgs": rendered}
            page.screenshot(path=str(SCREENSHOTS / f"{path.stem}.png"), full_page=True)
        browser.close()
    (SCREENSHOTS / "report.json").write_text(json.dumps(report, indent=2))
    assert not errors, f"JavaScript errors on the pages: {errors}"


WIDTHS = (1280, 400)
"""The browser checks' screen widths: a laptop, and a phone."""

OVERFLOW_SCRIPT = """() => {
  const wide = [];
  document.querySelectorAll('.cell_output pre, .cell_output table, .cell_output .output').forEach(el => {
    if (el.scrollWidth > el.clientWidth + 2) { wide.push((el.textContent || '').trim().slice(0, 70)); }
  });
  return wide;
}"""


@pytest.mark.slow
def test_pages_work_offline_at_laptop_and_phone_width(built_book, site_url):
    """With every request off this machine blocked, no page asks the network for anything and no page logs an
    error, at 1280 and at 400 px."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium found: `apt-get install chromium` (make test does it as root) or set COMPANION_CHROMIUM")
    from playwright.sync_api import sync_playwright

    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        for width in WIDTHS:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(site_url)
                       else route.abort())
            page.on("requestfailed", lambda r, w=width: problems.append(f"{w}px: request failed: {r.url}"))
            page.on("console", lambda m, w=width: problems.append(f"{w}px: console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e, w=width: problems.append(f"{w}px: page error: {e}"))
            for path in _pages(built_book):
                page.goto(f"{site_url}/{path.relative_to(built_book).as_posix()}", wait_until="load")
                if 'class="math' in path.read_text():
                    _typeset(page)  # before the next page: a request cut off by leaving is not a failure
                page.wait_for_timeout(300)
            page.close()
        browser.close()
    assert not problems, "\n".join(problems[:20])


@pytest.mark.slow
def test_no_output_is_wider_than_the_page_at_laptop_width(built_book, site_url):
    """Every printed result, table and figure fits the content column at 1280 px: none hides behind a sideways
    scroll."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium found: `apt-get install chromium` (make test does it as root) or set COMPANION_CHROMIUM")
    from playwright.sync_api import sync_playwright

    wide = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for path in _pages(built_book):
            page.goto(f"{site_url}/{path.relative_to(built_book).as_posix()}", wait_until="load")
            found = page.evaluate(OVERFLOW_SCRIPT)
            if found:
                wide[path.stem] = found
        browser.close()
    assert not wide, json.dumps(wide, indent=1, ensure_ascii=False)


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_code_cells_fit_the_page(md):
    """Code cells wrap at 80 columns, so that the rendered page shows them without a sideways scroll (the hidden
    Colab install cell, which holds the repository URL, aside)."""
    import jupytext

    for cell in jupytext.read(md).cells:
        if cell.cell_type != "code" or "remove-cell" in cell.metadata.get("tags", []):
            continue
        long = [line for line in cell.source.splitlines() if len(line) > 80]
        assert not long, f"{md.name}: code lines over 80 columns: {long}"
