"""The figure pipeline: planning from figures.yaml (fast), and --tiny end to end (slow)."""
import inspect
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from dlde.pipeline import execute as executing
from dlde.pipeline import plan as planning
from dlde.pipeline import sweeps as sweeping
from dlde.pipeline.cli import main
from dlde.pipeline.execute import NotebookFailed, run_pipeline, torchrun_command
from dlde.pipeline.lock import notebook_defaults
from dlde.pipeline.notebook import demo_images, mean_drift_results, write_results
from dlde.pipeline.plan import TINY_NOTEBOOK, make_plan
from dlde.pipeline.run_config import run_parameters, split_entry, train_config
from dlde.pipeline.sweeps import make_sweep_plan
from dlde.train import PRESETS, RunFolder, TrainConfig, build_datasets

REPO = Path(__file__).resolve().parents[1]
FIGURES_YAML = REPO / "figures.yaml"


ONE_SWEEP = "sweeps: {s: {base: {PRESET: tiny, EPOCHS: 1}, arms: {a: {}}, seeds: [0]}}\n"


def write_yaml(tmp_path, text):
    path = tmp_path / "figures.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------- planning
def test_default_plan_trains_every_run_first_and_prefixes_all_but_the_first(tmp_path):
    plan = make_plan(FIGURES_YAML, runs_dir=tmp_path / "runs", figures_dir=tmp_path / "figures")
    order = [(s.run, s.notebook) for s in plan.steps]
    assert order[:2] == [("dlde", "01_train.ipynb"), ("sigmoid", "01_train.ipynb")]
    assert {notebook for _, notebook in order} == {"00_mechanism.ipynb", "01_train.ipynb", "02_mean_drift.ipynb",
                                                   "03_embeddings.ipynb",
                                                   "04_inference.ipynb", "05_few_shot.ipynb", "06_open_set.ipynb",
                                                   "07_vocabulary.ipynb"}
    assert {s.run: s.prefix for s in plan.steps} == {"dlde": "", "sigmoid": "sigmoid_", "07_vocabulary": ""}
    train = plan.parameters(plan.steps[0])
    assert train["PRESET"] == "digits" and train["MODEL"] == "dlde"
    assert train["RUN_DIR"] == str(tmp_path / "runs" / "dlde")
    assert train["OUT_DIR"] == str(tmp_path / "runs" / "dlde" / "01_train")
    assert train["DATA_ROOT"] == str(REPO / "data" / "digits")  # relative to figures.yaml
    assert train["FIGURES_DIR"] == str(tmp_path / "figures")
    assert plan.executed(plan.steps[1]) == tmp_path / "runs" / "sigmoid" / "01_train.ipynb"


def test_tiny_plan_uses_tiny_parameters_and_its_own_folders(tmp_path):
    plan = make_plan(FIGURES_YAML, tiny=True, runs_dir=tmp_path)
    assert plan.runs_dir == tmp_path / "tiny" and plan.figures_dir == tmp_path / "tiny" / "figures"
    for step in plan.steps:
        values = plan.parameters(step)
        if step.notebook == "01_train.ipynb":
            assert values["PRESET"] == "tiny" and values["EPOCHS"] == 1
            assert values["DATA_ROOT"] == str(tmp_path / "tiny" / "data")
        if step.notebook == "03_embeddings.ipynb":
            assert values["MAX_IMAGES"] == TINY_NOTEBOOK["MAX_IMAGES"]


@pytest.mark.parametrize("tiny", [False, True])
def test_a_notebook_that_reads_sweeps_needs_no_run_and_is_told_where_they_are(tmp_path, tiny):
    plan = make_plan(FIGURES_YAML, tiny=tiny, runs_dir=tmp_path)
    step = plan.steps[-1]
    assert (step.run, step.notebook, step.sweeps, step.prefix) == ("07_vocabulary", "07_vocabulary.ipynb",
                                                                   ("vocabulary_figures",), "")
    values = plan.parameters(step)
    assert values["RUN_DIR"] == str(plan.runs_dir / "07_vocabulary")
    assert (values["CONFIG"], values["RUNS_DIR"], values["TINY"]) == (str(FIGURES_YAML), str(tmp_path), tiny)
    # What the notebook plans from these is what the pipeline trains: the figure plan's sweep runs.
    read = make_sweep_plan(values["CONFIG"], [values["HEADS_SWEEP"]], tiny=values["TINY"], runs_dir=values["RUNS_DIR"])
    assert read.sweeps_dir == plan.runs_dir / "sweeps" and len(read.runs) == 3
    assert all(key.startswith("tiny/" if tiny else "glyphs-100/") for key in read.runs)
    assert "RUNS_DIR" not in plan.parameters(plan.steps[0])  # only a notebook that reads sweeps is told


