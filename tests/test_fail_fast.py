"""Fail fast and clean (issue 28): a bad value is refused when the config is made, naming its key
(its flag at the command line, its parameter in a notebook); the glyphs planner's memory is linear
in the objects; a start that fails before its first epoch, or a resume that fails, leaves the run
folder as it found it; the small-image message says what the pyramid level sees.

The tests reach the new names through their modules, so on the code before the issue each fails
on its assertion rather than on an import.
"""
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_model

import dlde.data.glyphs as glyphs
import dlde.data.long_tail as long_tail
import dlde.train.loop as training
from dlde import RetinaNet
from dlde.data.glyphs import GlyphsConfig, plan_glyphs
from dlde.kernels import PORTABLE_KERNELS, SETTING_VARIABLE
from dlde.model.heads import HeadTower
from dlde.train import PRESETS, TrainConfig, main, train


def tiny(tmp_path, name="run", **overrides):
    return TrainConfig.from_dict({"run_dir": str(tmp_path / name), "data_root": str(tmp_path / "data"),
                                  "progress": False, "epochs": 1, "max_train_batches": 1, **overrides}, preset="tiny")


def refusal(make, kind=ValueError):
    with pytest.raises(kind) as info:
        make()
    return info.value


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) -> its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def cli_error(capsys, words) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(words)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------- 1. every value checked when the config is made
BAD_VALUES = [
    ({"epochs": 0}, "epochs"), ({"epochs": 2.5}, "epochs"), ({"batch_size": 0}, "batch_size"),
    ({"eval_batch_size": 0}, "eval_batch_size"), ({"embedding_size": 0}, "embedding_size"),
    ({"means_update": "often"}, "means_update"), ({"means_lr": 2.0}, "means_lr"),
    ({"pyramid_channels": 0}, "pyramid_channels"), ({"head_channels": 0}, "head_channels"),
    ({"digits_train_images": 0}, "digits_train_images"), ({"digits_val_images": 0}, "digits_val_images"),
    ({"digits_size": (40, 20)}, "digits_size"), ({"digits_classes": (3, 3)}, "digits_classes"),
    ({"min_size": 65}, "min_size"), ({"background_iou": 0.6, "object_iou": 0.5}, "background_iou"),
    ({"lr": float("nan")}, "lr"), ({"lr": 0.0}, "lr"), ({"warmup_fraction": 1.0}, "warmup_fraction"),
    ({"fpn_levels": (4, 3)}, "fpn_levels"), ({"anchor_sizes": (16.0, -32.0)}, "anchor_sizes"),
    ({"threads": 0}, "threads"), ({"init_batches": 0}, "init_batches"), ({"eval_every": 0}, "eval_every"),
    ({"glyphs_classes": 5000}, "glyphs_classes"), ({"glyphs_classes": 1}, "glyphs_classes"),
    ({"glyphs_per_image": (16, 10)}, "glyphs_per_image"), ({"glyphs_val_images": 0}, "glyphs_val_images"),
    ({"glyphs_max_images": 50}, "glyphs_max_images"), ({"resnet": 19}, "resnet"), ({"device": "gpu"}, "device"),
    ({"run_dir": ""}, "run_dir"),
]


@pytest.mark.parametrize(("values", "key"), BAD_VALUES, ids=[key for _, key in BAD_VALUES])
def test_a_bad_value_is_refused_when_the_config_is_made_naming_its_key(values, key):
    error = refusal(lambda: TrainConfig.from_dict(values, preset="tiny"))
    assert error.key == key and key in str(error) and "\n" not in str(error)
    copy = pickle.loads(pickle.dumps(error))  # torchrun shares rank 0's refusal with the other ranks
    assert (type(copy), copy.key, str(copy)) == (type(error), error.key, str(error))


def test_the_glyph_vocabulary_bounds_the_classes_without_drawing_a_glyph(monkeypatch):
    def no_rendering(*args, **kwargs):
        raise AssertionError("a glyph was rendered")

    monkeypatch.setattr(glyphs.GlyphRenderer, "mask", no_rendering)
    monkeypatch.setattr(glyphs.GlyphRenderer, "charmap", no_rendering)
    available = glyphs.vocabulary_size(GlyphsConfig.families, GlyphsConfig.max_similarity)
    assert available == 1462
    assert GlyphsConfig(classes=available).classes == available
    error = refusal(lambda: GlyphsConfig(classes=available + 1))
    assert error.key == "classes" and "1462 classes of the glyph vocabulary" in str(error)


