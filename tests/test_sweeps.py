"""Sweeps of figures.yaml: planning, skipping, resuming, failures, aggregation, progress lines."""
import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dlde.analysis.stats import t_interval, t_quantile
from dlde.analysis.sweep_stats import final_kappa, min_angle_deg, run_summary, summarize_arms
from dlde.files import lock_holder, release_lock, try_lock
from dlde.pipeline import execute
from dlde.pipeline import sweeps as sweeps_module
from dlde.pipeline.cli import main
from dlde.pipeline.execute import NotebookFailed, run_pipeline
from dlde.pipeline.plan import STEP_FILE, confined, make_plan
from dlde.pipeline.progress import EpochProgress, Summary
from dlde.pipeline.rename_runs import apply_moves, planned_moves
from dlde.pipeline.rename_runs import main as rename_main
from dlde.pipeline.reports import write_index
from dlde.pipeline.run_config import train_config
from dlde.pipeline.sweeps import SWEEP_LOCK, aggregate_sweeps, make_sweep_plan, run_key, run_sweeps
from dlde.plots.sweep_plots import plot_sweep
from dlde.reports.sweeps import sweep_table, write_sweep
from dlde.train import RunFolder

REPO = Path(__file__).resolve().parents[1]
FIGURES_YAML = REPO / "figures.yaml"


def write_yaml(folder: Path, text: str) -> Path:
    path = folder / "figures.yaml"
    path.write_text(text)
    return path


def make_run(folder: Path, *, ap: float, means=None, kappa=None, epochs: int = 2) -> Path:
    """A hand-made finished run folder: metrics.jsonl and, for DLDENet, the histories."""
    folder.mkdir(parents=True)
    rows = [{"epoch": e, "train_loss": 1.0 / e, "AP": ap - 0.1 * (epochs - e), "AP50": ap + 0.1,
             "AP75": None if e < epochs else ap - 0.1} for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.json").write_text(json.dumps({"config": {"epochs": epochs}}))
    if means is not None:
        np.save(folder / "means_history.npy", np.stack([np.zeros_like(means), means]))
        np.save(folder / "kappa_history.npy", np.asarray(kappa, dtype=np.float64))
    return folder


# ------------------------------------------------------------------------------- statistics
def test_t_quantiles_match_the_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    with pytest.raises(ValueError, match="dof"):
        t_quantile(0.975, 0)


def test_t_interval_of_one_two_three_by_hand():
    stats = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n), sd = 1
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(2.0) and stats["sd"] == pytest.approx(1.0)
    assert stats["low"] == pytest.approx(2.0 - half) and stats["high"] == pytest.approx(2.0 + half)
    assert stats["high"] - stats["low"] == pytest.approx(4.96828, abs=1e-5)


def test_t_interval_skips_missing_values_and_needs_two_for_a_spread():
    assert t_interval([5.0, None, float("nan")])["n"] == 1
    one = t_interval([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["sd"]) and math.isnan(one["low"])
    none = t_interval([])
    assert none["n"] == 0 and math.isnan(none["mean"])
    equal = t_interval([0.5, 0.5, 0.5, 0.5])
    assert equal["sd"] == 0.0 and equal["low"] == equal["high"] == 0.5


def test_min_angle_between_means_by_hand():
    means = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # 90 degrees, 45 and 45
    assert min_angle_deg(means) == pytest.approx(45.0)
    assert min_angle_deg(np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])) == pytest.approx(180.0)
    collapsed = np.array([[1.0, 0.0], [1.0, 1e-9], [0.0, 1.0]])
    assert min_angle_deg(collapsed) == pytest.approx(0.0, abs=1e-6)
    assert min_angle_deg(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])) == pytest.approx(90.0)  # zero mean left out
    assert math.isnan(min_angle_deg(np.array([[1.0, 0.0]])))
    with pytest.raises(ValueError, match=r"\(C, d\)"):
        min_angle_deg(np.zeros(3))


def test_final_kappa_is_the_class_mean_of_the_last_row():
    assert final_kappa([[1.0, 2.0], [3.0, np.nan]]) == 3.0
    assert final_kappa([[1.0, 2.0], [4.0, 6.0]]) == 5.0
    assert math.isnan(final_kappa([[np.nan, np.nan]]))