def test_only_selects_runs_or_notebooks(tmp_path):
    steps = make_plan(FIGURES_YAML, only=["sigmoid"], runs_dir=tmp_path).steps
    assert {s.run for s in steps} == {"sigmoid"} and len(steps) == 2
    steps = make_plan(FIGURES_YAML, only=["03"], runs_dir=tmp_path).steps
    assert [(s.run, s.notebook) for s in steps] == [("dlde", "03_embeddings.ipynb")]
    with pytest.raises(ValueError, match="matches no run"):
        make_plan(FIGURES_YAML, only=["nope"], runs_dir=tmp_path)


@pytest.mark.parametrize("text, message", [
    ("runs: {a: {EPOCHS: 1, EPOCH: 2}}", r"has no parameters \['EPOCH'\]"),
    ("runs: {a: {RUN_DIR: x}}", "set by the pipeline"),
    ("runs: {a: {}}\nnotebooks: [{notebook: 02_mean_drift.ipynb, run: b}]", "not in runs"),
    ("runs: {a: {}}\nnotebooks: [{notebook: 02_mean_drift.ipynb, run: a, parameter: {}}]", "needs 'notebook'"),
    ("runs: {a: {}}\nnotebooks: [{notebook: 09_nope.ipynb, run: a}]", "does not exist"),
    ("runs: {a: {}}\nnotebooks: [{notebook: 01_train.ipynb, run: a}]", "appears twice"),
    ("runs: {a: {}}\nfigure_dir: x", "unknown keys"),
    ("notebooks: []", "'runs' must map"),
    ("runs: {a: {}}\nnotebooks: [{notebook: 07_vocabulary.ipynb}]", "needs 'notebook' and 'run' or 'sweeps'"),
    (f"{ONE_SWEEP}notebooks: [{{notebook: 07_vocabulary.ipynb, sweeps: s}}]", "'sweeps' must list sweep names"),
    (f"{ONE_SWEEP}notebooks: [{{notebook: 02_mean_drift.ipynb, sweeps: [s]}}]", r"declares no \['CONFIG', 'RUNS_DIR'"),
    (f"{ONE_SWEEP}notebooks: [{{notebook: 07_vocabulary.ipynb, sweeps: [s], parameters: {{TINY: true}}}}]",
     "set by the pipeline"),
])
def test_a_bad_figures_yaml_fails_before_anything_runs(tmp_path, text, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        make_plan(write_yaml(tmp_path, text))


def test_main_reports_a_bad_config_with_exit_status_2(tmp_path, capsys):
    assert main(["--config", str(write_yaml(tmp_path, "runs: {a: {EPOCH: 1}}"))]) == 2
    assert "EPOCH" in capsys.readouterr().err


def test_an_unknown_sweep_of_a_notebook_fails_in_one_line_before_anything_runs(tmp_path, capsys):
    config = write_yaml(tmp_path, f"runs: {{a: {{}}}}\n{ONE_SWEEP}"
                                  "notebooks: [{notebook: 07_vocabulary.ipynb, sweeps: [s, vocabulary_heads]}]\n")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {config}: notebook 07_vocabulary.ipynb reads sweeps ['vocabulary_heads'], "
                   "which are not in sweeps ['s']\n")
    assert not (tmp_path / "runs").exists()