@pytest.mark.slow
def test_the_recorded_vocabulary_size_is_what_the_fonts_hold():
    styles = GlyphsConfig().styles()
    vocabulary = glyphs.build_vocabulary(styles, None, GlyphsConfig.max_similarity, glyphs.GlyphRenderer(styles))
    assert len(vocabulary) == glyphs.vocabulary_size(GlyphsConfig.families, GlyphsConfig.max_similarity)


def test_the_command_line_names_the_flag_and_refuses_before_planning_or_any_folder(tmp_path, capsys, monkeypatch):
    def planned(*args, **kwargs):
        raise AssertionError("the glyphs were planned")

    monkeypatch.setattr(glyphs, "plan_glyphs", planned)
    monkeypatch.setattr(long_tail, "assign_classes", planned)
    folders = ["--run-dir", str(tmp_path / "run"), "--data-root", str(tmp_path / "data")]
    err = cli_error(capsys, ["--preset", "glyphs-100", "--glyphs-classes", "5000", *folders])
    assert "--glyphs-classes 5000 is more than the 1462 classes" in err
    err = cli_error(capsys, ["--preset", "glyphs-100", "--glyphs-classes", "1", *folders])
    assert err.count("--glyphs-classes") >= 2 and "--glyphs-per-image" in err and "glyphs_" not in err
    err = cli_error(capsys, ["--preset", "tiny", "--embedding-size", "0", *folders])
    assert "--embedding-size must be >= 1, got 0" in err
    assert list(tmp_path.iterdir()) == []  # no run folder, no data


# A command's dataset options are checked before torch loads: same refusal, same words, no torch.
EARLY_REFUSALS = [
    ["--preset", "glyphs-1000", "--glyphs-classes", "5000"],
    ["--dataset", "glyphs", "--glyphs-classes", "5000"],
    ["--glyphs-classes", "5000"],  # a dataset not trained on, set away from its defaults
    ["--preset", "glyphs-100", "--glyphs-classes", "1"],
    ["--preset", "tiny", "--digits-train-images", "0"],
    ["--preset=glyphs-100", "--glyphs-size", "40", "10"],
    ["--glyphs-classes", "many"],
    ["--dataset", "coco", "--train-images", "a"],
]


@pytest.mark.parametrize("words", EARLY_REFUSALS, ids=" ".join)
def test_the_early_dataset_check_refuses_as_the_full_command_line_does(words, tmp_path, capsys):
    from dlde.train import preflight  # new in issue 28: imported here, so the other tests run on older code

    folders = ["--run-dir", str(tmp_path / "run"), "--data-root", str(tmp_path / "data")]
    with pytest.raises(SystemExit) as exit_info:
        preflight.check_dataset([*words, *folders])
    assert exit_info.value.code == 2
    early = capsys.readouterr().err.strip()
    assert early == cli_error(capsys, [*words, *folders])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("words", [
    ["--preset", "glyphs-1000", "--glyphs-classes", "500"], ["--preset", "glyphs-100"], [],
    ["--dataset", "coco", "--train-images", "a", "--train-annotations", "b", "--val-images", "c",
     "--val-annotations", "d"],
    ["--pre", "glyphs-100", "--glyphs-classes", "5000"],  # an abbreviated --preset: left to the full parser
    ["--glyphs-classes", "5000", "--help"], ["--preset", "none", "--glyphs-classes", "5000"],
    ["--embedding-size", "0"],  # not a dataset option: refused by the full command line
], ids=" ".join)
def test_the_early_dataset_check_leaves_everything_else_to_the_full_command_line(words):
    from dlde.train import preflight

    assert preflight.check_dataset(words) is None


def test_the_early_check_reads_the_datasets_the_presets_train_on():
    from dlde.train.preset_data import PRESET_DATA

    for name, config in PRESETS.items():
        assert (config.dataset, config.dataset_options) == PRESET_DATA[name], name


