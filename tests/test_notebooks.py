"""The notebooks: clean in git, documented parameters, and each one runs under papermill.

The slow tests train one tiny DLDENet (preset ``tiny``, 3-d embeddings so the raw-sphere
figure is drawn) with ``01_train`` and run ``02``-``04`` on it, each in a fresh kernel.
"""
import json
import math
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest

from dlde.pipeline import lock
from dlde.pipeline import notebook as nbhelpers
from dlde.pipeline.execute import KERNEL_NAME, PAPERMILL_OPTIONS, kernel_argv
from dlde.pipeline.lock import NOTEBOOKS_DIR
from dlde.pipeline.notebook import read_results
from dlde.plots import interactive

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = ["00_mechanism.ipynb", "01_train.ipynb", "02_mean_drift.ipynb", "03_embeddings.ipynb", "04_inference.ipynb",
            "05_few_shot.ipynb", "06_open_set.ipynb", "07_vocabulary.ipynb"]


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_kernel():
    """Kernels inherit this environment. On a busy 2-core machine two OpenMP threads per
    process oversubscribe the cores and a tiny epoch takes ~25 s instead of ~1 s."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def test_the_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_and_thin(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    assert nb.cells[0].cell_type == "markdown"
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is nb.cells[1], "one parameters cell, right after the description"
    assert "write_results(" in nb.cells[-1].source, "the last cell writes results.json"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_a_documented_primitive(path):
    import papermill

    parameters = papermill.inspect_notebook(str(path))
    assert {"RUN_DIR", "FIGURES_DIR", "FIGURE_PREFIX", "OUT_DIR"} <= set(parameters)
    for name, parameter in parameters.items():  # documented once, by its comment in the parameters cell
        assert parameter["help"].strip(), f"{path.name}: {name} has no trailing comment"
        assert parameter["inferred_type_name"] in {"str", "int", "float", "bool"}, name


#: The notebooks that open with their question, what to look for, cost and prerequisites, link their committed
#: figures, and print what the run shows after each figure.
EXPLAINED = ["01_train", "02_mean_drift", "03_embeddings", "04_inference", "05_few_shot", "06_open_set"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_relative_link_of_a_notebook_exists(path):
    from dlde.pipeline.readme import broken_links

    nb = nbformat.read(path, as_version=4)
    assert [line for index, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
            for line in broken_links(cell.source, path, f"{path.name}, cell {index}")] == []


@pytest.mark.parametrize("name", EXPLAINED)
def test_a_notebook_opens_with_its_question_and_says_what_each_figure_shows(name):
    import re

    import papermill

    path = NOTEBOOKS_DIR / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source
    for part in ("**The question.**", "**What to look for.**", "**Cost and prerequisites.**"):
        assert part in first, f"{name}: no {part}"
    assert "../docs/notebooks.md#paths" in first and "Relative paths are relative" not in first  # the note, once
    for parameter in papermill.inspect_notebook(str(path)):  # documented once, in the parameters cell
        assert f"- `{parameter}`:" not in first, f"{name}: the first cell lists {parameter} again"
    codes = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    linked = set(re.findall(r"\(\.\./figures/([\w-]+)\.png\)", first))
    shown = re.compile(r'figures\.show\(.*?,\s*"(\w+)"\)$', re.S | re.M)  # the name: the call's last argument
    drawn = {figure for source in codes for figure in shown.findall(source)}
    committed = {figure for figure in drawn if (NOTEBOOKS_DIR.parent / "figures" / f"{figure}.png").exists()}
    assert committed and committed <= linked, f"{name}: committed figures not linked: {committed - linked}"
    for index, source in enumerate(codes[:-1]):
        if "figures.show(" in source and not source.startswith("if "):  # a figure drawn only sometimes: none
            assert "_finding(" in codes[index + 1], f"{name}: nothing says what the figure of code cell {index} shows"


def test_papermill_kernel_is_this_interpreter():
    import sys

    assert kernel_argv(KERNEL_NAME)[0] == sys.executable


# ------------------------------------------------------------------------------- execution
def execute(notebook, output_dir, **parameters):
    """Run a notebook in a fresh kernel; return its results.json."""
    import papermill

    out_dir = output_dir / Path(notebook).stem
    papermill.execute_notebook(str(NOTEBOOKS_DIR / notebook), str(output_dir / notebook),
                               parameters={**parameters, "OUT_DIR": str(out_dir)}, cwd=str(output_dir),
                               **PAPERMILL_OPTIONS)
    executed = nbformat.read(output_dir / notebook, as_version=4)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    streams = "".join(o.text for c in executed.cells if c.cell_type == "code" for o in c.outputs
                      if o.output_type == "stream")
    assert "TqdmWarning" not in streams and "IProgress not found" not in streams
    return read_results(out_dir)


def printed(output_dir, notebook):
    """Everything the cells of an executed notebook printed."""
    executed = nbformat.read(output_dir / notebook, as_version=4)
    return "".join(o.text for c in executed.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")


def refused(notebook, output_dir, **parameters):
    """Run a notebook that must stop on an error; return the error's message (its name and value)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as error:
        papermill.execute_notebook(str(NOTEBOOKS_DIR / notebook), str(output_dir / notebook),
                                   parameters={**parameters, "OUT_DIR": str(output_dir / Path(notebook).stem)},
                                   cwd=str(output_dir), **PAPERMILL_OPTIONS)
    return f"{error.value.ename}: {error.value.evalue}"