def test_a_notebook_edited_in_lab_cannot_change_what_the_pipeline_runs(tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", folder)
    nb = nbformat.read(folder / "01_train.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = re.sub(r"EPOCHS: int = \d+", "EPOCHS: int = 2", cell.source)
    nbformat.write(nb, folder / "01_train.ipynb")
    monkeypatch.setattr(planning, "NOTEBOOKS_DIR", folder)
    with pytest.raises(ValueError, match="differs from parameters.lock.json"):
        make_plan(FIGURES_YAML, runs_dir=tmp_path)
    with pytest.raises(ValueError, match="differs from parameters.lock.json"):
        make_sweep_plan(FIGURES_YAML, runs_dir=tmp_path)


# ------------------------------------------------------------------------------- helpers
def test_write_results_makes_valid_json(tmp_path):
    path = write_results(tmp_path / "out", {"a": np.float32(0.5), "b": float("nan"), "c": np.arange(2),
                                            "d": {"e": np.int64(3), "f": np.inf}, "g": True})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": None, "c": [0, 1], "d": {"e": 3, "f": None}, "g": True}


def test_mean_drift_results_by_hand():
    steps = np.array([[10.0, 20.0], [5.0, np.nan]])  # (E, C)
    first = np.array([[1.0, 0.3], [0.3, 1.0]])
    last = np.array([[1.0, -0.2], [-0.2, 1.0]])
    kappa = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    results = mean_drift_results(steps, first, last, kappa, ["a", "b"])
    assert results["total_drift_deg"] == {"a": 15.0, "b": 20.0}
    assert results["mean_last_step_deg"] == 5.0
    assert results["max_off_diagonal_cosine_first"] == pytest.approx(0.3)
    assert results["max_off_diagonal_cosine_last"] == pytest.approx(-0.2)
    assert results["last_kappa"] == {"a": 5.0, "b": 6.0}


def test_demo_images_are_new_canvases_in_the_runs_format(tmp_path):
    config = PRESETS["tiny"].to_dict() | {"data_root": str(tmp_path / "data"), "digits_train_images": 4,
                                          "digits_val_images": 3}
    build_datasets(TrainConfig.from_dict(config))  # the run's own validation canvases
    folder = demo_images(tmp_path / "demo", 2, config)
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == ["demo_000.png", "demo_001.png"]
    val_pixels = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "data" / "val").glob("*.png"))]
    for file in files:
        pixels = np.asarray(Image.open(file))
        assert pixels.shape == (64, 64, 3)
        assert not any(np.array_equal(pixels, v) for v in val_pixels)
    assert len(sorted(demo_images(tmp_path / "demo", 1, config).glob("*.png"))) == 1  # old ones replaced
    with pytest.raises(ValueError, match="IMAGES_DIR"):
        demo_images(tmp_path / "x", 1, config | {"dataset": "coco"})


# ------------------------------------------------------------------------ index after a failure
def test_figures_of_a_failed_training_run_are_listed_as_stale_never_as_current(tmp_path, monkeypatch):
    config = write_yaml(tmp_path, "runs:\n  a: {EPOCHS: 1}\nnotebooks:\n  - {notebook: 02_mean_drift.ipynb, run: a}\n")
    plan = make_plan(config)
    made = {"01_train.ipynb": ["train_curves"], "02_mean_drift.ipynb": ["mean_drift", "mean_cosines"]}
    failing = set()

    def fake_papermill(notebook, executed, parameters, cwd, log_output):  # writes what the notebooks write
        if notebook in failing:
            raise RuntimeError("kernel died")
        Path(parameters["FIGURES_DIR"]).mkdir(parents=True, exist_ok=True)
        for name in made[notebook]:
            for suffix in (".png", ".pdf"):
                (Path(parameters["FIGURES_DIR"]) / f"{name}{suffix}").write_bytes(b"figure")
        write_results(parameters["OUT_DIR"], {"figures": made[notebook]})

    monkeypatch.setattr(executing, "papermill_execute", fake_papermill)
    monkeypatch.setattr(executing, "kernel_argv", lambda: [sys.executable])
    index = plan.figures_dir / "index.md"
    run_pipeline(plan)
    all_current = index.read_text()
    assert "| [train_curves](train_curves.png)" in all_current and "| [mean_drift](mean_drift.png)" in all_current
    assert "Stale" not in all_current and "Not current" not in all_current

    failing.add("01_train.ipynb")  # the run's training fails: so do the figures its other notebooks made of it
    with pytest.raises(NotebookFailed, match="kernel died"):
        run_pipeline(plan)
    current, heading, stale = index.read_text().partition("## Stale figures")
    assert heading and not re.search(r"\[(train_curves|mean_drift|mean_cosines)\]", current)
    for name, notebook in [("train_curves", "01_train"), ("mean_drift", "02_mean_drift"),
                           ("mean_cosines", "02_mean_drift")]:
        assert (f"| [{name}]({name}.png) ([pdf]({name}.pdf)) | a | `notebooks/{notebook}.ipynb` | "
                "`notebooks/01_train.ipynb` | RuntimeError: kernel died |") in stale
        assert (plan.figures_dir / f"{name}.png").exists() and (plan.figures_dir / f"{name}.pdf").exists()

    with pytest.raises(NotebookFailed):  # failing again keeps them stale
        run_pipeline(plan)
    assert "| [train_curves](train_curves.png)" in index.read_text().partition("## Stale figures")[2]
    failing.clear()  # re-produced successfully: current again, and index.md as after the first success
    run_pipeline(plan)
    assert index.read_text() == all_current


