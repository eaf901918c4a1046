"""The course website (`make site`, site/): built from the committed notebooks, readable offline, checked in a
real browser.

The build is Sphinx's incremental one into site/_build/html (what `make site` runs), so a fresh build is reused.
The browser tests open every page in headless Chromium (Playwright driving the system's Chromium; Debian's
`chromium` package, which .ci/run installs) served from a local HTTP server, with every request to another
host refused, and check what a reader sees: no console errors, the figures loaded, the links resolve, the
navigation goes through the lessons in order, search finds the library, and the API reference lists it.
They are skipped, saying why, where Chromium or the site extra (`pip install -e ".[site]"`) is missing.
"""

from __future__ import annotations

import ast
import functools
import http.server
import json
import posixpath
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag

import pytest

import qlora_lessons
from qlora_lessons.course import LESSONS

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "site" / "_build" / "html"
BUILD_ARGS = ["-m", "sphinx", "-b", "html", "-q", "-d", "site/_build/doctrees", "site", "site/_build/html"]
SCREENSHOTS = ROOT / "site" / "_build" / "screenshots"
# The flags a headless Chromium needs in a container or CI, without reaching out to any service of its own.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LESSON_PAGES = [f"notebooks/{lesson.notebook.removesuffix('.ipynb')}.html" for lesson in LESSONS]