def finite(value, low=-math.inf, high=math.inf):
    return isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high


def assert_figures(figures_dir, results, expected):
    assert results["figures"] == expected
    for name in expected:
        for suffix in (".png", ".pdf"):
            assert (figures_dir / f"{name}{suffix}").stat().st_size > 0, name


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``01_train`` with preset tiny: (run folder, figures folder, results.json)."""
    root = tmp_path_factory.mktemp("notebooks")
    run_dir, figures_dir = root / "run", root / "figures"
    results = execute("01_train.ipynb", root, PRESET="tiny", EPOCHS=2, RUN_DIR=str(run_dir),
                      DATA_ROOT=str(root / "data"), FIGURES_DIR=str(figures_dir), FIGURE_PREFIX="t_",
                      DETECTION_IMAGES=2, OVERRIDES_JSON=json.dumps({"embedding_size": 3}))
    return run_dir, figures_dir, results


@pytest.mark.slow
def test_01_train(tiny_run):
    run_dir, figures_dir, results = tiny_run
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "means_history.npy").exists()
    assert json.loads((run_dir / "config.json").read_text())["config"]["head_options"]["embedding_size"] == 3
    assert results["model"] == "dlde" and results["preset"] == "tiny" and results["epochs"] == 2
    for key in ("AP", "AP50", "AP75"):
        assert finite(results[key], 0.0, 1.0), key
    assert results["AP"] <= results["AP50"]
    assert finite(results["val_loss"], 0.0) and finite(results["train_time_s"], 0.0)
    assert set(results["per_class_AP"]) <= {"0", "1", "2"}
    assert "ECE" in results and (results["ECE"] is None or finite(results["ECE"], 0.0, 1.0))  # None: no detections
    assert_figures(figures_dir, results, ["t_train_curves", "t_per_class_ap", "t_reliability", "t_val_detections"])
    text = printed(run_dir.parent, "01_train.ipynb")  # what the run shows, under each figure
    assert "Over 2 epochs the validation AP went from" in text
    assert "Per-class AP after the last epoch" in text or "No class has an AP yet" in text
    assert "detections, " in text or "No detection on the validation set" in text
    assert "2 images with" in text


@pytest.mark.slow
def test_00_mechanism(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    results = execute("00_mechanism.ipynb", tmp_path, RUN_DIR=str(run_dir), FIGURES_DIR=str(tmp_path / "figures"),
                      IMPRINT_CLASS=1, IMPRINT_SHOTS=3, STREAM_BATCHES=60)
    shapes = {stage["name"]: stage["shape"] for stage in results["stages"]}
    assert shapes["embeddings"][-1] == 3 and shapes["class means"] == [3, 3]  # the run's embedding_size 3
    assert shapes["probabilities"] == shapes["cosines"] == [*shapes["embeddings"][:2], 3]
    assert finite(results["mean_turn_deg"], 0.0, 180.0) and results["mean_turn_deg"] > 0
    tracking = results["tracking"]
    slow, fast, centered = tracking["means_lr 0.003"], tracking["means_lr 0.1"], tracking["means_lr 0.1, centered"]
    assert slow["angle_to_start"] < fast["angle_to_start"]  # a small step moves a mean slowly
    assert fast["min_angle"] < 40.0 < 80.0 < centered["min_angle"]  # a large one collapses them; centering does not
    assert results["imprinted"]["anchors"] >= 3 and finite(results["imprinted"]["cosine_to_tracked"], -1.0, 1.0)
    assert_figures(tmp_path / "figures", results, ["mechanism_probability", "mechanism_tracking"])


@pytest.mark.slow
def test_02_mean_drift(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    results = execute("02_mean_drift.ipynb", tmp_path, RUN_DIR=str(run_dir), FIGURES_DIR=str(tmp_path / "figures"))
    assert results["epochs"] == 2
    assert set(results["total_drift_deg"]) == set(results["last_kappa"]) == {"0", "1", "2"}
    assert all(finite(v, 0.0, 2 * 180.0) for v in results["total_drift_deg"].values())
    assert finite(results["mean_last_step_deg"], 0.0, 180.0)
    assert finite(results["max_off_diagonal_cosine_first"], -1.0, 1.0)
    assert finite(results["max_off_diagonal_cosine_last"], -1.0, 1.0)
    assert all(finite(v, 0.0) and v > 0 for v in results["last_kappa"].values())
    assert_figures(tmp_path / "figures", results, ["mean_drift", "mean_cosines", "concentration"])
    text = printed(tmp_path, "02_mean_drift.ipynb")
    assert "The means turned" in text and "The mean κ̂ over classes went from" in text
    # the failure the notebook watches for, named under the cosines with the run's own numbers
    first_angle = math.degrees(math.acos(results["max_off_diagonal_cosine_first"]))
    assert f"The smallest angle between two class means went from {first_angle:.1f}° before training" in text
    assert "after epoch 2" in text and "collapse" in text


@pytest.mark.slow
def test_03_embeddings(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    results = execute("03_embeddings.ipynb", tmp_path, RUN_DIR=str(run_dir), FIGURES_DIR=str(tmp_path / "figures"),
                      MAX_IMAGES=8, N_NEIGHBORS=5)
    assert results["N"] >= 3 and results["embedding_size"] == 3
    assert finite(results["fraction_own_above_other"], 0.0, 1.0)
    assert finite(results["mean_own_cosine"], -1.0, 1.0)
    assert finite(results["mean_nearest_other_cosine"], -1.0, 1.0)
    assert_figures(tmp_path / "figures", results,
                   ["embeddings_umap", "embeddings_sphere", "embeddings_raw_sphere", "means_through_training",
                    "cosine_margins"])
    text = printed(tmp_path, "03_embeddings.ipynb")
    assert f"{results['fraction_own_above_other']:.1%} of the {results['N']} embeddings are nearer" in text
    assert "The median embedding lies" in text and "each mean travelled" in text
    assert f"Mean cosine {results['mean_own_cosine']:.3f} to the own class mean" in text


@pytest.mark.slow
def test_04_inference_on_a_folder_of_images(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    images = tmp_path / "my images"
    images.mkdir()
    val_dir = Path(json.loads((run_dir / "config.json").read_text())["config"]["data_root"]) / "val"
    for source in sorted(val_dir.glob("*.png"))[:2]:
        shutil.copy(source, images / source.name)
    (images / "notes.txt").write_text("not an image")
    results = execute("04_inference.ipynb", tmp_path, RUN_DIR=str(run_dir), IMAGES_DIR=str(images),
                      SCORE_THRESHOLD=0.05, FIGURES_DIR=str(tmp_path / "figures"))
    assert results["images"] == 2 and set(results["detections_per_image"]) == {"000001.png", "000002.png"}
    counts = results["detections_per_image"].values()
    assert all(isinstance(c, int) and c >= 0 for c in counts)
    # the default unknown flag (knn) moves the detections it flags out of their class
    assert results["detections"] == sum(counts) == sum(results["detections_per_class"].values()) + results[
        "unknown_detections"]
    assert finite(results["mean_detections_per_image"], 0.0)
    assert_figures(tmp_path / "figures", results, ["inference"])
    assert f"{results['detections']} detections in 2 images" in printed(tmp_path, "04_inference.ipynb")


# ---------------------------------------------------------- a second run into the same folder
@pytest.mark.slow
def test_01_train_run_again_into_its_folder_stops_naming_resume_and_overwrite(tiny_run, tmp_path):
    """After `make figures`, 01_train with another EPOCHS and the same RUN_DIR stops before it trains,
    naming the notebook's parameters (not the Python arguments), and leaves the run as it was."""
    run_dir, _, _ = tiny_run
    saved = {name: (run_dir / name).stat().st_mtime_ns for name in ("checkpoint.pt", "config.json", "metrics.jsonl")}
    message = refused("01_train.ipynb", tmp_path, PRESET="tiny", EPOCHS=3, RUN_DIR=str(run_dir),
                      DATA_ROOT=str(run_dir.parent / "data"), FIGURES_DIR=str(tmp_path / "figures"))
    assert "RESUME = True" in message and "OVERWRITE = True" in message and "RUN_DIR" in message, message
    assert "resume=True" not in message
    assert saved == {name: (run_dir / name).stat().st_mtime_ns for name in saved}