def test_the_sweeps_a_notebook_reads_are_trained_just_before_it_and_a_failed_run_fails_it(tmp_path, monkeypatch,
                                                                                             capsys):
    config = write_yaml(tmp_path, f"runs: {{a: {{EPOCHS: 1}}}}\n{ONE_SWEEP}notebooks:\n"
                                  "  - {notebook: 07_vocabulary.ipynb, sweeps: [s]}\n"
                                  "  - {notebook: 02_mean_drift.ipynb, run: a}\n")
    calls = []

    def fake_papermill(notebook, executed, parameters, cwd, log_output):
        calls.append((notebook, parameters["RUN_DIR"]))
        if "broken" in calls:
            raise RuntimeError("kernel died")
        write_results(parameters.get("OUT_DIR") or Path(parameters["RUN_DIR"]) / "01_train", {"figures": []})

    monkeypatch.setattr(executing, "papermill_execute", fake_papermill)
    monkeypatch.setattr(sweeping, "papermill_execute", fake_papermill)
    for module in (executing, sweeping):
        monkeypatch.setattr(module, "kernel_argv", lambda: [sys.executable])
    monkeypatch.setattr(RunFolder, "is_complete", lambda folder, config: "broken" not in calls)
    assert main(["--config", str(config)]) == 0
    sweep_run = str(tmp_path / "runs" / "sweeps" / "tiny" / "epochs=1,seed=0")
    assert calls == [("01_train.ipynb", str(tmp_path / "runs" / "a")), ("01_train.ipynb", sweep_run),
                     ("07_vocabulary.ipynb", str(tmp_path / "runs" / "07_vocabulary")),
                     ("02_mean_drift.ipynb", str(tmp_path / "runs" / "a"))]
    assert not (tmp_path / "figures" / "ablations").exists()  # the notebook shows the sweep, not a table

    calls[:] = ["broken"]  # the sweep's run now fails: so does 07, before it runs, naming the run's notebook
    assert main(["--config", str(config), "--only", "07"]) == 1
    err = capsys.readouterr().err
    assert ("07_vocabulary.ipynb (run '07_vocabulary') failed: sweep run tiny/epochs=1,seed=0 failed: "
            "RuntimeError: kernel died") in err
    assert f"the traceback is in {sweep_run}/01_train.ipynb" in err and len(calls) == 2
    assert "| 07_vocabulary | `notebooks/07_vocabulary.ipynb` |" in (tmp_path / "figures" / "index.md").read_text()
    with pytest.raises(ValueError, match="needs train_sweeps"):
        run_pipeline(make_plan(config, only=["07"]))