@pytest.fixture(scope="module")
def site() -> Path:
    """The built site: Sphinx's incremental build of site/ (seconds when nothing changed)."""
    for module in ("sphinx", "myst_nb", "furo"):
        pytest.importorskip(module, reason=f"{module} is not installed: the site needs pip install -e '.[site]'")
    result = subprocess.run([sys.executable, *BUILD_ARGS], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"the site build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return HTML


def test_make_site_runs_the_build_the_tests_check():
    assert " ".join(BUILD_ARGS[1:]) in (ROOT / "Makefile").read_text()


class _Resources(HTMLParser):
    """Every URL a page loads by itself (scripts, stylesheets, icons, images, frames, media), and its element ids."""

    LOADED = {"script": ("src",), "link": ("href",), "img": ("src", "srcset"), "iframe": ("src",),
              "source": ("src", "srcset"), "video": ("src", "poster"), "audio": ("src",), "embed": ("src",),
              "object": ("data",)}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(attributes["id"])
        for name in self.LOADED.get(tag, ()):
            if attributes.get(name):
                self.urls.extend(part.split()[0] for part in attributes[name].split(",") if part.strip())


def _parse(path: Path) -> _Resources:
    parser = _Resources()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _external(url: str) -> bool:
    return bool(re.match(r"^([a-z][a-z0-9+.-]*:)?//", url, re.IGNORECASE))


def test_a_page_per_lesson_a_home_page_and_the_api_reference(site):
    for page in ["index.html", "api.html", "search.html", *LESSON_PAGES]:
        assert (site / page).is_file(), f"the site has no {page}"


def test_no_page_loads_anything_from_another_host(site):
    """Offline reading (a USB stick, a local share): no script, font, stylesheet, image or maths from a CDN."""
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= len(LESSONS) + 2
    external = {f"{page.relative_to(site)}: {url}" for page in pages for url in _parse(page).urls if _external(url)}
    assert not external, f"pages load from other hosts: {sorted(external)[:20]}"
    for css in site.glob("_static/**/*.css"):
        remote = re.findall(r"(?:url\(\s*['\"]?|@import\s+['\"])((?:https?:)?//[^'\")\s]+)", css.read_text("utf-8"))
        assert not remote, f"{css.relative_to(site)} loads {remote}"


def _api_sections(site: Path) -> dict[str, str]:
    """Lesson number -> the HTML of its section of the API reference."""
    text = (site / "api.html").read_text(encoding="utf-8")
    parts = re.split(r'<section id="lesson-(\d\d)[^"]*">', text)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_the_api_reference_has_every_public_name_under_its_lesson(site):
    sections = _api_sections(site)
    documented = {m.group(1) for html in sections.values() for m in re.finditer(r'id="qlora_lessons\.[\w.]*?\.(\w+)"',
                                                                                html)}
    public = set(qlora_lessons.__all__) | {name for names in qlora_lessons._MODULES.values() for name in names}
    assert public - documented == set(), f"not in the API reference: {sorted(public - documented)}"
    # the lesson of a module comes from README.md's library table (lora, nf4, memory_estimate) or its prefix
    for lesson, name in [("02", "estimate_training_memory"), ("04", "LoRALinear"), ("04", "lora_calculator"),
                         ("05", "quantize_4bit"), ("07", "budget_slider"), ("01", "load_model")]:
        assert re.search(rf'id="qlora_lessons\.[\w.]*\.{name}"', sections[lesson]), f"{name} not under lesson {lesson}"


def test_a_module_that_no_lesson_claims_stops_the_build():
    sys.path.insert(0, str(ROOT / "site"))
    try:
        import course_api
    finally:
        sys.path.remove(str(ROOT / "site"))
    rows = course_api.library_table((ROOT / "README.md").read_text(encoding="utf-8"))
    assert course_api.lesson_of_module("lora_plots", rows) == course_api.lesson_of_module("lora", rows) == "04"
    with pytest.raises(ValueError, match="library table"):
        course_api.lesson_of_module("unclaimed_module", rows)


def _widget_functions() -> set[str]:
    """The library's public functions that build ipywidgets (they import it, through ``course_import("ipywidgets")``
    or an import statement): they need a live kernel."""

    def imports_ipywidgets(node: ast.AST) -> bool:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return "ipywidgets" in (getattr(node, "module", None) or "") or any(
                "ipywidgets" in alias.name for alias in node.names)
        return (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "course_import"
                and any(isinstance(arg, ast.Constant) and arg.value == "ipywidgets" for arg in node.args))

    names = set()
    for path in (ROOT / "qlora_lessons").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                if any(imports_ipywidgets(inner) for inner in ast.walk(node)):
                    names.add(node.name)
    return names


def test_every_widget_cell_has_a_saved_figure_or_table_beside_it():
    """Widgets are not saved (tools/notebooks.py drops them) and the site has no kernel: each widget cell needs
    a saved output (a figure or a printed table) within two code cells, for the site and for GitHub's viewer."""
    widgets = _widget_functions()
    assert {"memory_calculator", "rank_slider", "lora_calculator", "budget_slider"} <= widgets
    call = re.compile(rf"^(?!\s*(#|from |import )).*\b({'|'.join(sorted(widgets))})\(", re.MULTILINE)
    lonely, found = [], 0
    for lesson in LESSONS:
        cells = [c for c in json.loads((ROOT / "notebooks" / lesson.notebook).read_text())["cells"]
                 if c["cell_type"] == "code"]
        for i, cell in enumerate(cells):
            if call.search("".join(cell["source"])):
                found += 1
                beside = cells[max(0, i - 2):i + 3]
                if not any(output.get("data", {}).get("image/png") or output.get("name") == "stdout"
                           for other in beside for output in other.get("outputs", [])):
                    lonely.append(f"{lesson.notebook} code cell {i}")
    assert found >= 4, f"found {found} widget cells"
    assert not lonely, f"widget cells with no saved figure or table beside them: {lonely}"


# ---------------------------------------------------------------------------------------------------------- browser


class _Handler(http.server.SimpleHTTPRequestHandler):
    failures: list[str]

    def log_message(self, format, *args):  # quiet; failures are recorded instead
        pass

    def log_request(self, code="-", size="-"):
        if str(code).isdigit() and int(code) >= 400:
            self.failures.append(f"{code} {self.path}")


@pytest.fixture(scope="module")
def served(site):
    """The site on http://127.0.0.1:<port>/, as GitHub Pages serves it; the requests it failed are recorded."""
    failures: list[str] = []
    handler = functools.partial(type("Handler", (_Handler,), {"failures": failures}), directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", failures
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium installed: the browser tests need Debian's chromium (apt-get install chromium), "
                    "which .ci/run installs")
    sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install -e '.[site]'")
    with sync_api.sync_playwright() as playwright:
        # Playwright gives every launch a fresh temporary profile (its own --user-data-dir).
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def visit(served, browser):
    """visit(page) -> (playwright page, console errors, other-host requests): one loaded page, offline."""
    base, _ = served
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_this_site(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_site)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: errors.append(str(error)))

    def load(path: str):
        errors.clear()
        outside.clear()
        tab.goto(base + path, wait_until="load")
        return tab, list(errors), list(outside)

    yield load
    context.close()


def _saved_figures(notebook: str) -> int:
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    return sum("image/png" in output.get("data", {}) for cell in cells for output in cell.get("outputs", []))