@pytest.mark.slow
def test_05_and_06_with_other_base_epochs_stop_naming_the_parameters(tiny_run, tmp_path):
    """As after `make figures` (base runs of BASE_EPOCHS 8 in runs/fewshot_base): 05 and 06 opened with the
    default BASE_EPOCHS (those of RUN_DIR's run) stop before training anything, naming BASE_EPOCHS with the
    epochs the folder holds and BASE_RUNS_DIR. The base run is made here by the function 05 calls (what 05
    prints when it runs: test_fewshot)."""
    from dlde.train.runs import load_run

    run_dir, _, _ = tiny_run
    base_dir = tmp_path / "base"
    nbhelpers.base_models(load_run(run_dir).config, base_dir, ["dlde"], seeds=[0], epochs=1)
    checkpoint = base_dir / "dlde" / "checkpoint.pt"
    trained = checkpoint.stat().st_mtime_ns
    common = dict(RUN_DIR=str(run_dir), BASE_RUNS_DIR=str(base_dir), HEADS="dlde", BASE_SEEDS="0", MAX_IMAGES=8,
                  FIGURES_DIR=str(tmp_path / "figures"))
    for notebook in ("05_few_shot.ipynb", "06_open_set.ipynb"):
        message = refused(notebook, tmp_path, **common)  # BASE_EPOCHS 0: the 2 epochs of the run in RUN_DIR
        assert "epochs: 1 -> 2" in message and "BASE_EPOCHS = 1" in message, message
        assert "BASE_RUNS_DIR = " in message and "Nothing was trained" in message
    assert checkpoint.stat().st_mtime_ns == trained and sorted(p.name for p in base_dir.iterdir()) == ["dlde"]


