"""The notebooks as researchers meet them: ``make lab`` in headless Chromium, driven by Playwright.

JupyterLab is started with the Makefile's own ``lab`` target, rooted at a temporary copy of
the project (``notebooks/`` and ``figures.yaml``), so nothing committed can change. Each
notebook is opened, its parameters cell is edited by typing into it, the notebook is saved
(refused: committed notebooks are read-only in Lab) and run with *Run > Run All Cells*. The
checks: the kernel is this checkout's ``.venv``, no cell has an error, every figure cell
shows an image, ``results.json`` exists under ``runs/`` (relative paths resolve against the
project root, not the kernel's ``notebooks/`` folder), nothing is written to ``figures/``, and
the epoch slider of ``03_embeddings`` changes its figure. A screenshot of each executed
notebook lands in the test's temporary folder (printed with ``-s``).

The tests run in file order in one process (``make test``: ``--dist loadfile``): the other notebooks
read the run ``test_01_train_in_lab`` trains, and the Lab and the browser start once.

Needs Debian's Chromium at ``/usr/bin/chromium`` (``make chromium`` installs it).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from dlde.pipeline.lock import check_parameters_cell
from dlde.pipeline.notebook import ROOT_ENV, read_results
from dlde.plots.interactive import WIDGETS_ENV

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN = "runs/lab_tiny"  # relative: resolved against the project root by the notebooks
NOTEBOOK_TIMEOUT_MS = 240_000
#: The line typed at the end of each parameters cell (tiny values, paths relative to the root).
PARAMETERS = {
    "01_train": f'PRESET = "tiny"; EPOCHS = 2; RUN_DIR = "{RUN}"; DATA_ROOT = "runs/data"; DETECTION_IMAGES = 2',
    "00_mechanism": f'RUN_DIR = "{RUN}"; IMPRINT_CLASS = 1; IMPRINT_SHOTS = 3; STREAM_BATCHES = 60',
    "02_mean_drift": f'RUN_DIR = "{RUN}"',
    "03_embeddings": f'RUN_DIR = "{RUN}"; MAX_IMAGES = 8; N_NEIGHBORS = 5',
    "04_inference": f'RUN_DIR = "{RUN}"; DEMO_IMAGES = 2',
}
#: Lab settings of the test user: every cell attached to the page (so each output can be
#: checked) and no autosave dialogs in the middle of a run.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``make lab`` on a copy of the project: yields ``(base_url, token, root)``."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(REPO / "figures.yaml", root / "figures.yaml")
    home = tmp_path_factory.mktemp("jupyter")
    for name, values in LAB_SETTINGS.items():
        path = home / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), "dlde-browser-test"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    for name in ("MPLBACKEND", ROOT_ENV, WIDGETS_ENV):  # as for a user: inline backend, root found by walking up
        env.pop(name, None)
    lab_args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.port_retries=0 "
                f"--IdentityProvider.token={token} --LabApp.expose_app_in_browser=True")
    base = f"http://127.0.0.1:{port}"
    with open(home / "lab.log", "w") as log:
        server = subprocess.Popen(["make", "-s", "-o", ".venv/.installed", "lab", f"LAB_ROOT={root}",
                                   f"LAB_ARGS={lab_args}"], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"JupyterLab did not start:\n{(home / 'lab.log').read_text()[-3000:]}")
                    time.sleep(0.5)
            yield base, token, root
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


@pytest.fixture(scope="module")
def page(lab, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots of the executed notebooks in {folder}")
    return folder


# --------------------------------------------------------------------------------- helpers
def open_notebook(page, lab, name):
    base, token, _ = lab
    page.goto(f"{base}/lab/tree/notebooks/{name}.ipynb?reset&token={token}")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=60_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                           timeout=60_000)


def edit_parameters(page, line):
    """Click into the parameters cell, go to its end and type one more line."""
    editor = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.press("Enter")
    page.keyboard.insert_text(line)


def save_is_refused(page, lab, name):
    """Ctrl+S in Lab: the server refuses, the committed notebook is byte-identical."""
    _, _, root = lab
    committed = root / "notebooks" / f"{name}.ipynb"
    before = committed.read_bytes()
    page.keyboard.press("Control+s")
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=20_000)
    assert "read-only" in dialog.inner_text(), dialog.inner_text()
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached", timeout=10_000)
    assert committed.read_bytes() == before
    check_parameters_cell(committed)  # still the locked parameters


def run_all(page):
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    # done when every code cell has an execution count, or when one holds an error
    page.wait_for_function("""() => {
        const cells = window.jupyterapp.shell.currentWidget.content.model.toJSON().cells
            .filter(c => c.cell_type === 'code');
        const failed = cells.some(c => c.outputs.some(o => o.output_type === 'error'));
        const busy = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status !== 'idle';
        return failed || (!busy && cells.every(c => c.execution_count !== null));
    }""", timeout=NOTEBOOK_TIMEOUT_MS, polling=500)
    return page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.toJSON()")


def text_of(output):
    """The text of one output (ANSI colours of tracebacks removed)."""
    if output["output_type"] == "stream":
        text = output["text"]
    elif output["output_type"] == "error":
        text = "\n".join(output["traceback"])
    else:
        text = output.get("data", {}).get("text/plain", "")
    return re.sub(r"\x1b\[[0-9;]*m", "", "".join(text) if isinstance(text, list) else text)


def check_executed(page, notebook, name, screenshots):
    """No errors, the .venv kernel, an image in every figure cell; screenshot; returns the figures shown."""
    cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    def source(c):
        return "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
    errors = [text_of(o) for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{name}: {errors[0][-2000:]}"
    assert all(c["execution_count"] is not None for c in cells), f"{name}: a cell did not run"
    everything = "\n".join(text_of(o) for c in cells for o in c["outputs"])
    assert "TqdmWarning" not in everything and "IProgress not found" not in everything
    prefix = re.search(r"\(prefix ([^)]*)\)", everything)
    assert prefix, f"{name}: no environment line"
    assert Path(prefix.group(1)).resolve() == (REPO / ".venv").resolve(), everything[:500]
    dom_cells = page.locator(".jp-Notebook .jp-CodeCell")
    figure_cells = [i for i, c in enumerate(cells) if "figures.show(" in source(c)]
    assert figure_cells, name
    for index in list(figure_cells):
        outputs = cells[index]["outputs"]
        if not any(o["output_type"] == "display_data" and "image/png" in o["data"] for o in outputs):
            # only a cell whose figure does not apply (it says so) may show none
            assert any(o["output_type"] == "stream" and "figure" in text_of(o) for o in outputs), \
                f"{name}: cell {index} has no image"
            figure_cells.remove(index)
            continue
        shown = dom_cells.nth(index).locator(".jp-OutputArea-output img, .jp-OutputArea-output canvas")
        shown.first.wait_for(state="visible", timeout=30_000)
        box = shown.first.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, f"{name}: cell {index} image too small"
    dom_cells.nth(figure_cells[0]).scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / f"{name}.png"))
    return len(figure_cells)


# ----------------------------------------------------------------------------------- tests
def test_01_train_in_lab(lab, page, screenshots):
    _, _, root = lab
    open_notebook(page, lab, "01_train")
    edit_parameters(page, PARAMETERS["01_train"])
    save_is_refused(page, lab, "01_train")
    shown = check_executed(page, run_all(page), "01_train", screenshots)
    results = read_results(root / RUN / "01_train")
    assert shown == len(results["figures"]) == 4
    assert results["preset"] == "tiny" and results["epochs"] == 2
    assert (root / RUN / "figures" / "train_curves.png").exists()
    assert not (root / "figures").exists(), "a notebook run by hand wrote into figures/"
    assert not (root / "notebooks" / "runs").exists(), "a relative path resolved against notebooks/"


def test_00_mechanism_in_lab(lab, page, screenshots):
    _, _, root = lab
    open_notebook(page, lab, "00_mechanism")
    edit_parameters(page, PARAMETERS["00_mechanism"])
    shown = check_executed(page, run_all(page), "00_mechanism", screenshots)
    results = read_results(root / RUN / "00_mechanism")
    assert shown == len(results["figures"]) == 2


def test_02_mean_drift_in_lab(lab, page, screenshots):
    _, _, root = lab
    open_notebook(page, lab, "02_mean_drift")
    edit_parameters(page, PARAMETERS["02_mean_drift"])
    shown = check_executed(page, run_all(page), "02_mean_drift", screenshots)
    results = read_results(root / RUN / "02_mean_drift")
    assert results["epochs"] == 2 and shown == len(results["figures"]) == 3


def test_03_embeddings_in_lab_with_slider(lab, page, screenshots):
    _, _, root = lab
    open_notebook(page, lab, "03_embeddings")
    edit_parameters(page, PARAMETERS["03_embeddings"])
    notebook = run_all(page)
    shown = check_executed(page, notebook, "03_embeddings", screenshots)
    results = read_results(root / RUN / "03_embeddings")
    assert results["N"] > 0 and shown == len(results["figures"]) == 4
    sources = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    explorer = next(i for i, s in enumerate(sources) if "MeansExplorer(" in s)
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(explorer)
    cell.scroll_into_view_if_needed()
    figure = cell.locator(".jupyter-matplotlib-figure, .jupyter-matplotlib").first
    figure.wait_for(state="visible", timeout=30_000)
    page.wait_for_timeout(1000)
    before = figure.screenshot()
    handle = cell.locator(".noUi-handle, .widget-slider [role=slider]").first
    handle.focus()
    page.keyboard.press("ArrowLeft")  # epoch 2 -> 1
    cell.locator(".widget-readout", has_text=re.compile(r"^1$")).wait_for(timeout=10_000)
    page.wait_for_timeout(1500)  # the kernel redraws and sends the new image
    after_slider = figure.screenshot()
    assert after_slider != before, "moving the epoch slider did not change the figure"
    cell.locator("select").select_option(label="1")
    page.wait_for_timeout(1500)
    assert figure.screenshot() != after_slider, "choosing a class did not change the figure"
    page.screenshot(path=str(screenshots / "03_embeddings_slider.png"))


def test_04_inference_in_lab(lab, page, screenshots):
    _, _, root = lab
    open_notebook(page, lab, "04_inference")
    edit_parameters(page, PARAMETERS["04_inference"])
    shown = check_executed(page, run_all(page), "04_inference", screenshots)
    results = read_results(root / RUN / "04_inference")
    assert results["images"] == 2 and shown == len(results["figures"]) == 1
    assert not (root / "figures").exists()
    for name in PARAMETERS:  # Lab never wrote the committed notebooks
        committed = (REPO / "notebooks" / f"{name}.ipynb").read_bytes()
        assert (root / "notebooks" / f"{name}.ipynb").read_bytes() == committed