def test_a_dataset_typo_is_refused_before_torch_loads(tmp_path):
    """``python -m dlde.train`` re-executes itself with the portable kernels, then checks the
    dataset; neither process imports torch on the way (which is what takes seconds)."""
    environ = {key: value for key, value in os.environ.items() if key not in PORTABLE_KERNELS}
    environ.pop(SETTING_VARIABLE, None)
    environ["PYTHONPROFILEIMPORTTIME"] = "1"  # both processes list their imports
    done = subprocess.run([sys.executable, "-m", "dlde.train", "--preset", "glyphs-1000",
                           "--glyphs-classes", "5000", "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert imported.count("dlde.kernels") == 2  # the first process and its pinned re-execution
    assert "dlde.train.preflight" in imported and not any(name.split(".")[0] == "torch" for name in imported)
    assert "--glyphs-classes 5000 is more than the 1462 classes" in done.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- 2. the planner in linear memory
def _assign_classes_before(rng, counts, capacities):
    """``assign_classes`` before issue 28 (a copy of the labels per canvas), to compare outputs."""
    room = capacities.astype(np.int64).copy()
    canvases, labels = [], []
    for label in np.argsort(-counts, kind="stable"):
        count = int(counts[label])
        if count == 0:
            continue
        chosen = np.argpartition(-(room + rng.random(len(room))), count - 1)[:count] if count <= len(room) else None
        if chosen is None or room[chosen].min() <= 0:
            raise ValueError("cannot place")
        room[chosen] -= 1
        canvases.append(chosen)
        labels.append(np.full(count, label))
    canvas, label = np.concatenate(canvases), np.concatenate(labels)
    order = np.argsort(canvas, kind="stable")
    bounds = np.searchsorted(canvas[order], np.arange(len(capacities) + 1))
    return [label[order][bounds[k] : bounds[k + 1]] for k in range(len(capacities))]


@pytest.mark.parametrize("seed", range(5))
def test_the_planner_places_every_class_as_before(seed):
    draw = np.random.default_rng(seed)
    counts = np.concatenate([draw.integers(0, 12, size=30), [0, 25]])
    capacities = long_tail.objects_per_image(draw, int(counts.sum()), (3, 6))
    new = long_tail.assign_classes(np.random.default_rng([seed, 7]), counts, capacities)
    old = _assign_classes_before(np.random.default_rng([seed, 7]), counts, capacities)
    assert len(new) == len(old)
    assert all(a.dtype == b.dtype and a.tobytes() == b.tobytes() for a, b in zip(new, old))


def test_the_glyphs_100_plan_is_byte_for_byte_the_one_before():
    plan = plan_glyphs(GlyphsConfig(classes=100))
    digest = hashlib.sha256()
    for part in (plan.buckets, plan.train_counts, *plan.train_canvases, *plan.val_canvases):
        digest.update(np.ascontiguousarray(part).tobytes())
        digest.update(b"|")
    assert digest.hexdigest()[:16] == "4cbdd360f3b58a1b"  # measured on the code before issue 28


def test_the_planner_memory_is_linear_in_the_objects():
    config = GlyphsConfig(classes=300)
    tracemalloc.start()
    try:
        plan = plan_glyphs(config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    objects = int(plan.train_counts.sum()) + sum(len(labels) for labels in plan.val_canvases)
    # ~50 bytes per object now (2.8 MiB for glyphs-1000's 57,659); a copy per canvas was 1.9 GiB there.
    assert peak < 200 * objects + 2 ** 20, f"{peak / 2 ** 20:.1f} MiB for {objects} objects"


# -------------------------------------------------- 3. the folder claimed last, put back by a failed start
def test_a_start_that_fails_in_its_setup_leaves_no_folder(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no model today")

    monkeypatch.setattr(training, "build_model", broken)
    with pytest.raises(RuntimeError, match="no model today"):
        train(tiny(tmp_path, "nested/run"))
    assert not (tmp_path / "nested").exists()


def test_a_start_that_fails_before_its_first_epoch_leaves_the_folder_as_it_found_it(tmp_path, monkeypatch):
    real = training._train_epoch

    def crash(run, epoch):
        raise KeyboardInterrupt("stopped in epoch 1")

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    monkeypatch.setattr(training, "_train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "mine"))
    assert files(tmp_path / "mine") == {"notes.txt": b"mine"}
    # An overwrite that fails before its first epoch puts the run it was replacing back.
    monkeypatch.setattr(training, "_train_epoch", real)
    train(tiny(tmp_path, "old"))
    before = files(tmp_path / "old")
    monkeypatch.setattr(training, "_train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "old", seed=1, overwrite=True))
    assert files(tmp_path / "old") == before


# ------------------------------------------------------------ 4. a refused or failed resume changes nothing
def test_a_refused_or_failed_resume_changes_no_file_of_the_run(tmp_path, monkeypatch):
    train(tiny(tmp_path))
    run = tmp_path / "run"
    before = files(run)
    with pytest.raises(ValueError, match=r"lr: 0\.002 -> 0\.02"):
        train(tiny(tmp_path, resume=True, lr=0.02))
    assert files(run) == before
    monkeypatch.setattr(training, "_train_epoch", lambda run, epoch: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # fails in its first epoch, after the claim recorded the change
        train(tiny(tmp_path, resume=True, epochs=2, allow_changed=("epochs",)))
    assert files(run) == before
    (run / "checkpoint.pt").write_bytes(before["checkpoint.pt"][:1000])
    truncated = files(run)
    with pytest.raises(ValueError, match="checkpoint.pt: not a readable dlde checkpoint"):
        train(tiny(tmp_path, resume=True, epochs=2, allow_changed=("epochs",)))
    assert files(run) == truncated
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["epochs"] == 1 and "resumed_with_changes" not in record


# ------------------------------------------------------------- 6. the flag at the shell, the parameter in a notebook
def test_command_line_refusals_name_flags(tmp_path, capsys):
    train(tiny(tmp_path))
    folders = ["--run-dir", str(tmp_path / "run"), "--data-root", str(tmp_path / "data")]
    err = cli_error(capsys, ["--preset", "tiny", *folders, "--epochs", "1", "--max-train-batches", "1"])
    assert "already holds a run" in err and "--resume true" in err and "--overwrite true" in err
    assert "--run-dir" in err and "resume=True" not in err
    err = cli_error(capsys, ["--preset", "tiny", *folders, "--epochs", "1", "--max-train-batches", "1",
                             "--resume", "true", "--lr", "0.02"])
    assert "--allow-changed lr" in err and "allow_changed" not in err


def test_notebook_refusals_name_the_notebook_parameters(tmp_path):
    from dlde.pipeline import run_config as notebook
    from dlde.pipeline.lock import NOTEBOOKS_DIR, notebook_defaults
    from dlde.pipeline.run_config import train_config

    assert notebook_defaults("01_train.ipynb")["OVERWRITE"] is False
    cells = json.loads((NOTEBOOKS_DIR / "01_train.ipynb").read_text())["cells"]
    assert any("result = train_run(config)" in "".join(cell["source"]) for cell in cells)
    parameters = {"PRESET": "tiny", "EPOCHS": 1, "RUN_DIR": str(tmp_path / "run"),
                  "DATA_ROOT": str(tmp_path / "data"), "OVERRIDES_JSON": '{"max_train_batches": 1, "progress": false}'}
    notebook.train_run(train_config(parameters))
    error = refusal(lambda: notebook.train_run(train_config(parameters)), FileExistsError)
    assert "RESUME = True" in str(error) and "OVERWRITE = True" in str(error) and "RUN_DIR" in str(error)
    assert "resume=True" not in str(error)
    assert train_config({**parameters, "OVERWRITE": True}).overwrite is True
    error = refusal(lambda: notebook.train_run(train_config({**parameters, "RESUME": True, "OVERRIDES_JSON":
                                                             '{"max_train_batches": 1, "lr": 0.5}'})))
    assert "OVERRIDES_JSON = '{\"allow_changed\": [\"lr\"]}'" in str(error)
    assert "EPOCHS must be >= 1" in str(refusal(lambda: train_config({**parameters, "EPOCHS": 0})))
    error = refusal(lambda: train_config({**parameters, "OVERRIDES_JSON": '{"embedding_size": 0}'}))
    assert str(error).startswith('"embedding_size" in OVERRIDES_JSON must be >= 1')


# ---------------------------------------------------------------- 7. what a too-small pyramid level sees
def test_the_small_image_message_says_what_the_level_sees_not_to_batch_two():
    model = tiny_model(RetinaNet, fpn_levels=[3, 4], group_norm=True).eval()  # 1 channel per group
    message = str(refusal(lambda: model(torch.randn(1, 3, 8, 8))))
    assert "see nothing of the image" in message and "same scores and boxes for every image" in message
    assert "batches of two or more" not in message and "fpn_levels" in message
    # What the message says: a 1x1 map through the towers' GroupNorm gives the same output for any input
    # (up to float rounding), in a batch of two as well.
    tower = HeadTower(16, 4, 1, 16, convs=2, group_norm=True).eval()
    outputs = tower(torch.randn(2, 16, 1, 1) * 10)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-6)