# ------------------------------------------------------- paths, parameters lock, saving in Lab
def test_project_path_resolves_against_the_project_root_found_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(nbhelpers.ROOT_ENV, raising=False)
    (tmp_path / "figures.yaml").write_text("runs: {}\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # where JupyterLab starts the kernel
    assert nbhelpers.project_root() == tmp_path.resolve()
    assert nbhelpers.project_path("runs/dlde") == tmp_path.resolve() / "runs" / "dlde"
    assert nbhelpers.project_path("/abs/x") == Path("/abs/x")
    assert nbhelpers.project_path("runs/x", root=tmp_path / "other") == (tmp_path / "other" / "runs" / "x").resolve()


def test_project_path_never_uses_the_package_location(tmp_path, monkeypatch):
    monkeypatch.delenv(nbhelpers.ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no marker above a pytest tmp folder: the working directory itself
    assert nbhelpers.project_path("runs/dlde") == tmp_path.resolve() / "runs" / "dlde"
    explicit = tmp_path / "project"
    explicit.mkdir()
    monkeypatch.setenv(nbhelpers.ROOT_ENV, str(explicit))
    assert nbhelpers.project_path("runs/dlde") == explicit.resolve() / "runs" / "dlde"
    monkeypatch.setenv(nbhelpers.ROOT_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="DLDE_PROJECT_ROOT"):
        nbhelpers.project_root()


def test_notebook_defaults_write_into_the_run_folder_only(tmp_path):
    figures, out = nbhelpers.output_dirs("runs/dlde", "", "", "03_embeddings", root=tmp_path)
    assert figures == tmp_path.resolve() / "runs/dlde/figures" and out == tmp_path.resolve() / "runs/dlde/03_embeddings"
    import papermill

    for path in NOTEBOOKS:
        parameters = papermill.inspect_notebook(str(path))
        assert parameters["FIGURES_DIR"]["default"] == '""', f"{path.name}: FIGURES_DIR must default to RUN_DIR/figures"
        assert parameters["RUN_DIR"]["default"].strip('"').startswith("runs/"), path.name


def test_committed_parameters_cells_match_the_lock():
    for path in NOTEBOOKS:
        lock.check_parameters_cell(path)
    assert set(lock.read_lock()) == {p.name for p in NOTEBOOKS}


def test_an_edited_parameters_cell_is_refused_with_the_line_named(tmp_path):
    folder = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS_DIR, folder)
    path = folder / "01_train.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = nb.cells[1].source.replace("EPOCHS: int = 16", "EPOCHS: int = 2")
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match=r"01_train.ipynb: parameters cell differs .* line 3: 'EPOCHS: int = 2"):
        lock.check_parameters_cell(path)
    assert lock.main(["--check", "--notebooks", str(folder)]) == 1
    lock.write_lock(folder)  # a deliberate change: relock
    lock.check_parameters_cell(path)
    (folder / "new.ipynb").write_text((folder / "02_mean_drift.ipynb").read_text())
    with pytest.raises(ValueError, match="new.ipynb: not in"):
        lock.check_parameters_cell(folder / "new.ipynb")


