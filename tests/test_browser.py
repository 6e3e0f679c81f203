"""A learner's view, in a real browser: JupyterLab runs a chapter notebook and its widget responds.

The layer explorer lives in the lean 01_state_dict (nine cells, a few seconds), which is why the
widget test runs that notebook rather than a separate one.

Drives Debian's Chromium with Playwright against the course's own ``./course lab``. The notebooks are
copied to a temporary folder first, so the run cannot change the committed ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from lab_server import running_lab

pytestmark = pytest.mark.slow  # ./course test --fast leaves it out

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAB_SETTINGS = {
    # Render every cell, so that selectors find outputs far down the notebook.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}

if CHROMIUM is None:
    reason = "needs Chromium (Debian: apt-get install chromium); .ci/run installs it"
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def failing_on_purpose(notebook: str) -> int:
    """How many cells of the committed notebook carry the ``raises-exception`` tag."""
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    return sum("raises-exception" in c.get("metadata", {}).get("tags", []) for c in cells)


def tracebacks(page):
    """Error outputs as JupyterLab renders them (stderr MIME type). The course shows an error as
    its last line (``%xmode Minimal``): the exception's name, a colon and its message."""
    stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    return stderr.filter(has_text=re.compile(r"^\w+(Error|Exception): "))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lab")
    course = tmp_path / "course"
    shutil.copytree(
        ROOT / "notebooks", course / "notebooks", ignore=shutil.ignore_patterns("scratch")
    )
    settings = tmp_path / "settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
    }
    with running_lab(tmp_path, f"--notebook-dir={course}", env=env) as server:
        yield server, course
        assert server.shutdown() == 0


@pytest.fixture
def open_and_run_all(lab):
    """Open a chapter notebook in a fresh browser page and run all its cells (Run > Run All Cells)."""
    from playwright.sync_api import expect, sync_playwright

    server, course = lab
    expect.set_options(timeout=90_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:

            def run(notebook: str):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{server.base}/lab/tree/notebooks/{notebook}?token={server.token}&reset")
                expect(page.locator(".jp-Notebook")).to_be_visible()
                expect(page.locator(".jp-StatusBar-TextItem", has_text="| Idle")).to_be_visible()
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
                return page

            yield run, course
        finally:
            browser.close()


@pytest.mark.timeout(240)
def test_learner_runs_the_state_dict_chapter_and_uses_the_layer_explorer(open_and_run_all):
    from playwright.sync_api import expect

    run, course = open_and_run_all
    page = run("01_state_dict.ipynb")

    # The chapter ran: the device line, the state_dict table and the plots are there.
    outputs = page.locator(".jp-OutputArea-output")
    expect(outputs.filter(has_text="Running on device:").first).to_be_visible()
    expect(outputs.filter(has_text="1.num_batches_tracked").first).to_be_visible()
    expect(page.locator(".jp-RenderedImage img").first).to_be_visible()

    # The widget rendered; picking another entry updates its summary.
    picker = page.locator(".widget-dropdown select")
    expect(picker).to_be_visible()
    explorer = page.locator(".widget-vbox")
    expect(explorer.filter(has_text="0.weight: shape (20, 10)")).to_be_visible()
    picker.select_option("1.running_var")
    expect(explorer.filter(has_text="1.running_var: shape (20,), 20 values")).to_be_visible()
    expect(explorer.locator("img")).to_have_count(1)

    # Every cell ran (the last code cell shows its output) and none failed but the cells that
    # fail on purpose (tagged raises-exception, which JupyterLab's Run All runs past).
    expect(outputs.filter(has_text="made after, holds the weight:  True")).to_be_visible()
    expect(tracebacks(page)).to_have_count(failing_on_purpose("01_state_dict.ipynb"))
    page.screenshot(path=str(course.parent / "state_dict_chapter.png"))
    # The copy in the temporary folder ran, not the committed notebook.
    assert (course / "notebooks" / "scratch" / "6.3.1" / "model_weights.pth").exists()


@pytest.mark.timeout(240)
def test_learner_picks_a_kept_checkpoint_and_sees_its_predictions(open_and_run_all):
    from playwright.sync_api import expect

    run, course = open_and_run_all
    page = run("08b_retention_async.ipynb")

    picker = page.locator(".widget-interact .widget-dropdown select")
    expect(picker).to_be_visible()
    plot = page.locator(".widget-interact img")
    expect(plot).to_have_count(1)
    first_plot = plot.get_attribute("src")
    options = picker.locator("option")
    expect(options.first).to_have_text("epoch 9 (every)")
    assert options.count() >= 3
    picker.select_option(index=options.count() - 1)  # the newest kept checkpoint
    expect(plot).not_to_have_attribute("src", first_plot)  # that model's predictions, redrawn
    # Run All went past the one cell that fails on purpose (a damaged file refused), and only it failed.
    expect(tracebacks(page)).to_have_count(1)
    expect(tracebacks(page).first).to_contain_text("CorruptCheckpointError")
    page.screenshot(path=str(course.parent / "checkpoint_manager_chapter.png"))
