"""The notebooks: clean in git, documented parameters, and each one runs under papermill.

The slow tests train one tiny DLDENet (preset ``tiny``, 3-d embeddings so the raw-sphere
figure is drawn) with ``01_train`` and run ``02``-``04`` on it, each in a fresh kernel.
"""
import json
import math
import shutil
from pathlib import Path

import nbformat
import pytest

from dlde.pipeline import KERNEL_NAME, NOTEBOOKS_DIR, PAPERMILL_OPTIONS, kernel_argv, read_results

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = ["01_train.ipynb", "02_mean_drift.ipynb", "03_embeddings.ipynb", "04_inference.ipynb"]


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_kernel():
    """Kernels inherit this environment. On a busy 2-core machine two OpenMP threads per
    process oversubscribe the cores and a tiny epoch takes ~25 s instead of ~1 s."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def test_the_four_notebooks_exist():
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
    description = nbformat.read(path, as_version=4).cells[0].source
    for name, parameter in parameters.items():
        assert parameter["help"].strip(), f"{path.name}: {name} has no trailing comment"
        assert parameter["inferred_type_name"] in {"str", "int", "float", "bool"}, name
        assert f"`{name}`" in description, f"{path.name}: {name} is not described in the first cell"


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
    return read_results(out_dir)


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
    assert json.loads((run_dir / "config.json").read_text())["config"]["embedding_size"] == 3
    assert results["model"] == "dlde" and results["preset"] == "tiny" and results["epochs"] == 2
    for key in ("AP", "AP50", "AP75"):
        assert finite(results[key], 0.0, 1.0), key
    assert results["AP"] <= results["AP50"]
    assert finite(results["val_loss"], 0.0) and finite(results["train_time_s"], 0.0)
    assert set(results["per_class_AP"]) <= {"0", "1", "2"}
    assert_figures(figures_dir, results, ["t_train_curves", "t_val_detections"])


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
                   ["embeddings_umap", "embeddings_sphere", "embeddings_raw_sphere", "cosine_margins"])


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
    assert results["detections"] == sum(counts) == sum(results["detections_per_class"].values())
    assert finite(results["mean_detections_per_image"], 0.0)
    assert_figures(tmp_path / "figures", results, ["inference"])