def test_the_lab_save_hook_refuses_only_committed_notebooks(tmp_path):
    from tornado.web import HTTPError

    shutil.copytree(NOTEBOOKS_DIR, tmp_path / "notebooks")
    manager = type("Manager", (), {"root_dir": str(tmp_path)})()
    with pytest.raises(HTTPError, match="Save Notebook As") as refused:
        lock.refuse_committed_save({}, "notebooks/01_train.ipynb", manager)
    assert refused.value.status_code == 403
    for allowed in ("runs/mine/01_train.ipynb", "notebooks/Untitled.ipynb", "01_train.ipynb",
                    "notebooks/x/01_train.ipynb"):
        lock.refuse_committed_save({}, allowed, manager)


def test_makefile_lab_uses_the_save_hook_and_installs_no_user_kernel():
    makefile = (NOTEBOOKS_DIR.parent / "Makefile").read_text()
    assert "--FileContentsManager.pre_save_hook=dlde.pipeline.lock.refuse_committed_save" in makefile
    assert "--allow-root" in makefile and "ipykernel install" not in makefile


# ------------------------------------------------------------------------ interactive figures
def _history(epochs=3, classes=3, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(epochs + 1, classes, dim))


def test_use_widgets_follows_the_jupyter_server_and_the_override(monkeypatch):
    monkeypatch.delenv(interactive.WIDGETS_ENV, raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert interactive.use_widgets() is False  # papermill, terminal
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/03_embeddings.ipynb")
    assert interactive.use_widgets() is True  # a kernel started by JupyterLab
    monkeypatch.setenv(interactive.WIDGETS_ENV, "0")
    assert interactive.use_widgets() is False
    assert interactive.use_widgets(True) is True


def test_means_explorer_steps_through_epochs_and_highlights_a_class():
    history = _history()
    rng = np.random.default_rng(1)
    embeddings, labels = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    explorer = interactive.MeansExplorer(history, ["a", "b", "c"], embeddings, labels)
    assert explorer.epochs == 3 and explorer.epoch == 3 and explorer.points.shape == (4, 3, 2)
    np.testing.assert_allclose(explorer._stars.get_offsets(), explorer.points[3])
    explorer.update(0)
    np.testing.assert_allclose(explorer._stars.get_offsets(), explorer.points[0])
    assert len(explorer._paths[1].get_xdata()) == 1 and "before training" in explorer.axes.get_title()
    explorer.update(highlight=1)
    assert explorer.epoch == 0 and list(explorer._stars.get_alpha()) == [0.15, 1.0, 0.15]
    assert "class b" in explorer.axes.get_title()
    explorer.update(2, None)
    assert explorer._stars.get_alpha() is None or np.all(np.asarray(explorer._stars.get_alpha()) == 1.0)
    with pytest.raises(ValueError, match="epoch 4 outside 0..3"):
        explorer.update(4)
    with pytest.raises(ValueError, match="highlight 3"):
        explorer.update(highlight=3)


def test_means_explorer_projection_is_the_same_for_every_epoch():
    """Unit means at a fixed PCA plane: a mean that does not move does not move in the figure."""
    history = _history(epochs=2)
    history[:, 0] = history[0, 0]
    explorer = interactive.MeansExplorer(history, ["a", "b", "c"])
    np.testing.assert_allclose(explorer.points[0, 0], explorer.points[2, 0])
    assert not np.allclose(explorer.points[0, 1], explorer.points[2, 1])


def test_means_explorer_controls_drive_the_figure():
    explorer = interactive.MeansExplorer(_history(), ["a", "b", "c"])
    slider, selector = explorer.controls().children
    assert (slider.min, slider.max, slider.value) == (0, 3, 3)
    slider.value = 1
    assert explorer.epoch == 1
    np.testing.assert_allclose(explorer._stars.get_offsets(), explorer.points[1])
    selector.value = 2
    assert explorer.highlight == 2
    selector.value = None
    assert explorer.highlight is None


def test_means_explorer_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"means_history must be \(epochs \+ 1, C, d\)"):
        interactive.MeansExplorer(np.zeros((3, 4)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="class_names has 2 names for 3 classes"):
        interactive.MeansExplorer(_history(), ["a", "b"])
    with pytest.raises(ValueError, match="embeddings must be"):
        interactive.MeansExplorer(_history(), ["a", "b", "c"], np.zeros((5, 3)), np.zeros(5, int))


def test_interactive_figures_display_as_widgets_with_a_png_fallback(tmp_path):
    explorer = interactive.MeansExplorer(_history(), ["a", "b", "c"])
    canvas = interactive.widget_canvas(explorer.figure)
    bundle = canvas._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and bundle["image/png"]
    before = bundle["image/png"]
    explorer.update(0)
    assert canvas._repr_mimebundle_()["image/png"] != before


# ------------------------------------------------------------ what a run shows, under its figures
def test_the_sentence_under_the_cosines_names_the_smallest_angle_and_a_collapse():
    from dlde.reports import findings

    start = np.eye(3, 4)  # orthonormal: 90° apart
    apart = np.array([[1.0, 0.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])  # 60° closest
    text = findings.mean_angles_finding(np.stack([start, apart]), ["a", "b", "c"])
    assert text.startswith("The smallest angle between two class means went from 90.0° before training to "
                           "60.0° after epoch 1 (classes 'a' and 'b')")
    assert "No two means collapsed" in text and "angles near 0°" in text
    tilt = math.radians(2.0)
    collapsed = np.array([[1.0, 0.0, 0.0, 0.0], [math.cos(tilt), math.sin(tilt), 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    text = findings.mean_angles_finding(np.stack([start, apart, collapsed, apart]), ["a", "b", "c"])
    assert "to 60.0° after epoch 3" in text and "its lowest was 2.0° after epoch 2" in text
    assert "collapsed onto each other (closer than 5°) after epoch 2 and came apart again" in text
    text = findings.mean_angles_finding(np.stack([start, collapsed]), ["a", "b", "c"])
    assert "2.0° after epoch 1" in text and "they have collapsed onto each other" in text


def test_the_sentences_under_the_training_figures_follow_the_numbers():
    from dlde.reports import findings

    metrics = [{"epoch": 1, "AP": 0.2, "train_loss": 1.0, "val_loss": 0.9},
               {"epoch": 2, "AP": 0.6, "train_loss": 0.5, "val_loss": 0.4},
               {"epoch": 3, "AP": 0.5, "train_loss": 0.3, "val_loss": 0.45}]
    text = findings.training_finding(metrics)
    assert text.startswith("Over 3 epochs the validation AP went from 0.200 after epoch 1 to 0.500 after epoch 3 "
                           "(best 0.600 after epoch 2)")
    assert "lowest after epoch 2 (0.400)" in text
    assert findings.per_class_finding({"0": 0.9, "1": 0.0, "2": 0.5}).startswith(
        "Per-class AP after the last epoch ranges from 0.000 (class '1') to 0.900 (class '0')")
    calibration = {"scores": np.array([0.9, 0.9, 0.2, 0.2]), "correct": np.array([True, False, False, False]),
                   "ece": 0.3}
    text = findings.calibration_finding(calibration)
    assert "4 detections, 25.0% of them right" in text and "over-confident by 0.300" in text
    assert "Of the 2 scoring at least 0.5, 50.0% are right" in text
    samples = [{"boxes": np.array([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]),
                "gt_boxes": np.array([[1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])}]
    assert findings.detections_finding(samples, 0.3) == ("1 image with 2 objects: 2 boxes scoring at least 0.3, "
                                                         "and 1 of the 2 objects overlapped by one at IoU ≥ 0.5.")


def test_base_runs_of_other_settings_are_refused_naming_the_notebook_parameters(tmp_path, monkeypatch):
    """What make figures leaves in runs/fewshot_base (BASE_EPOCHS 8) against 05/06's default (RUN_DIR's epochs)."""
    from dlde.protocols.base_runs import base_config, base_run_dir
    from dlde.train import TrainConfig
    from dlde.train.runs import RunFolder

    monkeypatch.setenv(nbhelpers.ROOT_ENV, str(tmp_path))
    like = TrainConfig.from_dict({"epochs": 16, "data_root": str(tmp_path / "data" / "digits")}, preset="tiny")
    base_dir = tmp_path / "runs" / "fewshot_base"
    for head in ("dlde", "retinanet"):
        saved = base_config(head, base_run_dir(base_dir, head, 0), like=like, seed=0, epochs=8)
        RunFolder(saved.run_dir).path.mkdir(parents=True)
        RunFolder(saved.run_dir).write_record({"config": saved.to_dict()})
    with pytest.raises(FileExistsError) as refused_error:
        nbhelpers.base_models(like.to_dict(), base_dir, ["dlde", "retinanet"], seeds=[0], epochs=0)
    message = str(refused_error.value)
    assert message.startswith("runs/fewshot_base/dlde and 1 more base run folders hold base runs of other settings "
                              "than this notebook asks for (epochs: 8 -> 16)")
    assert "BASE_EPOCHS = 8 to use the base runs already there" in message
    assert 'BASE_RUNS_DIR = "runs/fewshot_base_mine"' in message and "Nothing was trained" in message
    assert "RUN_DIR to the run" not in message
    other = like.to_dict() | {"lr": like.lr * 2}  # RUN_DIR now holds another run than the one copied
    with pytest.raises(FileExistsError, match=r"lr: .* RUN_DIR to the run they were trained from") as refused_error:
        nbhelpers.base_models(other, base_dir, ["dlde"], seeds=[0], epochs=8)
    assert "BASE_EPOCHS" not in str(refused_error.value)
    assert sorted(p.name for p in base_dir.iterdir()) == ["dlde", "retinanet"]  # nothing trained


def test_the_few_shot_and_open_set_sentences_say_which_intervals_overlap():
    from dlde.protocols.fewshot import FewShotSummary
    from dlde.protocols.openset import PooledModel, PooledOpenSet, PooledScore
    from dlde.reports import findings

    def interval(mean, half=0.05):
        return {"mean": mean, "sd": half, "low": mean - half, "high": mean + half, "n": 3}

    def row(method, k, novel, base_before, base_after):
        return FewShotSummary(method, k, 3, 0, interval(novel), interval(novel), interval(base_after),
                              interval(base_after), interval(1.0), base_before, base_before - base_after, 3)

    summary = [row("dlde_imprint", 1, 0.30, 0.80, 0.78), row("retinanet_finetune", 1, 0.10, 0.82, 0.70),
               row("dlde_imprint", 30, 0.45, 0.80, 0.79), row("retinanet_finetune", 30, 0.42, 0.82, 0.84)]
    assert findings.novel_ap_finding(summary) == (
        "novel_AP (mean [95 % interval]): at k = 1 dlde_imprint leads with 0.300 [0.250, 0.350], above "
        "retinanet_finetune's 0.100 [0.050, 0.150]; at k = 30 dlde_imprint leads with 0.450 [0.400, 0.500], "
        "overlapping retinanet_finetune's 0.420 [0.370, 0.470].")
    assert findings.forgetting_finding(summary) == (
        "At k = 30 dlde_imprint forgot most: its base AP fell from 0.800 to 0.790 [0.740, 0.840]; "
        "retinanet_finetune forgot least: its base AP rose from 0.820 to 0.840 [0.790, 0.890].")

    def model(**auroc):
        scores = {kind: PooledScore(interval(value), *[interval(0.5)] * 4) for kind, value in auroc.items()}
        return PooledModel(scores, *[interval(0.5)] * 4)

    pooled = PooledOpenSet([0, 1, 2], 10, 20, 5, {"dlde": model(probability=0.6, knn=0.77),
                                                  "retinanet": model(probability=0.78)}, {})
    assert findings.open_set_finding(pooled) == (
        "Best unknown score per head, AUROC mean [95 % interval] over 3 base seeds: dlde knn 0.770 [0.720, 0.820]; "
        "retinanet probability 0.780 [0.730, 0.830]. DLDENet's best and retinanet's best overlap: not told apart.")
