import json

import numpy as np
import pytest
import torch

import dlde.train.loop as training
from dlde import DLDENetWithTrackedMeans, RetinaNet
from dlde.train import PRESETS, TrainConfig, lr_lambda, main, train


def tiny(tmp_path, name="run", **overrides):
    return TrainConfig.from_dict({"run_dir": str(tmp_path / name), "data_root": str(tmp_path / "data"),
                                  **overrides}, preset="tiny")


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_writes_metrics_means_history_and_checkpoint(tmp_path):
    result = train(tiny(tmp_path))
    run_dir = result.run_dir
    rows = read_metrics(run_dir)
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        for key in ("train_loss", "val_loss", "AP", "AP50", "AP75", "lr", "time_s"):
            assert np.isfinite(row[key]), key
        assert 0.0 <= row["AP"] <= row["AP50"] <= 1.0
    history = np.load(run_dir / "means_history.npy")
    assert history.shape == (3, 3, 8)  # (epochs + 1, C, d)
    np.testing.assert_allclose(np.linalg.norm(history, axis=2), 1.0, rtol=1e-5)
    assert not np.allclose(history[0], history[-1])  # the means moved
    kappa = np.load(run_dir / "kappa_history.npy")
    assert kappa.shape == (3, 3)
    assert np.isnan(kappa[0]).all()  # orthonormal starting means: nothing tracked before training
    assert np.isfinite(kappa[1:]).all() and (kappa[1:] > 0).all()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["class_names"] == ["0", "1", "2"] and config["config"]["epochs"] == 2
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2
    model = DLDENetWithTrackedMeans.from_checkpoint(run_dir / "checkpoint.pt")
    torch.testing.assert_close(model.classification.means, torch.from_numpy(history[-1]))


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tmp_path, monkeypatch):
    reference = train(tiny(tmp_path, "reference", epochs=3)).metrics

    real_validation = training.validation_loss
    calls = {"n": 0}

    def crash_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_validation(*args, **kwargs)

    monkeypatch.setattr(training, "validation_loss", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "resumed", epochs=3))
    assert [row["epoch"] for row in read_metrics(tmp_path / "resumed")] == [1]
    monkeypatch.setattr(training, "validation_loss", real_validation)
    resumed = train(tiny(tmp_path, "resumed", epochs=3, resume=True)).metrics
    assert [row["epoch"] for row in resumed] == [1, 2, 3]
    for a, b in zip(reference, resumed):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "reference" / "means_history.npy"),
                               np.load(tmp_path / "resumed" / "means_history.npy"), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_baseline_and_manual_means_train_from_the_command_line(tmp_path, capsys):
    main(["--preset", "tiny", "--run-dir", str(tmp_path / "sig"), "--data-root", str(tmp_path / "data"),
          "--model", "retinanet", "--epochs", "1"])
    assert "AP50" in capsys.readouterr().out
    assert isinstance(RetinaNet.from_checkpoint(tmp_path / "sig" / "checkpoint.pt"), RetinaNet)
    assert not (tmp_path / "sig" / "means_history.npy").exists()
    result = train(tiny(tmp_path, "manual", means_update="manual", epochs=1))
    history = np.load(result.run_dir / "means_history.npy")
    assert history.shape == (2, 3, 8)
    np.testing.assert_allclose(np.linalg.norm(history, axis=2), 1.0, rtol=1e-5)
    # The original set-up: zero means filled by an initialising pass before training.
    result = train(tiny(tmp_path, "zeros", means_update="manual", means_init="zeros", epochs=1))
    history = np.load(result.run_dir / "means_history.npy")
    np.testing.assert_allclose(np.linalg.norm(history[0], axis=1), 1.0, rtol=1e-5)
    assert np.isfinite(np.load(result.run_dir / "kappa_history.npy")[0]).all()


def test_config_rejects_unknown_and_invalid_values():
    with pytest.raises(ValueError, match="unknown TrainConfig keys \\['epoch'\\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="model must be one of"):
        TrainConfig(model="yolo")
    with pytest.raises(ValueError, match="dataset='coco' needs"):
        TrainConfig(dataset="coco")
    config = TrainConfig.from_dict({"fpn_levels": [3, 4]}, preset="digits")
    assert config.fpn_levels == (3, 4) and config.head_options == PRESETS["digits"].head_options


def test_learning_rate_schedule_warms_up_then_decays():
    config = TrainConfig(warmup_fraction=0.1, schedule="cosine")
    factors = [lr_lambda(step, 100, config) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] < 0.01
    step = TrainConfig(warmup_fraction=0.0, schedule="step", step_milestones=(0.5,))
    assert lr_lambda(10, 100, step) == 1.0 and lr_lambda(60, 100, step) == pytest.approx(0.1)
