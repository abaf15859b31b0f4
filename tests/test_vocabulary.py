"""The large-vocabulary sweeps: their plan in figures.yaml and the Makefile, the bucket and time
columns of the sweep tables, the figures against C, per arm and of the class frequencies, what the
runs show said in words, and notebook 07 on a hand-made sweep folder."""
import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from dlde.analysis import sweep_stats
from dlde.analysis.sweep_stats import METRICS, run_summary, summarize_arms
from dlde.pipeline.lock import notebook_defaults
from dlde.pipeline.plan import load_config
from dlde.pipeline.sweeps import make_sweep_plan
from dlde.plots.sweep_plots import plot_sweep
from dlde.plots.vocabulary_plots import HEAD_STYLES, plot_against_classes, plot_arms, plot_class_frequency
from dlde.protocols.vocabulary import (
    arm_rows,
    class_image_counts,
    describe_arms,
    describe_tracking,
    example_detections,
    missing_report,
    missing_runs,
    tracking_curves,
    tracking_ends,
    training_sets,
)
from dlde.reports.sweeps import sweep_table, write_csv, write_sweep
from dlde.train import PRESETS, TrainConfig, train
from dlde.train.runs import RunFolder

REPO = Path(__file__).resolve().parents[1]
FIGURES_YAML = REPO / "figures.yaml"
HEADS = ("dlde", "retinanet", "prototypes")
#: The sweeps notebook 07 draws (its HEADS_SWEEP, TRACKING_SWEEP and SCREEN_SWEEP).
VOCABULARY = ["vocabulary_heads", "vocabulary_longtail", "vocabulary_screen"]
#: make vocabulary's sweeps
MAKE_VOCABULARY = ["vocabulary_heads", "vocabulary_scale", "vocabulary_embedding", "vocabulary_screen",
                   "vocabulary_longtail", "vocabulary_budget"]