def test_notebook_option_executes_one_notebook_with_its_parameters_and_fails_with_status_1(tmp_path, monkeypatch,
                                                                                         capsys):
    seen = {}

    def fake_papermill(notebook, executed, parameters, cwd, log_output):
        seen.update(parameters, executed=executed)
        if parameters.get("DETECTION_IMAGES") == 0:
            raise RuntimeError("kernel died")

    monkeypatch.setattr(executing, "papermill_execute", fake_papermill)
    monkeypatch.setattr(executing, "kernel_argv", lambda: [sys.executable])
    args = ["--config", str(FIGURES_YAML), "--runs-dir", str(tmp_path), "--tiny", "--notebook", "07_vocabulary.ipynb",
            "-p", "TRACKING_SWEEP", "", "-p", "FIGURES_DIR", "figures/vocabulary", "-p", "DETECTION_IMAGES", "2"]
    assert main(args) == 0
    assert seen["executed"] == REPO / "runs" / "vocabulary" / "07_vocabulary.ipynb"  # the notebook's RUN_DIR
    assert (seen["TRACKING_SWEEP"], seen["DETECTION_IMAGES"], seen["FIGURES_DIR"]) == ("", 2, str(REPO / "figures" /
                                                                                                 "vocabulary"))
    assert (seen["CONFIG"], seen["RUNS_DIR"], seen["TINY"]) == (str(FIGURES_YAML), str(tmp_path), True)
    assert "HEADS_SWEEP" not in seen  # its own default
    assert main(args[:-1] + ["0"]) == 1
    assert "07_vocabulary.ipynb (run 'vocabulary') failed: RuntimeError: kernel died" in capsys.readouterr().err
    for bad, message in [(["-p", "TINY", "True"], "set from --config"), (["-p", "NOPE", "1"], "no such parameter"),
                         (["-p", "DETECTION_IMAGES", "two"], "not a Python literal"), (["--only", "02"], "--only")]:
        assert main(args + bad) == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_pipeline_writes_figures_index_and_metrics(tmp_path, capsys):
    # 03_embeddings (UMAP) is covered by test_notebooks; everything else of figures.yaml runs here.
    args = ["--config", str(FIGURES_YAML), "--tiny", "--runs-dir", str(tmp_path), "--only", "01", "--only", "02",
            "--only", "04", "--threads", "1"]  # one thread per kernel: see test_notebooks
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[1/5] dlde: 01_train.ipynb ..." in out and "total wall time" in out
    assert re.search(r"\[5/5\] sigmoid: 04_inference.ipynb done in [\d.]+ s", out)
    assert re.search(r"^  dlde: epoch 1/1, train loss [\d.]+, val loss [\d.]+, AP [\d.]+; .+ elapsed, about 0 s left$",
                     out, re.MULTILINE)  # progress while the notebook trains, one line per epoch
    assert "\r" not in out and re.search(r"^sigmoid: 04_inference.ipynb +done +(\d+ min )?\d+ s$", out, re.MULTILINE)
    assert re.search(r"^total +(\d+ min )?\d+ s$", out, re.MULTILINE)  # the summary table

    figures = tmp_path / "tiny" / "figures"
    index = (figures / "index.md").read_text()
    listed = re.findall(r"\| \[(\w+)\]\(\1\.png\)", index)
    expected = ["train_curves", "val_detections", "sigmoid_train_curves", "sigmoid_val_detections",
                "mean_drift", "mean_cosines", "concentration", "inference", "sigmoid_inference"]
    assert [name for name in listed if name in expected] == expected  # in pipeline order (notebooks may add more)
    for name in listed:
        assert (figures / f"{name}.png").exists() and (figures / f"{name}.pdf").exists()
    assert "`notebooks/02_mean_drift.ipynb`" in index and 'PRESET=`"tiny"`' in index
    metrics = (figures / "metrics.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in metrics[2:] if row.startswith("|")] == ["dlde", "sigmoid"]
    assert metrics[-1].startswith("<sub>commit ")  # the provenance line (dlde.tables.write_table_file)
    assert (tmp_path / "tiny" / "sigmoid" / "04_inference.ipynb").exists()
    # A rerun finds the identical finished runs in their folders and reuses them (no retraining).
    checkpoint = tmp_path / "tiny" / "dlde" / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    assert main(args[:-6] + ["--threads", "1"]) == 0  # only 01: both runs again
    assert checkpoint.stat().st_mtime_ns == before


@pytest.mark.slow
def test_tiny_pipeline_trains_the_sweep_07_reads_then_07_draws_it(tmp_path, capsys):
    # 07 alone (about a minute): the three tiny runs of its sweep, then the notebook on them; then as
    # make vocabulary draws it (--notebook), on the same runs into other folders.
    args = ["--config", str(FIGURES_YAML), "--tiny", "--runs-dir", str(tmp_path), "--threads", "1"]
    assert main(args + ["--only", "07"]) == 0
    out = capsys.readouterr().out
    sweep = make_sweep_plan(FIGURES_YAML, ["vocabulary_figures"], tiny=True, runs_dir=tmp_path)
    for key, run in sweep.runs.items():
        assert f"  {key}: epoch 1/1, " in out and RunFolder(sweep.run_dir(key)).is_complete(run.config)
    assert re.search(r"\[1/1\] 07_vocabulary: 07_vocabulary.ipynb done in [\d.]+ s \(6 figures\)", out)
    results = json.loads((tmp_path / "tiny" / "07_vocabulary" / "07_vocabulary" / "results.json").read_text())
    rows = results["rows"]["vocabulary_figures"]
    assert [(r["arm"], r["head"], r["n"]) for r in rows] == [(f"C=100,{h}", h, 1) for h in ("dlde", "retinanet",
                                                                                             "prototypes")]
    assert results["sweeps"] == {"vocabulary_figures": {"runs": 3, "missing": []}}
    drawn = ["vocabulary_ap", "vocabulary_epoch_time", f"vocabulary_class_frequency_{rows[0]['classes']}"]
    expected = drawn + [f"vocabulary_detections_{r['head']}" for r in rows]
    figures = tmp_path / "tiny" / "figures"
    assert results["figures"] == expected == re.findall(r"\| \[(\w+)\]\(\1\.png\)", (figures / "index.md").read_text())
    for name in expected:
        assert (figures / f"{name}.png").stat().st_size > 0 and (figures / f"{name}.pdf").stat().st_size > 0

    alone = ["--notebook", "07_vocabulary.ipynb", "-p", "HEADS_SWEEP", "vocabulary_figures", "-p", "TRACKING_SWEEP", "",
             "-p", "SCREEN_SWEEP", "", "-p", "DETECTION_IMAGES", "0", "-p", "RUN_DIR", str(tmp_path / "alone"),
             "-p", "FIGURES_DIR", str(tmp_path / "alone" / "figures")]
    assert main(args + alone) == 0
    assert json.loads((tmp_path / "alone" / "07_vocabulary" / "results.json").read_text())["figures"] == drawn
    assert sorted(p.stem for p in (tmp_path / "alone" / "figures").glob("*.png")) == sorted(drawn)


@pytest.mark.slow
def test_a_failing_notebook_stops_with_exit_status_1_and_names_the_executed_copy(tmp_path, capsys):
    config = write_yaml(tmp_path, "runs:\n  bad:\n    OVERRIDES_JSON: '{\"no_such_key\": 1}'\n"
                                  "notebooks:\n  - {notebook: 02_mean_drift.ipynb, run: bad}\n")
    assert main(["--config", str(config), "--tiny", "--threads", "1"]) == 1
    captured = capsys.readouterr()
    executed = tmp_path / "runs" / "tiny" / "bad" / "01_train.ipynb"
    assert str(executed) in captured.err and "no_such_key" in captured.err
    assert "02_mean_drift" not in captured.out  # stopped at the first failure
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "ValueError"
    assert not (tmp_path / "runs" / "tiny" / "bad" / "01_train" / "results.json").exists()
    index = (tmp_path / "runs" / "tiny" / "figures" / "index.md").read_text()
    assert "## Not current" in index and "| bad | `notebooks/01_train.ipynb` |" in index
    assert re.search(r"^bad: 01_train.ipynb +FAILED +(\d+ min )?\d+ s$", captured.out, re.MULTILINE)


@pytest.mark.slow
def test_a_run_with_nproc_trains_under_torchrun_and_the_notebook_reloads_it(tmp_path, capsys):
    config = write_yaml(tmp_path, "runs:\n  ddp:\n    nproc: 2\n    OVERRIDES_JSON: '{\"batch_size\": 4}'\n")
    assert main(["--config", str(config), "--tiny", "--threads", "1"]) == 0
    run_dir = tmp_path / "runs" / "tiny" / "ddp"
    record = json.loads((run_dir / "config.json").read_text())
    assert record["environment"]["world_size"] == 2 and record["config"]["batch_size"] == 4
    assert (run_dir / "01_train.torchrun.log").exists()
    assert json.loads((run_dir / "01_train" / "results.json").read_text())["epochs"] == 1
    assert "dlde.train" in " ".join(torchrun_command(train_config({"PRESET": "tiny"}), "tiny", 2))


def test_nproc_must_be_a_positive_integer(tmp_path):
    config = write_yaml(tmp_path, "runs:\n  ddp:\n    nproc: 0\n")
    with pytest.raises(ValueError, match="nproc must be a positive integer"):
        make_plan(config)


def test_notebook_kernels_get_one_thread_unless_told_otherwise(monkeypatch, tmp_path):
    """The analysis in a notebook moves in its last digits with the thread count (a UMAP layout, a
    PDF's coordinates): every entry point pins the kernels' threads the same way."""
    from dlde.pipeline import cli

    seen = []

    def fake_run_notebook(plan, notebook, values, log_output):
        seen.append(os.environ.get("OMP_NUM_THREADS"))
        return tmp_path / "executed.ipynb"

    monkeypatch.setattr(cli, "run_notebook", fake_run_notebook)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the caller's setting does not leak into the kernels
    arguments = ["--config", str(FIGURES_YAML), "--tiny", "--runs-dir", str(tmp_path),
                 "--notebook", "02_mean_drift.ipynb"]
    assert main(arguments) == 0
    assert main(arguments + ["--threads", "2"]) == 0
    assert seen == [str(cli.KERNEL_THREADS), "2"] and cli.KERNEL_THREADS == 1
    assert os.environ["OMP_NUM_THREADS"] == "7"  # restored afterwards
    # the Python entry points pin the same default as the command line
    assert inspect.signature(run_pipeline).parameters["threads"].default == cli.KERNEL_THREADS
    assert inspect.signature(sweeping.run_sweeps).parameters["threads"].default == cli.KERNEL_THREADS


def test_one_translation_from_a_figures_yaml_entry_to_a_train_config(tmp_path):
    """Upper-case parameters of 01_train, lower-case TrainConfig fields and OVERRIDES_JSON of an entry
    reach one TrainConfig by one path: split_entry -> run_parameters -> train_config, the function
    the notebook calls with its globals() (all parameters given) and the pipeline with a few."""
    entry = {"PRESET": "tiny", "EPOCHS": 2, "OVERRIDES_JSON": '{"lr": 0.02}', "means_lr": 0.05}
    parameters, fields = split_entry(entry, "sweep s arm a")
    assert parameters == {"PRESET": "tiny", "EPOCHS": 2, "OVERRIDES_JSON": '{"lr": 0.02}'}
    assert fields == {"means_lr": 0.05}
    values = run_parameters(parameters, fields)
    assert values["OVERRIDES_JSON"] == '{"lr": 0.02, "means_lr": 0.05}'
    config = train_config(values)
    assert (config.epochs, config.lr, config.head_options["means_lr"]) == (2, 0.02, 0.05)
    notebook_globals = notebook_defaults("01_train.ipynb") | values | {"config": None, "np": None}
    assert train_config(notebook_globals) == config  # other names of a namespace are not read
    assert run_parameters({"EPOCHS": 2}) == {"EPOCHS": 2}  # nothing to fold: OVERRIDES_JSON not added
    with pytest.raises(ValueError, match="sweep s arm a has 'bogus', neither a parameter of 01_train.ipynb"):
        split_entry({"bogus": 1}, "sweep s arm a")
