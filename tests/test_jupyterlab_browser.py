"""The main job in a real browser: JupyterLab, lesson 02 run with Run All, and its memory calculator turned.

Headless Chromium (the system's, e.g. Debian's ``chromium``; Playwright downloads no browser here) opens
JupyterLab in a 1440 x 900 window on a copy of lesson 02, runs every cell with the menu's Run > Run All
Cells, waits until the kernel is idle, checks that no cell shows an error, then drags the calculator's
batch slider and checks that the figure and the printed breakdown under it change. The calculator is
also looked at in a 1280-pixel window: the slider's track, the method buttons on one row, the labels.
``QLORA_LESSONS_SCREENSHOTS=folder`` keeps screenshots of the calculator at both widths there.
Skipped, with the reason, where Playwright or Chromium is missing.
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from lab_server import jupyterlab

ROOT = Path(__file__).resolve().parents[1]
LESSON = "02_memory_maths.ipynb"
CHROMIUM = next((path for path in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                                   shutil.which("chromium-browser")) if path and Path(path).exists()), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_ALL_TIMEOUT_MS = 600_000  # lesson 02 runs in about 40 s on an idle 2-core machine

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
if CHROMIUM is None:
    pytest.skip("no Chromium found (apt install chromium, or set CHROMIUM=/path/to/chrome)", allow_module_level=True)

# The notebook as JupyterLab's model holds it (window.jupyterapp: the server runs with expose_app_in_browser).
NOTEBOOK_STATE = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session?.kernel;
    const cells = panel.content.widgets.filter((cell) => cell.model.type === "code");
    return {
        kernel: kernel ? kernel.status : "none",
        run: cells.filter((cell) => cell.model.executionCount !== null).length,
        code: cells.length,
        errors: cells.flatMap((cell) => cell.model.outputs.toJSON())
            .filter((output) => output.output_type === "error").map((output) => output.ename + ": " + output.evalue),
    };
}"""


def _calculator_layout(page) -> dict:
    """Sizes in CSS pixels of the calculator's parts, as the browser lays them out."""
    return page.evaluate("""() => {
        const calculator = document.querySelector(".qlora-calculator");
        const track = calculator.querySelector(".qlora-calculator-batch .slider-container, "
                                               + ".qlora-calculator-batch .noUi-target");
        const buttons = [...calculator.querySelectorAll(".widget-toggle-buttons button")];
        const labels = [...calculator.querySelectorAll(".widget-label, .widget-label-basic, label")];
        return {
            track: track.getBoundingClientRect().width,
            button_rows: new Set(buttons.map((b) => Math.round(b.getBoundingClientRect().top))).size,
            buttons: buttons.length,
            cut_labels: labels.filter((l) => l.offsetWidth > 0 && l.scrollWidth > l.clientWidth + 1)
                .map((l) => l.textContent),
            width: calculator.getBoundingClientRect().width,
        };
    }""")


def test_run_all_in_jupyterlab_then_turn_the_calculator(tmp_path):
    started = time.perf_counter()
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy2(ROOT / "notebooks" / LESSON, work / LESSON)  # a copy: the run must not rewrite the course's file
    shots = Path(os.environ.get("QLORA_LESSONS_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with jupyterlab(work, tmp_path, "--LabApp.expose_app_in_browser=True") as server, \
            playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # a fresh profile of its own
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(server.url(f"lab/tree/{LESSON}"))
            page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel"
                                   "?.status === 'idle'", timeout=120_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            run_all = time.perf_counter()
            page.wait_for_function(f"() => {{ const s = ({NOTEBOOK_STATE})(); "
                                   "return s.kernel === 'idle' && s.run === s.code; }", timeout=RUN_ALL_TIMEOUT_MS,
                                   polling=500)
            run_all = time.perf_counter() - run_all
            state = page.evaluate(NOTEBOOK_STATE)
            assert state["errors"] == [], f"cells failed in JupyterLab: {state['errors']}"
            shown_errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                        has_text="Traceback")
            assert shown_errors.count() == 0, shown_errors.first.inner_text()
            print(f"\nRun All of {LESSON} in JupyterLab: {run_all:.1f} s, {state['code']} code cells")

            calculator = page.locator(".qlora-calculator")
            calculator.scroll_into_view_if_needed()
            figure = page.locator(".qlora-calculator-figure img")
            table = page.locator(".qlora-calculator-table pre")
            try:
                figure.wait_for(timeout=60_000)
            except playwright.Error:
                page.screenshot(path=str(shots / "calculator-missing.png"))
                html = calculator.evaluate("(element) => element.innerText")
                raise AssertionError(f"the calculator shows no figure; it shows:\n{html[:2000]}") from None
            page.wait_for_function("() => document.querySelector('.qlora-calculator-table pre')?.innerText"
                                   ".includes('peak')", timeout=60_000)  # the breakdown is drawn
            before = figure.get_attribute("src"), table.inner_text()
            handle = page.locator(".qlora-calculator-batch .noUi-handle, .qlora-calculator-batch .ui-slider-handle")
            handle.first.scroll_into_view_if_needed()
            box = handle.first.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2, steps=6)
            page.mouse.up()
            readout = page.locator(".qlora-calculator-batch .widget-readout").first
            page.wait_for_function("(text) => document.querySelector('.qlora-calculator-batch .widget-readout')"
                                   ".innerText !== text", arg="1", timeout=30_000)  # the drag moved the slider
            page.wait_for_function("""([src, text]) => {
                const img = document.querySelector(".qlora-calculator-figure img");
                const pre = document.querySelector(".qlora-calculator-table pre");
                return img && pre && img.src !== src && pre.innerText.includes("peak") && pre.innerText !== text;
                }""", arg=list(before),
                                   timeout=120_000)  # and the kernel redrew the figure and the breakdown
            batch = int(readout.inner_text())
            assert 1 < batch < 32, f"a 60-px drag moved the batch slider from 1 to {batch}"
            after = table.inner_text()
            assert after != before[1] and figure.get_attribute("src") != before[0] and figure.count() == 1
            line = next(line for line in after.splitlines() if line.startswith("activations"))
            assert line not in before[1], f"batch {batch}: the activations line did not change: {line}"
            print(f"batch slider dragged 1 -> {batch}: figure and breakdown redrawn\n{before[1]}\n->\n{after}")
            for width in (1440, 1280):
                page.set_viewport_size({"width": width, "height": 900})
                page.wait_for_timeout(500)
                calculator.scroll_into_view_if_needed()
                calculator.screenshot(path=str(shots / f"calculator-{width}.png"))
                layout = _calculator_layout(page)
                assert layout["track"] >= 200, f"at {width} px the batch slider's track is {layout['track']} px"
                assert layout["buttons"] == 3 and layout["button_rows"] == 1, f"at {width} px: {layout}"
                assert layout["cut_labels"] == [], f"at {width} px these labels are cut: {layout['cut_labels']}"
        finally:
            browser.close()
    print(f"test total: {time.perf_counter() - started:.1f} s; screenshots in {shots}")