def makefile_list(name):
    """The words of a ``NAME := a b c`` line of the Makefile, continued over lines ending in a backslash."""
    value = re.search(rf"^{name} := ((?:.*\\\n)*.*)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
    return value.replace("\\\n", " ").split()


# ---------------------------------------------------------------------------------- the plan
@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return make_sweep_plan(FIGURES_YAML, VOCABULARY, runs_dir=tmp_path_factory.mktemp("runs"))


def test_the_heads_sweep_trains_three_heads_at_two_sizes_with_three_seeds(plan):
    heads = plan.sweeps[0]
    assert list(heads.arms) == [f"C={c},{h}" for c in (100, 1000) for h in HEADS]
    assert heads.arms["C=100,retinanet"] == [f"glyphs-100/model=retinanet,threads=1,seed={s}" for s in range(3)]
    assert heads.arms["C=1000,dlde"] == [f"glyphs-1000/threads=1,seed={s}" for s in range(3)]
    for arm, keys in heads.arms.items():
        classes, model = int(arm.split(",")[0][2:]), arm.split(",")[1]
        preset = PRESETS[f"glyphs-{classes}"]
        for seed, key in enumerate(keys):
            config = plan.runs[key].config
            assert (config["model"], config["seed"], config["threads"]) == (model, seed, 1)
            assert (config["dataset"], config["dataset_options"]["glyphs_classes"]) == ("glyphs", classes)
            assert config["epochs"] == preset.epochs and config["eval_every"] == preset.epochs
            assert Path(config["data_root"]) == REPO / "data" / f"glyphs-{classes}"
    # Equal budget: at one C the heads differ in the model and its options only.
    for classes in (100, 1000):
        budgets = [{k: v for k, v in plan.runs[heads.arms[f"C={classes},{h}"][0]].config.items()
                    if k not in ("model", "head_options")} for h in HEADS]
        assert budgets[0] == budgets[1] == budgets[2]


def test_the_comparison_and_the_screen_share_their_plain_arms_with_the_heads_sweep(plan):
    heads, longtail, screen = plan.sweeps
    preset_arms = [f"C={c},{h}" for c in (100, 1000) for h in HEADS]
    assert all(longtail.arms[arm] == heads.arms[arm] for arm in preset_arms)  # trained once for both
    assert all(len(keys) == 3 for keys in longtail.arms.values()) and all(
        len(keys) == 1 for keys in screen.arms.values())
    # The glyphs-1000 preset is issue 25's best combination: centered, re-imprinted DLDENet, and the
    # sampler for every head (re-imprinting is no part of the other heads' runs), with the plain focal
    # loss; each head's preset with the equalized focal loss (the presets of the 8280800 tables) beside it.
    config = plan.runs[heads.arms["C=1000,dlde"][0]].config
    assert (config["head_options"]["center_momentum"], config["repeat_threshold"], config["classification_loss"],
            config["reimprint"], config["reimprint_refit"]) == (0.9, 0.005, "focal", "end", 150)
    assert longtail.arms["C=1000,dlde,center,rfs"][0] == "glyphs-1000/reimprint=off,threads=1,seed=0"
    assert longtail.arms["C=1000,dlde,center,rfs,efl"][0] == (
        "glyphs-1000/classification_loss=efl,reimprint=off,threads=1,seed=0")
    for head in HEADS:
        preset, efl = (plan.runs[longtail.arms[arm][0]].config for arm in (f"C=1000,{head}", f"C=1000,{head},efl"))
        assert efl["classification_loss"] == "efl" and {**efl, "classification_loss": "focal"} == preset
    # The screen is seed 0 of the comparison's plain arms at C = 1,000: the preset with its levers off.
    assert screen.arms["dlde"] == longtail.arms["C=1000,dlde,plain"][:1]
    assert screen.arms["retinanet"] == longtail.arms["C=1000,retinanet,plain"][:1]
    assert screen.arms["dlde,center"] == longtail.arms["C=1000,dlde,center"][:1]
    plain = plan.runs[screen.arms["dlde"][0]].config
    assert (plain["head_options"]["center_momentum"], plain["repeat_threshold"], plain["classification_loss"],
            plain["reimprint"]) == (0.0, None, "focal", "off")
    # One lever at a time from there: the run folder names what differs from the preset (the sigmoid
    # head with the sampler is its preset, the run of the heads sweep).
    assert screen.arms["retinanet,rfs"] == heads.arms["C=1000,retinanet"][:1]
    assert screen.arms["dlde,center,reimprint=end"] == [
        "glyphs-1000/reimprint_refit=0,repeat_threshold=none,threads=1,seed=0"]
    for keys in screen.arms.values():
        config = plan.runs[keys[0]].config
        assert (config["dataset_options"]["glyphs_classes"], config["epochs"], config["seed"]) == (1000, 3, 0)
    # A second draw of the 100 classes has its own data folder.
    config = plan.runs[longtail.arms["C=100,data_seed=1,retinanet"][0]].config
    assert config["dataset_options"]["glyphs_seed"] == 1 and Path(config["data_root"]).name == "glyphs-100-seed1"
    # The glyphs-100 preset re-imprints and refits (DLDENet only); its plain DLDENet on both draws beside it.
    config = plan.runs[heads.arms["C=100,dlde"][0]].config
    assert (config["reimprint"], config["reimprint_refit"], config["head_options"].get("center_momentum", 0.0),
            config["repeat_threshold"], config["classification_loss"]) == ("end", 150, 0.0, None, "focal")
    assert longtail.arms["C=100,dlde,plain"][0] == "glyphs-100/reimprint=off,threads=1,seed=0"
    assert longtail.arms["C=100,data_seed=1,dlde,plain"][0] == "glyphs-100/glyphs_seed=1,reimprint=off,threads=1,seed=0"
    assert heads.arms["C=100,retinanet"][0] == "glyphs-100/model=retinanet,threads=1,seed=0"  # re-imprints nothing
    assert len(plan.runs) == 18 + (15 + 12 + 12 + 12) + 6 + 18 + (15 - 4)


def test_make_vocabulary_runs_the_vocabulary_sweeps_and_make_ablations_the_others(tmp_path):
    assert makefile_list("VOCABULARY") == MAKE_VOCABULARY
    ablations = makefile_list("ABLATIONS")
    declared = list(make_sweep_plan(FIGURES_YAML, runs_dir=tmp_path).sweeps)
    # Every sweep is run by one make target: the ablations, the vocabulary, or the figures (a notebook
    # entry that reads it); none by two.
    read = [name for entry in load_config(FIGURES_YAML)["notebooks"] for name in entry.get("sweeps", [])]
    assert read == ["vocabulary_figures"]
    assert sorted(ablations + MAKE_VOCABULARY + read) == sorted(s.name for s in declared)
    assert len(make_sweep_plan(FIGURES_YAML, ablations, runs_dir=tmp_path).runs) == 53  # with the uncentered DLDENet
    makefile = (REPO / "Makefile").read_text()
    assert "--sweeps $(ABLATIONS)" in makefile and "--sweeps $(VOCABULARY)" in makefile
    # make vocabulary then measures re-imprinting on longtail arms trained without it, diagnoses seed 0 of
    # each head, and draws 07 on its full sweeps (the notebook's defaults) into figures/vocabulary/.
    recipe = re.search(r"^vocabulary: .*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    commands = [" ".join(line.split()) for line in recipe.replace("\\\n", " ").splitlines()]
    assert commands[0].endswith("--sweeps $(VOCABULARY)")
    assert commands[1].endswith("benchmarks/reimprint_sweep.py --config figures.yaml --sweep vocabulary_longtail "
                                "--arms $(REIMPRINTED) --table figures/ablations/vocabulary_reimprint.md")
    assert commands[2].endswith("benchmarks/vocabulary_diagnosis.py $(DIAGNOSED) --images 100 "
                                "--table figures/benchmarks/vocabulary_diagnosis.md")
    assert commands[3].endswith(
        "--config figures.yaml --notebook 07_vocabulary.ipynb -p FIGURES_DIR figures/vocabulary")
    vocabulary = make_sweep_plan(FIGURES_YAML, MAKE_VOCABULARY, runs_dir=REPO / "runs")
    longtail = next(s for s in vocabulary.sweeps if s.name == "vocabulary_longtail").arms
    assert makefile_list("REIMPRINTED") and set(makefile_list("REIMPRINTED")) <= set(longtail)
    run_dirs = {vocabulary.run_dir(key).relative_to(REPO).as_posix() for key in vocabulary.runs}
    folders = {"$(G100)": makefile_list("G100")[0], "$(G1000)": makefile_list("G1000")[0]}
    diagnosed = [re.sub(r"\$\(G1000?\)", lambda m: folders[m.group(0)], path) for path in makefile_list("DIAGNOSED")]
    assert len(diagnosed) == 8 and set(diagnosed) <= run_dirs  # runs make vocabulary trains
    defaults = notebook_defaults("07_vocabulary.ipynb")
    assert [defaults["HEADS_SWEEP"], defaults["TRACKING_SWEEP"], defaults["SCREEN_SWEEP"]] == VOCABULARY
    assert len(vocabulary.runs) == 122  # as the docs say


def test_the_figures_sweep_of_07_is_the_heads_sweep_at_c_100_seed_0_in_the_same_folders(tmp_path):
    figures = make_sweep_plan(FIGURES_YAML, ["vocabulary_figures"], runs_dir=tmp_path)
    heads = make_sweep_plan(FIGURES_YAML, ["vocabulary_heads"], runs_dir=tmp_path)
    assert figures.sweeps[0].arms == {arm: keys[:1] for arm, keys in heads.sweeps[0].arms.items()
                                      if arm.startswith("C=100,")}
    assert len(figures.runs) == 3 and all(run == heads.runs[key] for key, run in figures.runs.items())  # same config
    entry = load_config(FIGURES_YAML)["notebooks"][-1]
    assert (entry["notebook"], entry["sweeps"]) == ("07_vocabulary.ipynb", ["vocabulary_figures"])
    assert "run" not in entry  # it trains nothing of its own
    parameters = entry["parameters"]
    assert (parameters["HEADS_SWEEP"], parameters["TRACKING_SWEEP"], parameters["SCREEN_SWEEP"]) == (
        "vocabulary_figures", "", "")  # the reduced view trains neither the comparison nor the screen


def test_the_scale_sweep_at_c_100_shares_its_w_7_arm_with_the_heads_sweep(plan, tmp_path):
    scale = make_sweep_plan(FIGURES_YAML, ["vocabulary_scale"], runs_dir=tmp_path).sweeps[0]
    heads = plan.sweeps[0]
    assert scale.arms["C=100,w=7"] == heads.arms["C=100,dlde"]
    assert scale.arms["C=100,w=14"] == [f"glyphs-100/init_weight=14,threads=1,seed={s}" for s in range(3)]


def test_the_budget_sweep_gives_dlde_the_sigmoid_heads_time_and_both_twice_the_schedule(plan, tmp_path):
    budget = make_sweep_plan(FIGURES_YAML, ["vocabulary_budget"], runs_dir=tmp_path)
    arms = budget.sweeps[0].arms
    heads = plan.sweeps[0]
    assert arms["C=1000,retinanet,equal_time"] == heads.arms["C=1000,retinanet"]  # its preset arm: trained once
    equal = budget.runs[arms["C=1000,dlde,equal_time"][0]].config
    preset = plan.runs[heads.arms["C=1000,dlde"][0]].config
    # Equal time: fewer steps per epoch, everything else the preset's (its levers, its 3 epochs).
    assert equal["max_train_batches"] == 369 and preset["max_train_batches"] is None
    assert {k: v for k, v in equal.items() if k not in ("max_train_batches", "run_dir")} == {
        k: v for k, v in preset.items() if k not in ("max_train_batches", "run_dir")}
    for head in ("dlde", "retinanet"):
        longer = budget.runs[arms[f"C=1000,{head},6_epochs"][0]].config
        assert (longer["model"], longer["epochs"], longer["eval_every"]) == (head, 6, 3)
    assert all(len(keys) == 3 for keys in arms.values())


def test_tiny_vocabulary_sweeps_still_plan(tmp_path):
    plan = make_sweep_plan(FIGURES_YAML, VOCABULARY, tiny=True, runs_dir=tmp_path)
    assert all(key.startswith("tiny/") for key in plan.runs)


# ------------------------------------------------------------------------- table columns
def make_run(folder: Path, *, ap, buckets=None, times=(10.0, 20.0), model="dlde", classes=4, epochs=2,
             data_root=None, config=None, tracked=False):
    """A hand-made finished run: config.json (``config``, or a minimal one), metrics.jsonl with the
    bucket APs and epoch times; ``tracked``: also the per-epoch diagnostics of tracked means (100
    images an epoch; the smallest angle 5° lower an epoch from 90°; the cosine to the start 1 for
    rare classes, 0.01 an epoch lower for common and 0.02 for frequent ones; the mean embedding's
    length 0.1 longer an epoch from 0.5; w 14) and ``means_history.npy`` (:func:`starting_means`)."""
    folder.mkdir(parents=True)
    config = {"model": model, "epochs": epochs, "dataset": "glyphs", "glyphs_classes": classes,
              **(config or {}), "data_root": str(data_root or folder / "data")}
    record = {"config": config, "class_names": [f"c{k}" for k in range(classes)],
              "category_ids": list(range(1, classes + 1))}
    (folder / "config.json").write_text(json.dumps(record))
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "train_loss": 1.0, "val_loss": 1.0, "train_time_s": times[epoch - 1]}
        if epoch == epochs:
            row.update({"AP": ap, "AP50": ap + 0.1, "AP75": ap - 0.1} | dict(zip(("APr", "APc", "APf"), buckets or ())))
        if tracked:
            row.update({"train_images": 100, "means_min_angle": 90.0 - 5 * epoch, "means_cos_to_start_r": 1.0,
                        "means_cos_to_start_c": 1.0 - 0.01 * epoch, "means_cos_to_start_f": 1.0 - 0.02 * epoch,
                        "mean_embedding_norm": 0.5 + 0.1 * epoch, "w_mean": 14.0})
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if tracked:
        np.save(folder / "means_history.npy", np.stack([starting_means(classes)] * (epochs + 1)))
    return folder


def starting_means(classes: int, d: int = 8) -> np.ndarray:
    """(C, d) unit means: orthonormal when C <= d (90° apart), else seeded random directions."""
    if classes <= d:
        return np.eye(classes, d, dtype=np.float32)
    means = np.random.default_rng(classes).normal(size=(classes, d)).astype(np.float32)
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def test_run_summary_adds_the_bucket_metrics_and_the_time_per_epoch_only_when_the_run_has_them(tmp_path):
    summary = run_summary(make_run(tmp_path / "a", ap=0.3, buckets=(0.1, None, 0.5), times=(10.0, 30.0)))
    assert summary["APr"] == 0.1 and math.isnan(summary["APc"]) and summary["APf"] == 0.5
    assert summary["epoch_time_s"] == pytest.approx(20.0)
    plain = run_summary(make_run(tmp_path / "b", ap=0.3))
    assert "APr" not in plain and plain["epoch_time_s"] == pytest.approx(15.0)


def test_sweep_tables_gain_the_vocabulary_columns_only_with_bucket_metrics(tmp_path):
    seeds = {"dlde": [{"AP": 0.2, "APr": 0.1, "APc": 0.2, "APf": 0.4, "epoch_time_s": 100.0},
                      {"AP": 0.3, "APr": 0.2, "APc": 0.3, "APf": 0.5, "epoch_time_s": 110.0}],
             "retinanet": [{"AP": 0.4, "APr": 0.3, "APc": 0.4, "APf": 0.6, "epoch_time_s": 150.0}]}
    rows = summarize_arms(seeds)
    assert rows[0]["APr_mean"] == pytest.approx(0.15) and rows[0]["epoch_time_s_sd"] == pytest.approx(math.sqrt(50))
    half = 12.706204736 * math.sqrt(50) / math.sqrt(2)
    assert (rows[0]["epoch_time_s_low"], rows[0]["epoch_time_s_high"]) == pytest.approx((105 - half, 105 + half))
    header, _, dlde, retinanet = sweep_table(rows).splitlines()
    titles = [cell.split(" mean ± sd")[0] for cell in header.strip("| ").split(" | ")[2:]]
    assert titles == ["AP", "AP50", "AP75", "APr", "APc", "APf", "min. angle between means (°)", "final κ̂",
                      "ECE (IoU ≥ 0.5)", "training time per epoch (s)"]
    assert dlde.split(" | ")[5] == f"0.150 ± 0.071 [{0.15 - half / 100:.3f}, {0.15 + half / 100:.3f}]"
    assert dlde.endswith(f"| 105.0 ± 7.1 [{105 - half:.1f}, {105 + half:.1f}] |")
    assert retinanet.endswith("| 150.0 |")  # one seed: no spread, no interval

    path = write_csv(rows, tmp_path / "vocabulary.csv")
    with path.open() as handle:
        saved = list(csv.DictReader(handle))
    assert "APr_mean" in saved[0] and float(saved[1]["epoch_time_s_mean"]) == 150.0
    rebuilt = [{"arm": r.pop("arm"), "n": int(r.pop("n"))}
               | {k: math.nan if v == "" else float(v) for k, v in r.items()} for r in saved]
    assert sweep_table(rebuilt) == sweep_table(rows)  # as tests/test_tables.py rebuilds the committed tables


def test_digits_sweeps_keep_their_columns_even_with_epoch_times(tmp_path):
    rows = summarize_arms({"a": [{"AP": 0.5, "epoch_time_s": 10.0}, {"AP": 0.6, "epoch_time_s": 12.0}]})
    committed = (REPO / "figures" / "ablations" / "headline.md").read_text().splitlines()[2]
    assert sweep_table(rows).splitlines()[0] == committed
    assert not any(key.startswith(("APr", "epoch_time_s")) for key in rows[0])
    assert sweep_stats.tabulated(rows) == list(METRICS)


def test_a_vocabulary_sweep_is_written_with_bucket_panels(tmp_path):
    import matplotlib.pyplot as plt

    runs = {"dlde": [make_run(tmp_path / f"d{s}", ap=0.2 + s / 10, buckets=(0.1, 0.2, 0.3)) for s in range(2)],
            "retinanet": [make_run(tmp_path / "r0", ap=0.4, buckets=(0.3, 0.4, 0.5), model="retinanet")]}
    written = write_sweep("vocabulary_demo", runs, tmp_path / "ablations")
    assert "APr mean ± sd" in written["md"].read_text()
    rows = summarize_arms({arm: [run_summary(d) for d in dirs] for arm, dirs in runs.items()})
    fig = plot_sweep(rows, "demo")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["AP", "AP50", "AP75", "APr", "APc", "APf", "training time per epoch (s)"]
    plt.close(fig)


# ------------------------------------------------------------------------- reading the runs
def test_arm_rows_name_head_and_classes_and_missing_runs_are_listed(tmp_path):
    arms = {"C=4,dlde": [make_run(tmp_path / "a0", ap=0.2, buckets=(0.1, 0.2, 0.3)), tmp_path / "a1"],
            "C=8,retinanet": [make_run(tmp_path / "b0", ap=0.5, buckets=(0.4, 0.5, 0.6), model="retinanet",
                                       classes=8)],
            "C=8,dlde": [tmp_path / "c0"]}
    unfinished = make_run(tmp_path / "a2", ap=0.9, epochs=2)
    (unfinished / "metrics.jsonl").write_text(unfinished.joinpath("metrics.jsonl").read_text().splitlines()[0] + "\n")
    arms["C=4,dlde"].append(unfinished)  # one epoch of two
    assert not RunFolder(unfinished).is_finished() and RunFolder(tmp_path / "a0").is_finished()
    assert not RunFolder(tmp_path / "a1").is_finished()
    rows = arm_rows(arms)
    assert [(r["arm"], r["head"], r["classes"], r["n"]) for r in rows] == [("C=4,dlde", "dlde", 4, 1),
                                                                           ("C=8,retinanet", "retinanet", 8, 1)]
    assert missing_runs(arms) == [tmp_path / "a1", unfinished, tmp_path / "c0"]
    report = missing_report("demo", arms, tmp_path)
    assert report.splitlines() == ["demo: 2 of 5 runs finished", "  missing: a1", "  missing: a2", "  missing: c0"]


def test_class_image_counts_from_lvis_fields_or_from_the_annotations(tmp_path):
    lvis = tmp_path / "lvis.json"
    lvis.write_text(json.dumps({"categories": [{"id": 1, "name": "a", "image_count": 3, "frequency": "r"},
                                               {"id": 2, "name": "b", "image_count": 120, "frequency": "f"}]}))
    counts = class_image_counts(lvis)
    assert counts.image_count.tolist() == [3, 120] and counts.frequency == ["r", "f"]
    coco = tmp_path / "coco.json"
    annotations = [{"image_id": i, "category_id": 1} for i in range(12)] + [{"image_id": 0, "category_id": 2}] * 2
    coco.write_text(json.dumps({"categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}, {"id": 3, "name": "z"}],
                                "annotations": annotations}))
    counts = class_image_counts(coco)
    assert counts.image_count.tolist() == [12, 1, 0] and counts.frequency == ["c", "r", ""]


def test_training_sets_name_one_annotation_file_per_number_of_classes(tmp_path):
    arms = {"a": [make_run(tmp_path / "a", ap=0.1, classes=8, data_root=tmp_path / "d8"), tmp_path / "none"],
            "b": [make_run(tmp_path / "b", ap=0.1, classes=4, data_root=tmp_path / "d4")]}
    assert training_sets(arms) == {4: tmp_path / "d4" / "annotations" / "instances_train.json",
                                   8: tmp_path / "d8" / "annotations" / "instances_train.json"}


@pytest.mark.slow
def test_example_detections_take_one_run_per_head_with_a_checkpoint(tmp_path):
    config = TrainConfig.from_dict({"run_dir": str(tmp_path / "run"), "data_root": str(tmp_path / "data"),
                                    "epochs": 1, "progress": False}, preset="tiny")
    train(config)
    examples = example_detections({"tiny": [tmp_path / "run", tmp_path / "missing"]}, images=2, score_threshold=0.0)
    assert list(examples) == ["dlde"] and examples["dlde"].run == tmp_path / "run"
    assert len(examples["dlde"].samples) == 2 and examples["dlde"].class_names == ["0", "1", "2"]
    assert {"image", "boxes", "labels", "scores", "gt_boxes"} <= set(examples["dlde"].samples[0])


# ---------------------------------------------------------------------------------- figures
def head_rows():
    rows = []
    for index, head in enumerate(HEADS):
        for classes, level in ((100, 0.4), (1000, 0.3)):
            stats = {f"{m}_{k}": level - 0.05 * index + offset for m in ("AP", "APr", "APc", "APf")
                     for k, offset in (("mean", 0.0), ("low", -0.02), ("high", 0.02))}
            stats |= {"epoch_time_s_mean": classes / 10.0, "epoch_time_s_low": math.nan, "epoch_time_s_high": math.nan}
            rows.append({"arm": f"C={classes},{head}", "n": 3, "head": head, "classes": classes} | stats)
    return rows


def test_metrics_against_classes_have_a_panel_per_metric_and_a_line_per_head():
    import matplotlib.pyplot as plt

    fig = plot_against_classes(head_rows())
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["AP", "APr", "APc", "APf"]
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_xticks().tolist() == [100, 1000]
        assert len(ax.containers) == len(HEADS)
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == ["100", "1,000"]  # the shared axis's labels
    dlde = axes[0].containers[0]
    x, y = dlde.lines[0].get_data()
    assert y.tolist() == pytest.approx([0.4, 0.3]) and x[1] / x[0] == pytest.approx(10.0)
    assert dlde.lines[0].get_color() == HEAD_STYLES["dlde"][1]
    low, high = dlde.lines[1][0].get_ydata()[0], dlde.lines[1][1].get_ydata()[0]  # the caps at C = 100
    assert (low, high) == pytest.approx((0.38, 0.42))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["DLDENet", "sigmoid", "learned prototypes"]
    assert fig.get_size_inches()[0] == pytest.approx(3.4)
    plt.close(fig)
    fig = plot_against_classes(head_rows(), ("epoch_time_s",))
    (ax,) = fig.axes
    assert ax.get_title() == "training time per epoch (s)"
    assert ax.containers[2].lines[0].get_ydata().tolist() == [10.0, 100.0]
    plt.close(fig)


def test_arms_figure_has_a_panel_per_metric_and_a_row_per_arm_in_its_head_s_style():
    import matplotlib.pyplot as plt

    rows = head_rows()
    rows[1] |= {"APr_low": math.nan, "APr_high": math.nan}  # one seed: no interval
    del rows[2]["APf_mean"]  # a metric an arm lacks: not drawn, not an error
    fig = plot_arms(rows)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["AP", "APr", "APc", "APf"]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == [r["arm"] for r in rows]  # first arm on top
    assert axes[0].get_ylim() == (len(rows) - 0.5, -0.5) and fig.get_size_inches()[0] == pytest.approx(7.0)
    assert len(axes[0].containers) == len(HEADS)  # one series per head
    dlde, sigmoid = axes[0].containers[0], axes[0].containers[1]
    assert dlde.lines[0].get_color() == HEAD_STYLES["dlde"][1] and sigmoid.lines[0].get_marker() == "s"
    x, y = dlde.lines[0].get_data()
    assert x.tolist() == pytest.approx([0.4, 0.3]) and y.tolist() == [0, 1]  # C=100,dlde and C=1000,dlde
    low, high = dlde.lines[1][0].get_xdata()[0], dlde.lines[1][1].get_xdata()[0]  # the caps of C=100,dlde
    assert (low, high) == pytest.approx((0.38, 0.42))
    caps = axes[1].containers[0].lines[1][0].get_xdata()  # APr: the arm without an interval has no bar
    assert caps[1] == pytest.approx(0.3) and axes[1].get_xlim()[0] == 0.0
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["DLDENet", "sigmoid", "learned prototypes"]
    plt.close(fig)


def test_describe_arms_says_each_arm_s_metrics_with_their_interval():
    rows = head_rows()[:2]
    rows[1] = {**rows[1], "n": 1, "APr_low": math.nan, "APr_high": math.nan, "APc_mean": math.nan}
    assert describe_arms(rows, ("AP", "APr", "APc")) == [
        "C=100,dlde (3 seeds): AP 0.400 [0.380, 0.420], APr 0.400 [0.380, 0.420], APc 0.400 [0.380, 0.420]",
        "C=1000,dlde (1 seed): AP 0.300 [0.280, 0.320], APr 0.300"]  # one seed: no interval; no APc: left out
    assert describe_arms([{"arm": "a", "n": 2}]) == ["a (2 seeds): no metric"]


def test_tracking_ends_and_their_description_from_runs_that_tracked_means(tmp_path):
    arms = {"dlde": [make_run(tmp_path / f"d{s}", ap=0.2, tracked=True) for s in range(2)],
            "retinanet": [make_run(tmp_path / "r0", ap=0.3, model="retinanet")]}
    curves = tracking_curves(arms)
    assert list(curves) == ["dlde"]  # the sigmoid head tracks no means
    ends = tracking_ends(curves)
    assert ends["dlde"] == pytest.approx({"seeds": 2, "images": 200.0, "cos_start_r": 1.0, "cos_start_c": 0.98,
                                          "cos_start_f": 0.96, "min_angle": 80.0, "embedding_norm": 0.7, "w": 14.0,
                                          "min_angle_start": 90.0})
    assert describe_tracking(curves) == [
        "dlde (2 seeds, 200 images): cosine of a mean to its start rare 1.000, common 0.980, frequent 0.960; "
        "smallest angle between means 90.0° → 80.0°; length of the mean embedding 0.700; w 14.00"]
    curves["dlde"]["w"][:] = np.nan  # a run written before w was recorded
    curves["dlde"]["cos_start_c"][:] = np.nan
    assert math.isnan(tracking_ends(curves)["dlde"]["w"])
    assert describe_tracking(curves)[0].endswith("rare 1.000, frequent 0.960; smallest angle between means "
                                                 "90.0° → 80.0°; length of the mean embedding 0.700")


def test_class_frequency_histogram_is_log_scaled_with_the_buckets_shaded():
    import matplotlib.pyplot as plt

    counts = np.array([1, 1, 2, 5, 10, 11, 50, 100, 101, 150, 0])
    letters = ["r"] * 5 + ["c"] * 3 + ["f"] * 2 + [""]
    fig = plot_class_frequency(counts, letters)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_title() == "class frequency (10 classes)"
    assert sum(patch.get_height() for patch in ax.patches if patch.get_facecolor()[:3] == (0.25, 0.25, 0.25)) == 10
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["rare 1–10: 5", "common 11–100: 3",
                                                                   "frequent > 100: 2"]
    plt.close(fig)
    with pytest.raises(ValueError, match="one entry per class"):
        plot_class_frequency([1, 2], ["r"])


# ---------------------------------------------------------------------------------- notebook
def fake_sweeps(runs_dir: Path, data_dir: Path):
    """Finished fake runs for every run of the heads sweep but one, for two more arms of the comparison
    and one more of the screen (DLDENet's with the diagnostics of tracked means); the training
    annotations of each C."""
    plan = make_sweep_plan(FIGURES_YAML, VOCABULARY, runs_dir=runs_dir)
    heads, longtail, screen = plan.sweeps
    skipped = heads.arms["C=1000,prototypes"][2]
    keys = [k for keys in heads.arms.values() for k in keys if k != skipped]
    keys += longtail.arms["C=1000,dlde,center"] + longtail.arms["C=1000,retinanet,plain"] + screen.arms["dlde,w=log"]
    rng = np.random.default_rng(0)
    for key in keys:
        config = plan.runs[key].config
        classes = config["dataset_options"]["glyphs_classes"]
        root = data_dir / f"glyphs-{classes}"
        folder = make_run(plan.run_dir(key), ap=float(rng.uniform(0.2, 0.4)), buckets=rng.uniform(0.1, 0.5, 3).tolist(),
                          model=config["model"], classes=classes, epochs=config["epochs"],
                          times=[float(classes) / 10.0] * config["epochs"], data_root=root, config=config,
                          tracked=config["model"] == "dlde")
        assert RunFolder(folder).is_finished()
    for classes in (100, 1000):
        counts = rng.integers(1, 150, classes)
        categories = [{"id": k + 1, "name": f"g{k}", "image_count": int(n), "frequency": "r" if n <= 10 else
                       "c" if n <= 100 else "f"} for k, n in enumerate(counts)]
        path = data_dir / f"glyphs-{classes}" / "annotations" / "instances_train.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"categories": categories, "images": [], "annotations": []}))
    return plan, skipped


@pytest.mark.slow
def test_07_vocabulary_draws_from_a_hand_made_sweep_and_names_the_missing_runs(tmp_path, monkeypatch):
    import nbformat
    import papermill

    from dlde.pipeline.execute import PAPERMILL_OPTIONS
    from dlde.pipeline.lock import NOTEBOOKS_DIR
    from dlde.pipeline.notebook import read_results

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plan, skipped = fake_sweeps(tmp_path / "runs", tmp_path / "data")
    out_dir, figures_dir = tmp_path / "out", tmp_path / "figures"
    executed = tmp_path / "07_vocabulary.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS_DIR / "07_vocabulary.ipynb"), str(executed),
                               parameters={"RUN_DIR": str(tmp_path / "vocabulary"), "RUNS_DIR": str(tmp_path / "runs"),
                                           "CONFIG": str(FIGURES_YAML), "FIGURES_DIR": str(figures_dir),
                                           "OUT_DIR": str(out_dir), "DETECTION_IMAGES": 2},
                               cwd=str(tmp_path), **PAPERMILL_OPTIONS)
    results = read_results(out_dir)
    expected = ["vocabulary_ap", "vocabulary_epoch_time", "vocabulary_arms_tracking", "vocabulary_arms_screen",
                "vocabulary_tracking", "vocabulary_class_frequency_100", "vocabulary_class_frequency_1000"]
    assert results["figures"] == expected
    for name in expected:
        assert (figures_dir / f"{name}.png").stat().st_size > 0 and (figures_dir / f"{name}.pdf").stat().st_size > 0
    assert results["sweeps"]["vocabulary_heads"] == {"runs": 18, "missing": [str(plan.run_dir(skipped))]}
    # The comparison: 17 runs shared with the heads sweep (the skipped one is its too) and two arms of its own.
    assert results["sweeps"]["vocabulary_longtail"]["runs"] == 93
    assert len(results["sweeps"]["vocabulary_longtail"]["missing"]) == 93 - 17 - 6
    assert str(plan.run_dir(skipped)) in results["sweeps"]["vocabulary_longtail"]["missing"]
    # The screen: seed 0 of the comparison's retinanet,plain and dlde,center, of the sigmoid head's preset
    # (its retinanet,rfs), and its own w=log run.
    screen_runs = results["sweeps"]["vocabulary_screen"]
    assert screen_runs["runs"] == 15 and len(screen_runs["missing"]) == 15 - 4
    heads = results["rows"]["vocabulary_heads"]
    assert [(r["head"], r["classes"], r["n"]) for r in heads] == [(h, c, 2 if (h, c) == ("prototypes", 1000) else 3)
                                                                  for c in (100, 1000) for h in HEADS]
    assert all(0.1 <= r["APr_mean"] <= 0.5 for r in heads) and heads[0]["epoch_time_s_mean"] == pytest.approx(10.0)
    screen = results["rows"]["vocabulary_screen"]
    assert [(r["arm"], r["head"], r["n"]) for r in screen] == [
        ("dlde,center", "dlde", 1), ("retinanet", "retinanet", 1), ("dlde,w=log", "dlde", 1),
        ("retinanet,rfs", "retinanet", 1)]
    # What the tracked means did: the DLDENet arms of both sweeps with finished runs, in the sweeps' order.
    assert list(results["tracking"]) == ["C=1000,dlde", "C=1000,dlde,center", "C=100,dlde", "dlde,center", "dlde,w=log"]
    ends = results["tracking"]["C=1000,dlde,center"]
    assert (ends["seeds"], ends["images"], ends["min_angle"], ends["cos_start_f"]) == pytest.approx((3, 300, 75, 0.94))
    assert results["tracking"]["C=100,dlde"]["images"] == 1600  # 16 epochs of 100 fake images
    streams = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells
                      if c.cell_type == "code" for o in c.outputs)
    assert "vocabulary_heads: 17 of 18 runs finished" in streams and f"missing: {skipped}" in streams
    assert "vocabulary_screen: 4 of 15 runs finished" in streams
    # What the runs show, said from the rows when the notebook runs (nothing typed into its markdown).
    row = next(r for r in results["rows"]["vocabulary_longtail"] if r["arm"] == "C=1000,dlde,center")
    interval = f"AP {row['AP_mean']:.3f} [{row['AP_low']:.3f}, {row['AP_high']:.3f}]"
    assert f"C=1000,dlde,center (3 seeds): {interval}" in streams
    assert "dlde,w=log (1 seed, 300 images): cosine of a mean to its start rare 1.000" in streams
    assert "no finished run with a checkpoint" in streams  # fake runs have no model to draw