# -------------------------------------------------------------------------------- run folders
def test_run_summary_reads_the_last_epoch_and_the_histories(tmp_path):
    means = np.array([[1.0, 0.0], [1.0, 1.0]])
    dlde = run_summary(make_run(tmp_path / "a", ap=0.8, means=means, kappa=[[1.0, 1.0], [10.0, 20.0], [30.0, 50.0]]))
    ece = dlde.pop("ECE")
    assert math.isnan(ece)  # no 01_train results.json in this folder
    assert dlde == pytest.approx({"AP": 0.8, "AP50": 0.9, "AP75": 0.7, "min_angle_deg": 45.0, "kappa": 40.0})
    sigmoid = run_summary(make_run(tmp_path / "b", ap=0.6))
    assert sigmoid["AP"] == pytest.approx(0.6) and math.isnan(sigmoid["min_angle_deg"]) and math.isnan(sigmoid["kappa"])
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="no finished epoch"):
        run_summary(tmp_path / "c")
    (tmp_path / "c" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2"):
        run_summary(tmp_path / "c")


def test_summarize_and_write_a_sweep_on_hand_made_runs(tmp_path):
    means = np.array([[1.0, 0.0], [0.0, 1.0]])
    runs = {"dlde": [make_run(tmp_path / f"d{i}", ap=ap, means=means, kappa=[[1.0, 1.0], [2.0, 4.0]])
                     for i, ap in enumerate([0.1, 0.2, 0.3])],
            "retinanet": [make_run(tmp_path / f"r{i}", ap=ap) for i, ap in enumerate([0.5, 0.7])]
            + [tmp_path / "unfinished", make_run(tmp_path / "interrupted", ap=0.9)]}
    (tmp_path / "interrupted" / "config.json").write_text(json.dumps({"config": {"epochs": 3}}))  # 2 of 3 epochs
    rows = summarize_arms({arm: [run_summary(d) for d in dirs if RunFolder(d).is_finished()]
                           for arm, dirs in runs.items()})
    assert [r["arm"] for r in rows] == ["dlde", "retinanet"] and [r["n"] for r in rows] == [3, 2]
    assert rows[0]["AP_mean"] == pytest.approx(0.2) and rows[0]["AP_sd"] == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert (rows[0]["AP_low"], rows[0]["AP_high"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert rows[0]["min_angle_deg_mean"] == pytest.approx(90.0) and rows[0]["kappa_mean"] == pytest.approx(3.0)
    assert rows[1]["AP_high"] - rows[1]["AP_mean"] == pytest.approx(12.706204736 * 0.1414213562 / math.sqrt(2))
    assert math.isnan(rows[1]["min_angle_deg_mean"])

    table = sweep_table(rows)
    dlde_line, retinanet_line = table.splitlines()[2:]
    assert dlde_line.startswith("| dlde | 3 | 0.200 ± 0.100 [")
    assert retinanet_line.endswith("|  |  |")  # no angle, no kappa for the sigmoid head

    written = write_sweep("demo", runs, tmp_path / "ablations", parameters={"seeds": [0, 1, 2]},
                          display_root=tmp_path)
    for suffix in ("md", "csv", "json", "png", "pdf"):
        assert written[suffix].exists() and written[suffix].stat().st_size > 0
    with written["csv"].open() as handle:
        records = list(csv.DictReader(handle))
    assert float(records[0]["AP_mean"]) == pytest.approx(0.2) and records[1]["kappa_mean"] == ""
    record = json.loads(written["json"].read_text())
    assert record["runs"]["dlde"] == ["d0", "d1", "d2"] and record["parameters"] == {"seeds": [0, 1, 2]}


def test_sweep_figure_has_a_panel_per_available_metric_with_the_seeds(tmp_path):
    import matplotlib.pyplot as plt

    seeds = {"a": [{"AP": 0.1}, {"AP": 0.3}], "b": [{"AP": 0.5}, {"AP": 0.5}]}
    rows = summarize_arms(seeds)
    fig = plot_sweep(rows, "demo", seeds)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["AP"]  # only AP has data here
    (bars,) = [c for c in visible[0].containers]
    low, high = bars.lines[1][0].get_ydata()[0], bars.lines[1][1].get_ydata()[0]  # the caps of arm 'a'
    assert (low, high) == pytest.approx((rows[0]["AP_low"], rows[0]["AP_high"]))
    points = [line for line in visible[0].lines if line.get_marker() == "."]
    assert sorted(np.concatenate([p.get_ydata() for p in points]).tolist()) == [0.1, 0.3, 0.5, 0.5]
    plt.close(fig)


# ---------------------------------------------------------------------------------- planning
def test_the_repository_sweeps_share_the_default_arm_across_sweeps(tmp_path):
    plan = make_sweep_plan(FIGURES_YAML, runs_dir=tmp_path)
    by_name = {s.name: s for s in plan.sweeps}
    assert set(by_name) >= {"means_lr", "starting_means", "means_update", "embedding_size", "headline"}
    default = by_name["means_lr"].arms["means_lr=0.003"]  # the preset's value: the shared arm
    assert default == [f"digits/epochs=4,threads=1,seed={s}" for s in range(3)]
    assert default == by_name["embedding_size"].arms["embedding_size=32"]
    assert default == by_name["starting_means"].arms["orthogonal"]
    assert default == by_name["means_update"].arms["means_update=batch"]
    retinanet = [f"digits/model=retinanet,threads=1,seed={s}" for s in range(5)]  # 16 epochs: the preset's
    assert by_name["headline"].arms["retinanet"] == retinanet
    # The digits preset centers DLDENet's embeddings; the headline keeps DLDENet without the center beside it.
    assert plan.runs["digits/threads=1,seed=0"].config["head_options"]["center_momentum"] == 0.9
    assert by_name["headline"].arms["dlde,uncentered"] == [f"digits/center_momentum=0,threads=1,seed={s}"
                                                           for s in range(5)]
    assert len(plan.runs) == len({k for s in plan.sweeps for keys in s.arms.values() for k in keys})
    run = plan.runs["digits/epochs=4,means_lr=0.01,threads=1,seed=1"]
    assert run.config["head_options"]["means_lr"] == 0.01 and run.config["seed"] == 1 and run.config["epochs"] == 4
    values = plan.parameters("digits/epochs=4,means_lr=0.01,threads=1,seed=1", resume=False)
    assert values["RUN_DIR"] == str(tmp_path / "sweeps" / "digits" / "epochs=4,means_lr=0.01,threads=1,seed=1")
    assert json.loads(values["OVERRIDES_JSON"]) == {"means_lr": 0.01, "threads": 1} and values["SEED"] == 1
    assert values["FIGURES_DIR"].startswith(values["RUN_DIR"])  # per-run figures never touch figures/


def test_tiny_sweeps_use_the_tiny_preset_under_runs_tiny(tmp_path):
    plan = make_sweep_plan(FIGURES_YAML, ["means_update"], tiny=True, runs_dir=tmp_path)
    assert plan.sweeps_dir == tmp_path / "tiny" / "sweeps"
    assert plan.ablations_dir == tmp_path / "tiny" / "figures" / "ablations"
    assert sorted(plan.runs) == [f"tiny/epochs=1,means_update=manual,threads=1,seed={s}" for s in range(3)] + \
        [f"tiny/epochs=1,threads=1,seed={s}" for s in range(3)]


@pytest.mark.parametrize("text, message", [
    ("sweeps: {s: {grid: {means_lr: [0.1]}}}", "needs 'seeds'"),
    ("sweeps: {s: {grid: {means_lr: [0.1]}, seeds: [0, 0]}}", "distinct integers"),
    ("sweeps: {s: {seeds: [0]}}", "exactly one of 'grid'"),
    ("sweeps: {s: {grid: {a: [1]}, arms: {b: {}}, seeds: [0]}}", "exactly one of 'grid'"),
    ("sweeps: {s: {base: {SEED: 3}, grid: {means_lr: [0.1]}, seeds: [0]}}", "sets 'SEED'"),
    ("sweeps: {s: {grid: {means_lrr: [0.1]}, seeds: [0]}}", "'means_lrr', neither"),
    ("sweeps: {s: {grid: {means_lr: []}, seeds: [0]}}", "non-empty lists"),
    ("sweeps: {s: {grid: {MODEL: [nope]}, seeds: [0]}}", "MODEL must be one of"),  # the parameter it sets
    ("sweeps: {s: {arms: {../x: {}}, seeds: [0]}}", "arm name '../x'"),
    ("sweeps: {../../escaped: {grid: {means_lr: [0.1]}, seeds: [0]}}", "sweep name '../../escaped'"),
    ("sweeps: {s: {grid: {means_lr: [0.1]}, seeds: [0], seed: 1}}", "unknown keys"),
])
def test_a_bad_sweep_fails_before_anything_runs(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        make_sweep_plan(write_yaml(tmp_path, text))


def test_unknown_sweep_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--sweeps \['nope'\]"):
        make_sweep_plan(FIGURES_YAML, ["nope"], runs_dir=tmp_path)


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", ".hidden", "a/b"])
def test_run_names_cannot_write_outside_runs_dir(tmp_path, name, capsys):
    config = write_yaml(tmp_path, f"runs:\n  {json.dumps(name)}: {{EPOCHS: 1}}\n")
    assert main(["--config", str(config), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "must be letters, digits" in err and name in err
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", "..", "a/../.."])
def test_confined_refuses_paths_outside_their_folder(tmp_path, name):
    with pytest.raises(ValueError, match="would write outside"):
        confined(tmp_path / "runs", name)
    assert confined(tmp_path / "runs", "a/b") == tmp_path / "runs" / "a" / "b"


def test_malformed_yaml_gives_one_line_naming_the_file(tmp_path, capsys):
    config = write_yaml(tmp_path, "runs:\n  a: {EPOCHS: 1\n  b: [\n")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(config) in err and "not valid YAML at line" in err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such pipeline file" in capsys.readouterr().err
    assert main(["--config", str(write_yaml(tmp_path, "- a\n- b\n"))]) == 2
    assert "expected a mapping" in capsys.readouterr().err


# ---------------------------------------------------------------------------- folder names
def test_run_folder_names_flatten_the_head_options_and_name_only_what_changes_numbers():
    means_lr = train_config({"PRESET": "digits", "EPOCHS": 4, "SEED": 1, "OVERRIDES_JSON": '{"means_lr": 0.01}'})
    assert means_lr.head_options["means_lr"] == 0.01  # nested in the config ...
    assert run_key(means_lr.to_dict(), "digits") == "digits/epochs=4,means_lr=0.01,seed=1"  # ... flat in the name
    flat = {k: v for k, v in means_lr.to_dict().items() if k != "head_options"} | means_lr.head_options
    assert run_key(flat, "digits") == "digits/epochs=4,means_lr=0.01,seed=1"  # an old record's flat fields
    moved = means_lr.updated({"run_dir": "elsewhere", "data_root": "d", "num_workers": 3, "threads": 1})
    assert run_key(moved.to_dict(), "digits") == "digits/epochs=4,means_lr=0.01,threads=1,seed=1"
    # The means_update every 01_train config carries, at its default, and the options another head
    # would take, are not differences: the sigmoid and prototype heads are named by their model only.
    for model in ("retinanet", "prototypes"):
        config = train_config({"PRESET": "digits", "MODEL": model, "SEED": 0, "MEANS_UPDATE": "batch"})
        assert run_key(config.to_dict(), "digits") == f"digits/model={model},seed=0"
    config = train_config({"PRESET": "tiny", "EPOCHS": 2, "SEED": 0,
                           "OVERRIDES_JSON": '{"embedding_size": 4, "prior": 0.01}'})
    assert run_key(config.to_dict(), "tiny") == "tiny/embedding_size=4,seed=0"  # prior: not an option of dlde


# -------------------------------------------------------------------------------- progress
def test_epoch_progress_prints_one_line_per_new_epoch_of_this_run_only(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"epoch": 1, "train_loss": 9.0}\n')  # an old run's file
    os.utime(metrics, ns=(time.time_ns() - 10 ** 10,) * 2)
    lines = []
    with EpochProgress(tmp_path, 3, "demo", interval=60, echo=lines.append) as progress:
        progress.poll()
        assert lines == []  # written before the watch started
        metrics.write_text('{"epoch": 1, "train_loss": 0.5, "val_loss": 0.25, "AP": 0.125}\n{"epoch": 2, "train')
        progress.poll()
        metrics.write_text('{"epoch": 1, "train_loss": 0.5}\n{"epoch": 2, "train_loss": 0.4}\n')
    assert len(lines) == 2 and all("\r" not in line for line in lines)
    assert lines[0].startswith("  demo: epoch 1/3, train loss 0.5000, val loss 0.2500, AP 0.125; ")
    assert "elapsed, about" in lines[0] and "left" in lines[0]
    assert lines[1].startswith("  demo: epoch 2/3, train loss 0.4000; ")


def test_summary_table_lists_every_step_and_the_total():
    summary = Summary()
    summary.add("a", "trained", 61.0)
    summary.add("bb", "skipped", 0.0)
    lines = summary.table().splitlines()
    assert lines[0].split() == ["step", "status", "time"]
    assert lines[2].split() == ["a", "trained", "1", "min", "01", "s"]
    assert lines[3].split() == ["bb", "skipped", "0", "s"]
    assert lines[-1].split() == ["total", "1", "min", "01", "s"]


# ------------------------------------------------------------------ index after a failure
def test_a_failed_step_is_not_listed_with_its_old_figures(tmp_path, monkeypatch):
    config = write_yaml(tmp_path, "runs:\n  a: {EPOCHS: 1}\nnotebooks:\n  - {notebook: 02_mean_drift.ipynb, run: a}\n")
    plan = make_plan(config, only=["02"])
    step = plan.steps[0]
    out_dir = plan.out_dir(step)
    out_dir.mkdir(parents=True)
    (out_dir / "results.json").write_text(json.dumps({"figures": ["mean_drift"]}))  # an earlier success
    (out_dir / STEP_FILE).write_text(json.dumps({"run": "a", "notebook": step.notebook, "parameters": {}}))
    assert "[mean_drift](mean_drift.png)" in write_index(plan).read_text()

    def fail(*args, **kwargs):
        raise RuntimeError("kernel died")

    monkeypatch.setattr(execute, "papermill_execute", fail)
    monkeypatch.setattr(execute, "kernel_argv", lambda: [sys.executable])
    with pytest.raises(NotebookFailed, match="kernel died"):
        run_pipeline(plan)
    index, _, stale = (plan.figures_dir / "index.md").read_text().partition("## Stale figures")
    assert "[mean_drift](mean_drift.png)" not in index and "[mean_drift](mean_drift.png)" in stale
    assert "## Not current" in index and "| a | `notebooks/02_mean_drift.ipynb` |" in index


def test_aggregating_sweeps_keeps_the_figure_list_of_the_index(tmp_path):
    # A sweeps-only invocation (e.g. --tables-only on a clone without the figure runs) rewrites
    # the Sweeps section only; the figures listed by the last figures run stay.
    figures_dir = tmp_path / "figures"
    figures_dir.mkdir()
    index = figures_dir / "index.md"
    index.write_text("# Figures\n\n| figure | run |\n|---|---|\n| [mean_drift](mean_drift.png) | dlde |\n\n"
                     "## Sweeps (old)\n\nold rows\n")
    plan = make_sweep_plan(FIGURES_YAML, ["means_update"], tiny=True, runs_dir=tmp_path / "runs",
                           figures_dir=figures_dir)
    aggregate_sweeps(plan, echo=lambda line: None)
    text = index.read_text()
    assert "| [mean_drift](mean_drift.png) | dlde |" in text
    assert "old rows" not in text and text.count("## Sweeps") == 1 and "[means_update.md]" in text


def test_a_folder_holding_another_configuration_is_refused_untouched_unless_forced(tmp_path, monkeypatch):
    # The run's folder name comes from its config; a folder of that name holding another config
    # (e.g. trained before a preset changed) is the user's result, never silently replaced.
    plan = make_sweep_plan(FIGURES_YAML, ["means_update"], tiny=True, runs_dir=tmp_path)
    key = next(iter(plan.runs))
    folder = plan.run_dir(key)
    folder.mkdir(parents=True)
    config = plan.runs[key].config
    saved = dict(config, head_options={**config["head_options"], "embedding_size": 999})
    (folder / "config.json").write_text(json.dumps({"config": saved, "class_names": [], "category_ids": []}))
    before = (folder / "config.json").read_bytes()
    started = []
    monkeypatch.setattr(sweeps_module, "papermill_execute", lambda *args, **kwargs: started.append(args))
    monkeypatch.setattr(sweeps_module, "kernel_argv", lambda: [sys.executable])
    lines = []
    failures = run_sweeps(plan, echo=lines.append, aggregate=False)
    failed = {f.key: f.reason for f in failures}
    assert "embedding_size: 999 -> 8" in failed[key] and "--force" in failed[key]
    assert (folder / "config.json").read_bytes() == before and not (folder / SWEEP_LOCK).exists()
    assert len(started) == len(plan.runs) - 1  # every other run was started
    started.clear()
    run_sweeps(plan, force=True, echo=lines.append, aggregate=False)
    assert len(started) == len(plan.runs)  # forced: this one too (the trainer overwrites its run files)
    assert json.loads(started[0][2]["OVERRIDES_JSON"])["overwrite"] is True


# ------------------------------------------------------------------------------ end to end
TINY_SWEEPS = """\
runs_dir: runs
figures_dir: figures
sweeps:
  size:
    base: {PRESET: tiny, EPOCHS: 1, DETECTION_IMAGES: 1, DATA_ROOT: data}
    grid: {embedding_size: [4, 8]}
    seeds: [0]
  shared:
    base: {PRESET: tiny, EPOCHS: 1, DETECTION_IMAGES: 1, DATA_ROOT: data}
    arms:
      default: {}
      broken: {anchor_sizes: [8.0, 16.0, 32.0]}  # valid alone, refused with the preset's two levels
    seeds: [0]
"""


@pytest.mark.slow
def test_a_tiny_sweep_trains_once_then_skips_and_a_failing_arm_does_not_stop_the_others(tmp_path, capsys):
    config = write_yaml(tmp_path, TINY_SWEEPS)
    args = ["--config", str(config), "--sweeps", "--threads", "1"]
    assert main(args) == 1  # the broken arm fails
    captured = capsys.readouterr()
    runs = tmp_path / "runs" / "sweeps" / "tiny"
    broken = runs / "anchor_sizes=8-16-32,epochs=1,seed=0"
    assert f"the traceback is in {broken / '01_train.ipynb'}" in captured.err
    assert "needs one size per pyramid level" in captured.err
    trained = sorted(p.name for p in runs.iterdir() if (p / "metrics.jsonl").exists())
    assert trained == ["embedding_size=4,epochs=1,seed=0", "epochs=1,seed=0"]  # 'default' shared with size 8
    assert captured.out.count(": 01_train.ipynb, training (1 epochs)") == 3
    assert "epoch 1/1, train loss" in captured.out and "step " in captured.out and "FAILED" in captured.out
    ablations = tmp_path / "figures" / "ablations"
    assert {p.name for p in ablations.iterdir()} >= {"size.md", "size.csv", "size.png", "size.pdf", "shared.md"}
    size = (ablations / "size.md").read_text()
    assert "| embedding_size=4 | 1 | " in size and "| embedding_size=8 | 1 | " in size
    assert "| broken | 0 |" in (ablations / "shared.md").read_text()
    index = (tmp_path / "figures" / "index.md").read_text()
    assert "[size.md](ablations/size.md)" in index and "embedding_size: `[4, 8]`" in index

    stamps = {p: p.stat().st_mtime_ns for name in trained for p in (runs / name).rglob("*") if p.is_file()}
    assert main(args) == 1  # trains nothing; the broken arm is tried (and fails) again
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 2 and out.count("training (1 epochs)") == 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no completed run was touched

    notes = runs / "epochs=1,seed=0" / "my_notes.txt"  # a user's file in a run folder
    notes.write_text("keep me")
    assert main(args[:3] + ["size", "--threads", "1", "--force"]) == 0
    assert capsys.readouterr().out.count("training (1 epochs)") == 2
    assert notes.read_text() == "keep me"  # retraining replaces the run's files, nothing else
    record = json.loads((runs / "epochs=1,seed=0" / "config.json").read_text())
    assert record["config"]["overwrite"] is True and (runs / "epochs=1,seed=0" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_after_its_last_epoch(tmp_path):
    psutil = pytest.importorskip("psutil")  # installed with ipykernel
    config = write_yaml(tmp_path, TINY_SWEEPS.split("  size:")[0] + (
        "  long:\n    base: {PRESET: tiny, EPOCHS: 3, DETECTION_IMAGES: 1, DATA_ROOT: data}\n"
        "    arms: {only: {}}\n    seeds: [0]\n"))
    command = [sys.executable, "-m", "dlde.pipeline", "--config", str(config), "--sweeps", "--threads", "1"]
    metrics = tmp_path / "runs" / "sweeps" / "tiny" / "epochs=3,seed=0" / "metrics.jsonl"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline and process.poll() is None, "epoch 1 never finished"
            time.sleep(0.05)
    finally:  # kill -9 the pipeline and its kernel (a kernel runs in a session of its own)
        kernels = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGKILL)
        for kernel in kernels:
            try:
                kernel.kill()
            except psutil.NoSuchProcess:
                pass
        process.wait()
        psutil.wait_procs(kernels, timeout=10)
    first = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert 1 <= len(first) < 3

    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming after epoch {len(first)}" in result.stdout
    assert f"epoch {len(first)}/3" not in result.stdout and "epoch 3/3, train loss" in result.stdout
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[:len(first)] == first  # the epochs before the kill were kept, not retrained


def test_max_mean_cosine_shows_a_collapse_and_ece_is_tabulated(tmp_path):
    from dlde.analysis.sweep_stats import collapse_curves, max_mean_cosine, run_summary
    from dlde.plots.sweep_plots import plot_collapse

    spread = np.eye(3, 4)
    collapsed = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    half = np.array([[1.0, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 1.0, 0]])
    zeros = np.zeros((3, 4))  # means never set: no cosine
    curve = max_mean_cosine(np.stack([zeros, spread, half, collapsed]))
    assert np.isnan(curve[0])
    np.testing.assert_allclose(curve[1:], [0.0, 0.6, 1.0], atol=1e-12)
    run = tmp_path / "run"
    (run / "01_train").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "AP": 0.5, "AP50": 0.7, "AP75": 0.4}) + "\n")
    np.save(run / "means_history.npy", np.stack([spread, collapsed]))
    (run / "01_train" / "results.json").write_text(json.dumps({"ECE": 0.125}))
    assert run_summary(run)["ECE"] == 0.125
    curves = collapse_curves({"fast": [run], "empty": [tmp_path / "missing"]})
    assert list(curves) == ["fast"] and curves["fast"].shape == (1, 2)  # the arm without means left out
    fig = plot_collapse(curves)
    assert len(fig.axes[0].lines) == 2  # the arm's curve and the collapse line at 1


@pytest.mark.slow
def test_two_sweeps_share_a_runs_folder_a_run_being_trained_elsewhere_is_skipped(tmp_path, capsys):
    config = write_yaml(tmp_path, TINY_SWEEPS.split("  shared:")[0])
    runs = tmp_path / "runs" / "sweeps" / "tiny"
    held = runs / "embedding_size=4,epochs=1,seed=0" / "sweep.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        held.parent.mkdir(parents=True)
        held.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        assert main(["--config", str(config), "--sweeps", "--threads", "1"]) == 0
        out = capsys.readouterr().out
        assert f"being trained by another sweep (pid {other.pid}" in out and out.count("training (1 epochs)") == 1
        assert not (held.parent / "metrics.jsonl").exists() and held.exists()  # the other's run and lock untouched
        assert not (runs / "epochs=1,seed=0" / "sweep.lock").exists()  # this sweep released its own
    finally:
        other.kill()
        other.wait()
    assert main(["--config", str(config), "--sweeps", "--threads", "1"]) == 0  # its holder died: taken over
    out = capsys.readouterr().out
    assert out.count("training (1 epochs)") == 1 and "complete, skipped" in out
    assert (held.parent / "metrics.jsonl").exists() and not held.exists()


def test_a_lock_file_belongs_to_one_live_process(tmp_path):
    lock = tmp_path / "run" / "sweep.lock"
    assert try_lock(lock) is None and try_lock(lock) is None  # taken, and this process holds it already
    assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    release_lock(lock)
    assert not lock.exists()
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))  # init: alive, not ours
    assert try_lock(lock) == {"pid": 1, "host": socket.gethostname()}
    release_lock(lock)
    assert lock.exists()  # not this process's to release
    lock.write_text(json.dumps({"pid": 1, "host": "another-host"}))
    assert try_lock(lock)["host"] == "another-host"  # another host's process cannot be checked: kept
    lock.write_text("")  # torn by a taker this instant: kept; taken over once stale
    assert try_lock(lock) == {"pid": None, "host": None} == lock_holder(lock)
    os.utime(lock, (time.time() - 60, time.time() - 60))
    assert lock_holder(lock) is None and lock.exists()  # reading frees nothing
    assert try_lock(lock) is None and json.loads(lock.read_text())["pid"] == os.getpid()
    assert lock_holder(lock) == {"pid": os.getpid(), "host": socket.gethostname()}
    release_lock(lock)
    assert lock_holder(lock) is None


# ---------------------------------------------------------------------------- renaming after a preset change
def test_runs_move_to_the_names_the_presets_give_them_now_and_nothing_is_replaced(tmp_path, capsys):
    """A preset change renames runs: the folders swap names, a held one stays, an occupied target refuses."""
    import dataclasses

    from dlde.train.config import PRESETS

    def made(name, **changes):
        folder = tmp_path / "runs" / "sweeps" / "tiny" / name
        folder.mkdir(parents=True)
        config = dataclasses.asdict(PRESETS["tiny"].updated({"seed": 0, **changes}))
        (folder / "config.json").write_text(json.dumps({"config": config}))
        (folder / "notes.txt").write_text(name)  # the user's file travels with the run
        return folder

    # Trained when the preset had 3 epochs: the plain run is now "epochs=3", and a run that set 2 is plain.
    made("seed=0", epochs=3)
    made("epochs=2,seed=0", epochs=2)
    moves, held = planned_moves(tmp_path / "runs")
    assert PRESETS["tiny"].epochs == 2 and held == []
    assert {(a.name, b.name) for a, b in moves} == {("seed=0", "epochs=3,seed=0"), ("epochs=2,seed=0", "seed=0")}
    assert rename_main([str(tmp_path / "runs")]) == 0 and "2 folder(s) to move" in capsys.readouterr().out
    assert (tmp_path / "runs/sweeps/tiny/seed=0/notes.txt").read_text() == "seed=0"  # a dry run moves nothing
    assert rename_main([str(tmp_path / "runs"), "--apply"]) == 0
    sweeps = tmp_path / "runs" / "sweeps" / "tiny"
    assert (sweeps / "epochs=3,seed=0/notes.txt").read_text() == "seed=0"
    assert (sweeps / "seed=0/notes.txt").read_text() == "epochs=2,seed=0"
    assert planned_moves(tmp_path / "runs") == ([], [])
    # A folder a sweep is training is left alone; a move onto a folder that stays is refused, moving nothing.
    made("lr=0.5,seed=0", lr=0.1)
    (sweeps / "lr=0.5,seed=0" / SWEEP_LOCK).write_text("{}")
    assert planned_moves(tmp_path / "runs") == ([], [sweeps / "lr=0.5,seed=0"])
    (sweeps / "lr=0.5,seed=0" / SWEEP_LOCK).write_text("")  # being written by its taker: held too
    assert planned_moves(tmp_path / "runs") == ([], [sweeps / "lr=0.5,seed=0"])
    # The lock of a sweep that died on this host holds nothing: that run moves.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (sweeps / "lr=0.5,seed=0" / SWEEP_LOCK).write_text(json.dumps({"pid": ended.pid, "host": socket.gethostname()}))
    assert planned_moves(tmp_path / "runs") == ([(sweeps / "lr=0.5,seed=0", sweeps / "lr=0.1,seed=0")], [])
    (sweeps / "lr=0.5,seed=0" / SWEEP_LOCK).unlink()
    made("lr=0.3,seed=0", lr=0.1)
    moves, _ = planned_moves(tmp_path / "runs")
    with pytest.raises(FileExistsError, match="more than one run folder"):
        apply_moves(moves)
    (sweeps / "lr=0.3,seed=0").rename(sweeps / "lr=0.1,seed=0")
    moves, _ = planned_moves(tmp_path / "runs")
    with pytest.raises(FileExistsError, match="nothing was moved"):
        apply_moves(moves)
    assert (sweeps / "lr=0.5,seed=0").is_dir() and (sweeps / "lr=0.1,seed=0").is_dir()