def test_every_page_renders_with_its_figures_and_its_links_resolve(served, visit):
    base, failures = served
    links: set[str] = set()
    for path in ["index.html", "setup.html", "api.html", "slides.html", *LESSON_PAGES]:
        tab, errors, outside = visit(path)
        assert not errors, f"{path}: console errors {errors}"
        assert not outside, f"{path} requested other hosts: {outside}"
        images = tab.evaluate("() => Array.from(document.images).map(i => [i.src, i.complete, i.naturalWidth,"
                              " i.naturalHeight])")
        broken = [src for src, complete, width, height in images if not (complete and width > 0 and height > 0)]
        assert not broken, f"{path}: images not loaded: {broken}"
        if path in LESSON_PAGES:
            notebook = LESSONS[LESSON_PAGES.index(path)].notebook
            assert len(images) >= _saved_figures(notebook), (
                f"{path} shows {len(images)} images; {notebook} has {_saved_figures(notebook)} saved figures")
        links |= {href for href in tab.evaluate("() => Array.from(document.links).map(a => a.href)")
                  if href.startswith(base)}
    ids: dict[str, set[str]] = {}
    for link in sorted(links):
        url, fragment = urldefrag(link)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            pytest.fail(f"internal link {link}: HTTP {error.code}")
        if fragment and url.endswith(".html"):
            if url not in ids:
                parser = _Resources()
                parser.feed(body)
                ids[url] = parser.ids
            assert fragment in ids[url], f"internal link {link}: no element with id {fragment!r}"
    assert len(links) > len(LESSONS), f"only {len(links)} internal links"
    assert not failures, f"the server answered with errors: {failures}"


def test_next_links_go_through_the_lessons_in_order(site):
    """Each page's "next" link (the theme's a.next-page), followed from the home page, visits the lessons in order."""
    seen, page = [], "index.html"
    while len(seen) < 40:
        found = re.search(r'<a class="next-page" href="([^"]+)"', (site / page).read_text(encoding="utf-8"))
        if found is None:
            break
        page = posixpath.normpath(posixpath.join(posixpath.dirname(page), urldefrag(found[1])[0]))
        seen.append(page)
    assert [page for page in seen if page.startswith("notebooks/")] == LESSON_PAGES, seen
    assert seen[:len(LESSONS)] == LESSON_PAGES, seen


def test_search_finds_the_api_and_the_api_page_lists_the_library(visit):
    tab, errors, _ = visit("search.html?q=quantize_4bit")
    tab.wait_for_selector("#search-results li a", timeout=30_000)
    hits = tab.eval_on_selector_all("#search-results li a", "links => links.map(a => a.getAttribute('href'))")
    assert any("api.html" in hit for hit in hits), hits
    assert not errors, errors
    tab, _, _ = visit("api.html")
    for name in ("estimate_training_memory", "quantize_4bit", "LoRALinear"):
        entry = tab.locator(f'dt[id$=".{name}"]')
        assert entry.count() == 1 and entry.is_visible() and name in entry.inner_text(), name


def test_from_a_usb_stick_pages_and_search_work(site, browser):
    """Opened as files (file://, no server): figures load and search lists results. (Chromium refuses the
    fetches that add a text snippet under each result from a file:// page, so results come without snippets.)"""
    tab = browser.new_page()
    try:
        tab.goto((site / LESSON_PAGES[3]).as_uri(), wait_until="load")
        assert tab.evaluate("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        tab.goto((site / "search.html").as_uri() + "?q=LoRALinear", wait_until="load")
        tab.wait_for_selector("#search-results li a", timeout=30_000)
    finally:
        tab.close()


def test_the_slides_have_each_lesson_opening_and_recap(visit):
    tab, errors, _ = visit("slides.html")
    assert not errors, errors
    openings = tab.eval_on_selector_all("section.opening", "slides => slides.map(s => s.dataset.lesson)")
    recaps = tab.eval_on_selector_all("section.recap", "slides => slides.map(s => s.dataset.lesson)")
    assert sorted(set(openings)) == [lesson.notebook[:2] for lesson in LESSONS], openings
    assert len(recaps) >= len(LESSONS) - 1, f"recap slides for lessons {recaps}"
    assert tab.evaluate("() => document.querySelector('section.slide').getBoundingClientRect().height") >= 900


def test_screenshot_of_a_lesson_page(visit):
    tab, _, _ = visit(LESSON_PAGES[2])
    tab.locator("img").first.scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / Path(LESSON_PAGES[2]).with_suffix(".png").name
    tab.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    print(f"screenshot of a lesson page: {path}")