def test_status_says_where_each_run_stands_and_trains_nothing(tmp_path, capsys):
    from dlde.files import try_lock
    from dlde.pipeline.cli import main
    from dlde.pipeline.sweeps import SWEEP_LOCK

    plan, skipped = fake_sweeps(tmp_path / "runs", tmp_path / "data")
    heads = plan.sweeps[0]
    partial = RunFolder(plan.run_dir(heads.arms["C=100,dlde"][1]))  # epoch 1 of 16, a checkpoint to resume from
    partial.metrics_file.write_text(partial.metrics_file.read_text().splitlines()[0] + "\n")
    partial.checkpoint_file.write_bytes(b"")
    assert try_lock(partial.path / SWEEP_LOCK) is None  # this process trains it
    changed = RunFolder(plan.run_dir(heads.arms["C=100,retinanet"][0]))  # another configuration in its folder
    record = json.loads(changed.config_file.read_text())
    changed.config_file.write_text(json.dumps({**record, "config": {**record["config"], "lr": 0.5}}))
    args = ["--config", str(FIGURES_YAML), "--runs-dir", str(tmp_path / "runs"), "--sweeps", *VOCABULARY, "--status"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "vocabulary_heads: 15 of 18 runs complete" in out
    assert f"  {heads.arms['C=100,dlde'][1]}: epoch 1 of 16, training (pid {os.getpid()} on " in out
    assert f"  {heads.arms['C=100,retinanet'][0]}: holds another configuration" in out
    assert f"  {skipped}: not started" in out
    assert "training ..." not in out and not plan.run_dir(skipped).exists()  # nothing trained, no folder made
    done = [key for key in plan.runs if RunFolder(plan.run_dir(key)).is_complete(plan.runs[key].config)]
    assert len(done) == 15 + 3 + 3 + 1  # the heads' and two more arms of the comparison (screen arms among them)
    # Epochs left: every run not complete, less the partial run's first epoch; the other configuration's none.
    epochs = sum(plan.runs[key].epochs for key in plan.runs if key not in done) - 1 - 16
    assert f"all: {len(done)} of {len(plan.runs)} distinct runs complete; {epochs} epochs left to train" in out
    assert main(args + ["--tables-only"]) == 2


def test_tables_only_writes_the_sweep_tables_from_the_finished_runs_and_trains_nothing(tmp_path, capsys):
    from dlde.pipeline.cli import main

    plan, skipped = fake_sweeps(tmp_path / "runs", tmp_path / "data")
    figures = tmp_path / "figures"
    args = ["--config", str(FIGURES_YAML), "--runs-dir", str(tmp_path / "runs"), "--figures-dir", str(figures),
            "--sweeps", *VOCABULARY, "--tables-only"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "training" not in out and "(finished runs only)" in out
    assert not plan.run_dir(skipped).exists()  # the missing run was not started
    heads = (figures / "ablations" / "vocabulary_heads.md").read_text()
    assert "| C=1000,prototypes | 2 |" in heads and "| C=100,dlde | 3 |" in heads
    longtail = (figures / "ablations" / "vocabulary_longtail.md").read_text()
    assert "| C=1000,dlde,center | 3 |" in longtail and "| C=100,dlde,center | 0 |" in longtail
    assert "| dlde,w=log | 1 |" in (figures / "ablations" / "vocabulary_screen.md").read_text()
    assert main(args + ["--force"]) == 2
    assert "--tables-only trains nothing" in capsys.readouterr().err
