"""Run folders (dlde.train.runs.RunFolder) and the atomic writes under them (dlde.files)."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dlde.files import (
    atomic_save_npy,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
)
from dlde.model.checkpoints import atomic_save
from dlde.train.runs import NUMBER_NEUTRAL_FIELDS, RunFolder, load_run, run_identity

CONFIG = {"model": "dlde", "epochs": 2, "seed": 0, "lr": 0.002, "run_dir": "x", "resume": False,
          "threads": 1, "head_options": {"embedding_size": 8}}


def claim_config(**changes):
    """What :meth:`RunFolder.claim` reads of a TrainConfig."""
    values = {**CONFIG, "overwrite": False, "allow_changed": (), **changes}
    return SimpleNamespace(**values, to_dict=lambda: {k: v for k, v in values.items() if k != "allow_changed"})


def hand_made(folder, config=CONFIG, epochs=0, checkpoint=False):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"config": config, "class_names": ["a"], "category_ids": [1]}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(1, epochs + 1)))
    if checkpoint:
        (folder / "checkpoint.pt").write_bytes(b"")
    return RunFolder(folder)


# ------------------------------------------------------------------------------ dlde.files
def test_atomic_writes_give_the_bytes_of_the_plain_writers(tmp_path):
    value = {"b": [1, 2.5], "a": None}
    assert atomic_write_json(tmp_path / "v.json", value).read_text() == json.dumps(value, indent=2)
    assert atomic_write_text(tmp_path / "sub" / "t.txt", "é\n").read_bytes() == "é\n".encode()
    array = np.arange(6.0).reshape(2, 3)
    np.save(tmp_path / "plain.npy", array)
    assert atomic_save_npy(tmp_path / "a.npy", array).read_bytes() == (tmp_path / "plain.npy").read_bytes()
    atomic_save({"x": torch.ones(2)}, tmp_path / "m.pt")
    torch.testing.assert_close(torch.load(tmp_path / "m.pt", weights_only=True)["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "m.pt", "plain.npy", "sub", "v.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "v.json").stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's 0600


def test_an_atomic_write_removes_stale_temporaries_and_keeps_the_old_file_on_error(tmp_path):
    target = atomic_write_text(tmp_path / "f.txt", "old")
    (tmp_path / ".f.txt.abc.tmp").write_text("left by a kill")
    with pytest.raises(Exception, match="pickle"):
        atomic_write(target, lambda file: (file.write(b"half"), torch.save({"x": lambda: 0}, file)))  # fails mid-write
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_read_jsonl_ignores_a_torn_last_line_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == []
    path.write_text('{"epoch": 1}\n\n{"epoch": 2}\n{"epo')
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    path.write_text('{"epoch": 1}\n{"epo\n')  # a complete line that is not JSON
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not JSON"):
        read_jsonl(path)
    path.write_text('{"epo\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=r"line 1"):
        read_jsonl(path)


# ------------------------------------------------------------------------------ RunFolder
def test_number_neutral_fields_are_one_list_without_threads():
    assert "threads" not in NUMBER_NEUTRAL_FIELDS and "data_root" in NUMBER_NEUTRAL_FIELDS
    assert len(set(NUMBER_NEUTRAL_FIELDS)) == len(NUMBER_NEUTRAL_FIELDS)


def test_state_of_hand_made_folders(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.state(CONFIG) == "new" and not folder.holds_run() and folder.record() is None
    hand_made(tmp_path / "run")
    assert folder.state(CONFIG) == "new"  # same config, nothing to resume from
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    assert folder.state(CONFIG) == "partial"
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert folder.finished_epochs() == 2 and folder.is_complete(CONFIG)
    # Fields that never change the numbers do not decide; threads does.
    assert folder.state({**CONFIG, "run_dir": "y", "resume": True, "data_root": "d", "num_workers": 2}) == "complete"
    assert folder.state({**CONFIG, "threads": 2}) == "changed"
    assert folder.state({**CONFIG, "head_options": {"embedding_size": 16}}) == "changed"
    assert folder.state({**CONFIG, "epochs": 3}) == "changed"  # more epochs: resumed with allow_changed
    (tmp_path / "run" / "config.json").write_text("{not json")
    assert folder.state(CONFIG) == "changed"
    with pytest.raises(ValueError, match="not a dlde run record"):
        folder.record()


def test_head_options_compare_as_the_head_receives_them(tmp_path):
    # An old record with flat head fields equals a config leaving those options at their defaults.
    legacy = {**{k: v for k, v in CONFIG.items() if k != "head_options"}, "embedding_size": 8,
              "means_update": "batch", "means_lr": 0.003, "means_init": "orthogonal", "cosine_scale": 20.0,
              "learn_scale": False, "amp": False}
    folder = hand_made(tmp_path / "run", legacy, epochs=2)
    config = {**CONFIG, "amp": "off"}
    assert folder.config_changes(config) == {} and folder.saved_config()["amp"] == "off"
    assert folder.config_changes({**config, "head_options": {"embedding_size": 8, "means_lr": 0.01}}) == {
        "means_lr": (0.003, 0.01)}
    # Options of another head do not change this head's numbers.
    assert folder.config_changes({**config, "head_options": {"embedding_size": 8, "cosine_scale": 5.0}}) == {}
    assert run_identity({"model": "retinanet", "head_options": {"embedding_size": 8}})["prior"] == 0.01
    assert "embedding_size" not in run_identity({"model": "retinanet", "head_options": {"embedding_size": 8}})
    # Re-imprinting acts on tracked means: part of a DLDENet run's identity, not of a sigmoid head's.
    assert run_identity({"model": "dlde", "reimprint": "end"}) != run_identity({"model": "dlde", "reimprint": "off"})
    assert run_identity({"model": "retinanet", "reimprint": "end", "reimprint_buckets": ["r"]}) == run_identity(
        {"model": "retinanet", "reimprint": "off"})
    # The refit after re-imprinting: part of the run when something is re-imprinted, nothing otherwise.
    assert run_identity({"model": "dlde", "reimprint": "end", "reimprint_refit": 150}) != run_identity(
        {"model": "dlde", "reimprint": "end"})
    assert run_identity({"model": "dlde", "reimprint": "off", "reimprint_refit": 150}) == run_identity(
        {"model": "dlde", "reimprint": "off"})


def test_claim_refuses_resumes_or_overwrites(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.claim(claim_config()) is None and folder.path.is_dir()  # an empty folder is this run's
    hand_made(folder.path, epochs=1, checkpoint=True)
    (folder.path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds a run"):
        folder.claim(claim_config())
    with pytest.raises(ValueError, match=r"lr: 0\.002 -> 0\.02"):
        folder.claim(claim_config(resume=True, lr=0.02))
    assert folder.claim(claim_config(resume=True, data_root="elsewhere"))["config"] == CONFIG  # neutral field
    record = folder.claim(claim_config(resume=True, epochs=3, allow_changed=("epochs",)))
    assert record["resumed_with_changes"][0]["changed"] == {"epochs": {"from": 2, "to": 3}}
    assert json.loads(folder.config_file.read_text())["config"]["epochs"] == 3
    assert folder.claim(claim_config(overwrite=True)) is None
    assert sorted(p.name for p in folder.path.iterdir()) == ["notes.txt"]  # only the run's own files went
    folder.metrics_file.write_text('{"epoch": 1}\n')
    with pytest.raises(FileExistsError, match="no config.json"):
        folder.claim(claim_config(resume=True))


def test_writes_and_load_round_trip(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="dlde run folder"):
        folder.load()
    folder.write_record({"config": CONFIG, "class_names": ["a", "b"], "category_ids": [1, 2]})
    folder.write_metrics([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}])
    folder.write_histories([], [])
    assert not (folder.path / "means_history.npy").exists()
    folder.write_histories([np.zeros((2, 3)), np.ones((2, 3))], [np.zeros(2), np.ones(2)])
    folder.save_checkpoint({"epoch": 2})
    assert folder.metrics_file.read_text() == '{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "loss": 0.25}\n'
    assert json.loads(folder.config_file.read_text())["class_names"] == ["a", "b"]
    run = load_run(folder.path)
    assert run.config == CONFIG and run.category_ids == [1, 2] and run.last == {"epoch": 2, "loss": 0.25}
    assert run.means_history.shape == (2, 2, 3) and run.kappa_history.shape == (2, 2)
    assert torch.load(run.checkpoint, weights_only=True) == {"epoch": 2}
    assert sorted(p.name for p in folder.path.iterdir()) == sorted(RunFolder.FILES)
