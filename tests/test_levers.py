"""The levers that make tracked means track at many classes (issue 25): centering, the count-aware
rate with a floor and a warm-up, re-imprinting, a scale that learns, and the per-epoch diagnostics."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dlde.data.transforms import collate
from dlde.model.directional import DirectionalClassification
from dlde.model.means import TrackedMeans, mean_embedding_norm, means_diagnostics
from dlde.model.tracking import matched_embeddings
from dlde.train import TrainConfig, train
from dlde.train.builders import build_datasets, build_model
from dlde.train.reimprint import bucket_mask, reimprint, reimprint_run


# ------------------------------------------------------------------------------------ centering
def shared_direction_batches(classes: int, d: int, batches: int, seed: int = 0):
    """Batches of unit embeddings that share one large common direction ``u`` (as a freshly
    initialised encoder's do), each class adding a small direction of its own: ``0.95 u + 0.3 v_c``
    plus noise. Every batch holds every class."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, classes + 1, generator=generator, dtype=torch.float64)).Q.t().float()
    common, own = basis[0], basis[1:]  # (d,), (C, d)
    labels = torch.arange(classes).repeat(4)  # (4 C,)
    for _ in range(batches):
        noise = 0.05 * torch.randn(len(labels), d, generator=generator)
        yield F.normalize(0.95 * common + 0.3 * own[labels] + noise, dim=1), labels


def min_angle(means) -> float:
    return means_diagnostics(means, means)["means_min_angle"]


def test_centering_keeps_fast_means_apart_where_they_collapse_without_it():
    classes, d = 10, 16
    results = {}
    for momentum in (0.0, 0.9):
        means = TrackedMeans(classes, d, lr=0.1, lr_schedule="seen", center_momentum=momentum)
        means.initialize("orthogonal", generator=torch.Generator().manual_seed(0))
        for embeddings, labels in shared_direction_batches(classes, d, 50):
            means.update(means.centered(embeddings), labels, raw=embeddings)
        results[momentum] = min_angle(means.means)
    # Without centering the means take the shared direction: the angle of 0.95 u + 0.3 v_c pairs, ~25°.
    assert results[0.0] < 30.0
    # Centered, each mean is its class's own direction less their mean: ~96° apart (arccos(-1/9)).
    assert results[0.9] > 60.0


def test_the_center_starts_at_the_first_batch_then_runs_and_the_batch_is_tracked_against_it():
    means = TrackedMeans(3, 4, center_momentum=0.5, lr=1.0)
    raw = F.normalize(torch.tensor([[1.0, 0, 0, 0], [1.0, 1.0, 0, 0]]), dim=1)
    means.update(raw, torch.tensor([0, 1]), raw=raw)
    torch.testing.assert_close(means.center, raw.mean(0))  # the first batch sets it (not 0.5 of it)
    # Tracked (step 1) against the moved center, not the zero one the batch was scored with.
    torch.testing.assert_close(means.means[:2], F.normalize(raw - raw.mean(0), dim=1))
    other = F.normalize(torch.tensor([[0, 0, 1.0, 0]]), dim=1)
    means.update(other, torch.tensor([2]), raw=other)
    torch.testing.assert_close(means.center, 0.5 * raw.mean(0) + 0.5 * other[0])
    means.update(other, torch.tensor([2]))  # no raw embeddings: the center stays
    torch.testing.assert_close(means.center, 0.5 * raw.mean(0) + 0.5 * other[0])
    torch.testing.assert_close(means.centered(raw), F.normalize(raw - means.center, dim=1))
    assert TrackedMeans(3, 4).centered(raw) is raw  # no centering: the embeddings as they are
    with pytest.raises(FloatingPointError):
        means.update(other, torch.tensor([2]), raw=torch.full_like(other, float("nan")))
    torch.testing.assert_close(means.center, 0.5 * raw.mean(0) + 0.5 * other[0])  # refused: unchanged


def test_options_add_their_buffers_only_when_on():
    assert set(TrackedMeans(3, 4).state_dict()) == {"means", "embeddings_sums"}
    on = TrackedMeans(3, 4, lr_schedule="seen", center_momentum=0.9, warmup=2)
    assert set(on.state_dict()) == {"means", "embeddings_sums", "seen_counts", "center", "steps"}
    for bad in ({"center_momentum": 1.0}, {"center_momentum": -0.1}, {"warmup": -1},
                {"mode": "manual", "lr_schedule": "seen"}, {"mode": "manual", "warmup": 2}):
        with pytest.raises(ValueError):
            TrackedMeans(3, 4, **bad)


# ------------------------------------------------------------------------------------ the rate
def test_seen_rate_is_the_count_weighted_running_mean_with_a_floor():
    means = TrackedMeans(2, 3, lr=1e-6, lr_schedule="seen")
    means.initialize("orthogonal", generator=torch.Generator().manual_seed(0))
    start = means.means.clone()
    first = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])  # two of class 0, one of class 1
    means.update(first, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(means.means, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))  # step 1: the start goes
    second = torch.tensor([[0, 0, 1.0]])  # one more of class 0: step 1 / 3
    means.update(second, torch.tensor([0]))
    expected = F.normalize(2 / 3 * torch.tensor([1.0, 0, 0]) + 1 / 3 * torch.tensor([0, 0, 1.0]), dim=0)
    torch.testing.assert_close(means.means[0], expected)
    assert means.seen_counts.tolist() == [3, 1]
    assert not torch.equal(start, means.means)

    floored = TrackedMeans(1, 3, lr=0.5, lr_schedule="seen")  # after 9 embeddings, 1/10 < 0.5: the floor
    floored.means.copy_(torch.tensor([[1.0, 0, 0]]))
    floored.seen_counts.fill_(9)
    floored.update(torch.tensor([[0, 1.0, 0]]), torch.tensor([0]))
    torch.testing.assert_close(floored.means[0], F.normalize(torch.tensor([0.5, 0.5, 0]), dim=0))


def test_warmup_keeps_the_means_at_their_start_while_the_center_moves():
    means = TrackedMeans(2, 3, lr=0.5, center_momentum=0.5, warmup=2)
    means.initialize("orthogonal", generator=torch.Generator().manual_seed(0))
    start = means.means.clone()
    raw = torch.tensor([[0, 0, 1.0], [0, 1.0, 0]])
    for step in range(3):
        means.update(means.centered(raw), torch.tensor([0, 1]), raw=raw)
        assert torch.equal(means.means, start) == (step < 2), step
        assert means.center.norm() > 0
    assert int(means.steps) == 2


def test_labels_outside_the_classes_are_refused_naming_labels_and_classes():
    means = TrackedMeans(2, 3)
    means.initialize("orthogonal")
    before = means.means.clone()
    for bad in (-1, 2, 5):
        with pytest.raises(ValueError, match=rf"classes 0..1 of these 2 means; got \[{bad}\]"):
            means.update(torch.ones(2, 3), torch.tensor([0, bad]))
    assert torch.equal(means.means, before) and int(means.stat_counts.sum()) == 0


# ------------------------------------------------------------------------------------ the head
def head(**options) -> DirectionalClassification:
    return DirectionalClassification(8, 6, 1, 8, 4, **options)


def test_the_head_centers_what_it_scores_and_tracks():
    model = head(center_momentum=0.9)
    features = [torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(1))]
    raw = model.embed_raw(features)
    torch.testing.assert_close(model.embed(features), raw)  # the center starts at zero
    model.tracker.center.copy_(raw.mean(dim=(0, 1)))
    torch.testing.assert_close(model.embed(features), F.normalize(raw - model.tracker.center, dim=-1))
    assert model.options()["center_momentum"] == 0.9 and "tracker.center" in model.state_dict()
    assert "tracker.center" not in head().state_dict()


def test_a_training_forward_moves_the_center_and_an_evaluation_does_not():
    model = build_model(TrainConfig.from_dict({"center_momentum": 0.5}, preset="tiny"), 3)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    annotations = torch.tensor([[[4.0, 4.0, 30.0, 30.0, 1.0]], [[20.0, 20.0, 50.0, 50.0, 2.0]]])
    model.eval()
    model(images)
    assert model.tracked_means.center.norm() == 0
    model.train()
    model(images, annotations)
    assert model.tracked_means.center.norm() > 0

def test_a_log_scale_gives_the_same_start_and_moves_w_by_a_share_of_itself():
    linear, log = head(init_weight=14.0), head(init_weight=14.0, weight_param="log")
    log.load_state_dict({**linear.state_dict(), "weight": linear.weight.detach().log()})
    torch.testing.assert_close(log.scales(), linear.scales())
    embeddings = F.normalize(torch.randn(5, 6), dim=1)
    linear.tracker.initialize("orthogonal", generator=torch.Generator().manual_seed(0))
    log.tracker.means.copy_(linear.tracker.means)
    torch.testing.assert_close(log.classify(embeddings), linear.classify(embeddings))
    for model in (linear, log):  # one Adam step of 0.01 on -sum(p): w grows by 0.01, or by 1 %
        optimizer = torch.optim.Adam([model.weight], lr=0.01)
        (-model.classify(embeddings).sum()).backward()
        optimizer.step()
    assert linear.scales()[0].item() == pytest.approx(14.0 + 0.01, abs=1e-4) or \
        linear.scales()[0].item() == pytest.approx(14.0 - 0.01, abs=1e-4)
    assert abs(log.scales()[0].item() / 14.0 - 1) == pytest.approx(0.01, abs=1e-4)
    with pytest.raises(ValueError, match="weight_param"):
        head(weight_param="exp")


# ------------------------------------------------------------------------------------ diagnostics
def test_diagnostics_of_orthonormal_means_and_their_drift_by_bucket():
    start = torch.eye(4)
    moved = start.clone()
    moved[3] = F.normalize(torch.tensor([1.0, 0, 0, 1.0]), dim=0)  # 45° from its start, 45° from class 0
    row = means_diagnostics(moved, start, ["r", "r", "f", "f"])
    assert row["means_min_angle"] == pytest.approx(45.0)
    assert row["means_median_angle"] == pytest.approx(90.0)
    assert row["means_cos_to_start_r"] == pytest.approx(1.0)
    assert row["means_cos_to_start_f"] == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert row["means_cos_to_start"] == pytest.approx((3 + math.sqrt(0.5)) / 4)
    assert mean_embedding_norm(torch.tensor([3.0, 0.0]), 3) == pytest.approx(1.0)  # all one way
    assert mean_embedding_norm(torch.zeros(2), 0) is None


# ------------------------------------------------------------------------------------ re-imprinting
TINY = {"epochs": 1, "progress": False, "threads": 1, "digits_train_images": 16, "digits_val_images": 8}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reimprint")
    config = TrainConfig.from_dict({**TINY, "run_dir": str(folder / "run"), "data_root": str(folder / "data"),
                                    "center_momentum": 0.9}, preset="tiny")
    return config, train(config)


def test_reimprinting_sets_every_mean_to_the_normalized_centered_class_sum(tiny_run):
    config, result = tiny_run
    model = result.model
    train_set, _ = build_datasets(config)
    sums = torch.zeros_like(model.tracked_means.means)
    model.eval()
    with torch.no_grad():  # by hand: every training image, one at a time
        for index in range(len(train_set)):
            images, annotations = collate([train_set[index]])
            embeddings, labels = matched_embeddings(model, images, annotations)
            sums.index_add_(0, labels, embeddings)
    report = reimprint(model, train_set, config, "cpu")
    seen = sums.norm(dim=1) > 0
    assert report["reimprinted"] == int(seen.sum()) > 0
    torch.testing.assert_close(model.tracked_means.means[seen], F.normalize(sums[seen], dim=1), rtol=0, atol=1e-5)


def test_without_centering_reimprinting_takes_the_mean_embedding_off_the_class_sums(tmp_path):
    config = TrainConfig.from_dict({**TINY, "run_dir": str(tmp_path / "run"), "data_root": str(tmp_path / "data")},
                                   preset="tiny")
    model = train(config).model
    train_set, _ = build_datasets(config)
    collected, labels = [], []
    model.eval()
    with torch.no_grad():
        for index in range(len(train_set)):
            embeddings, batch_labels = matched_embeddings(model, *collate([train_set[index]]))
            collected.append(embeddings)
            labels.append(batch_labels)
    embeddings, labels = torch.cat(collected), torch.cat(labels)
    centered = embeddings - embeddings.mean(0)  # by hand: every matched embedding less their mean
    expected = torch.zeros_like(model.tracked_means.means).index_add_(0, labels, centered)
    reimprint(model, train_set, config, "cpu")
    seen = torch.bincount(labels, minlength=len(expected)) > 0
    torch.testing.assert_close(model.tracked_means.means[seen], F.normalize(expected[seen], dim=1), rtol=0, atol=1e-4)


def test_refitting_after_reimprinting_fits_only_the_scale_and_bias_and_lowers_the_loss(tiny_run):
    import copy

    from dlde.train.reimprint import refit_scores

    config, result = tiny_run
    model = copy.deepcopy(result.model)
    train_set, _ = build_datasets(config)
    reimprint(model, train_set, config, "cpu")
    model.train()  # refitting works in eval mode and gives the mode back
    before = {name: value.clone() for name, value in model.state_dict().items()}
    report = refit_scores(model, train_set, config, "cpu", steps=12)  # 2 images per batch of 8: 6 passes
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == {"classification.weight", "classification.bias"}  # no mean, encoder or BatchNorm statistic
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert report["reimprint_refit"] == 12 and report["refit_loss_last"] < report["refit_loss_first"]


def test_reimprinting_chosen_buckets_only_and_refusing_buckets_without_frequencies(tiny_run):
    config, result = tiny_run
    train_set, _ = build_datasets(config)
    assert bucket_mask(None, None, 3) is None
    with pytest.raises(ValueError, match="frequency buckets"):
        reimprint(result.model, train_set, config, "cpu", buckets=("r",))  # the digits have none
    with pytest.raises(ValueError, match="among"):
        bucket_mask(["r", "f", "f"], ("x",), 3)
    assert bucket_mask(["r", "f", "c"], ("r", "c"), 3).tolist() == [True, False, True]


def test_a_finished_run_is_reimprinted_without_changing_its_folder(tiny_run):
    config, result = tiny_run
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in result.run_dir.iterdir() if p.is_file()}
    model, report = reimprint_run(result.run_dir)
    assert report["reimprinted"] > 0 and not model.training
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in result.run_dir.iterdir() if p.is_file()} == files


@pytest.mark.slow
def test_training_reimprints_at_the_end_and_writes_the_diagnostics_every_epoch(tmp_path, capsys):
    config = TrainConfig.from_dict({**TINY, "epochs": 2, "run_dir": str(tmp_path / "run"),
                                    "data_root": str(tmp_path / "data"), "reimprint": "end", "reimprint_refit": 3,
                                    "means_lr_schedule": "seen", "means_lr": 0.03, "center_momentum": 0.9,
                                    "weight_param": "log"}, preset="tiny")
    result = train(config)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "reimprinted" not in rows[0] and rows[1]["reimprinted"] > 0
    assert 0 < rows[1]["reimprint_s"] < rows[1]["train_time_s"] and "reimprint_s" not in rows[0]
    assert rows[1]["reimprint_refit"] == 3 and "refit_loss_last" not in rows[0]
    for row in rows:
        for key in ("mean_embedding_norm", "means_min_angle", "means_median_angle", "means_cos_to_start",
                    "w_mean", "w_min", "w_max"):
            assert isinstance(row[key], float), key
    # The saved model is the re-imprinted one, and it reloads with its options.
    model = build_model(config, 3)
    model.load_state_dict(torch.load(result.run_dir / "checkpoint.pt", weights_only=True)["model"])
    torch.testing.assert_close(model.tracked_means.means, result.model.tracked_means.means)
    # A head without tracked means trains under the same config (a preset's), re-imprinting nothing, and says so.
    sigmoid = train(config.updated({"model": "retinanet", "run_dir": str(tmp_path / "sigmoid"), "epochs": 1,
                                    "progress": True}))
    assert "nothing to re-imprint" in capsys.readouterr().out
    rows = [json.loads(line) for line in (sigmoid.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "reimprinted" not in rows[0] and "means_min_angle" not in rows[0]


# ------------------------------------------------------------------------------------ sweep tables
def test_sweep_tables_add_what_the_means_did_when_the_runs_recorded_it(tmp_path):
    from dlde.analysis.sweep_stats import run_summary, summarize_arms
    from dlde.reports.sweeps import diagnostics_table, sweep_markdown

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"config": {"model": "dlde", "epochs": 2}, "class_names": ["a"],
                                                    "category_ids": [1]}))
    rows = [{"epoch": 1, "train_images": 100, "AP": 0.1},
            {"epoch": 2, "train_images": 120, "AP": 0.2, "means_cos_to_start_r": 0.99, "means_cos_to_start_f": 0.5,
             "mean_embedding_norm": 0.3, "w_mean": 14.5}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_summary(folder)
    assert (summary["cos_start_r"], summary["cos_start_f"], summary["embedding_norm"], summary["w"],
            summary["images"]) == (0.99, 0.5, 0.3, 14.5, 220.0)
    assert "cos_start_c" not in summary
    table = summarize_arms({"dlde": [summary, {**summary, "w": 15.5}], "retinanet": [{"AP": 0.3, "images": 220.0}]})
    text = diagnostics_table(table)
    header, _, dlde, retinanet = text.splitlines()
    assert "cos to start, common" not in header and "cos to start, rare mean ± sd" in header
    assert "| 15.0 ± 0.7 [8.6, 21.4] |" in dlde and dlde.endswith("| 220 ± 0 [220, 220] |")
    assert retinanet == "| retinanet | 1 |  |  |  |  | 220 |"  # no means: blank; one seed: no interval
    assert text in sweep_markdown("s", table)
    assert diagnostics_table(summarize_arms({"a": [{"AP": 0.5}]})) is None  # older runs: one table, as before


def test_the_csv_and_the_table_show_the_same_diagnostics(tmp_path):
    import csv

    from dlde.analysis.sweep_stats import summarize_arms
    from dlde.reports.sweeps import diagnostics_table, shown_diagnostics, write_csv

    nan = float("nan")
    seeds = [{"AP": 0.2, "w": 14.0, "cos_start_r": nan}, {"AP": 0.3, "w": 15.0, "cos_start_r": nan}]
    rows = summarize_arms({"dlde": seeds, "retinanet": [{"AP": 0.4}]})
    assert "cos_start_r_mean" in rows[0]  # recorded, but no arm has a number for it
    assert shown_diagnostics(rows) == ["w"]
    with write_csv(rows, tmp_path / "s.csv").open() as handle:
        columns = next(csv.reader(handle))
    assert [c for c in columns if c.startswith(("w_", "cos_start"))] == ["w_mean", "w_sd", "w_low", "w_high"]
    assert "cos to start" not in diagnostics_table(rows)


# ------------------------------------------------------------------------------------ anchor terms
def test_anchor_terms_shift_and_scale_each_anchor_s_logits_as_owl_vit_does():
    model = head(anchor_terms=True, init_weight=14.0)
    model.tracker.initialize("orthogonal", generator=torch.Generator().manual_seed(0))
    assert model.encoder.last.out_channels == 1 * (6 + 2)  # one anchor: the embedding, a shift, a scale
    embeddings = F.normalize(torch.randn(5, 6, generator=torch.Generator().manual_seed(2)), dim=1)
    cosines = embeddings @ model.tracker.means.t()
    terms = torch.tensor([[0.5, 0.0]]).expand(5, 2)  # shift 0.5, scale elu(0) + 1 = 1
    torch.testing.assert_close(model.classify(embeddings, terms), torch.sigmoid(14.0 * (cosines - 0.5 + 0.5)))
    doubled = torch.tensor([[0.0, 1.0]]).expand(5, 2)  # scale elu(1) + 1 = 2
    torch.testing.assert_close(model.classify(embeddings, doubled), torch.sigmoid(28.0 * (cosines - 0.5)))
    torch.testing.assert_close(model.classify(embeddings), torch.sigmoid(14.0 * (cosines - 0.5)))  # no terms


def test_a_detector_with_anchor_terms_trains_every_parameter():
    model = build_model(TrainConfig.from_dict({"anchor_terms": True, "center_momentum": 0.9}, preset="tiny"), 3)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    annotations = torch.tensor([[[4.0, 4.0, 30.0, 30.0, 1.0]], [[20.0, 20.0, 50.0, 50.0, 2.0]]])
    model.train()
    output = model(images, annotations)
    losses = model.loss(*output, annotations, assignment=output.assignment)
    (losses["classification"] + losses["bbox_regression"]).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert model.classification.encoder.last.weight.grad.abs().sum() > 0


def test_the_levers_options_are_refused_when_the_config_is_made():
    from dlde.errors import ConfigError

    for bad, key in (({"center_momentum": 1.0}, "center_momentum"), ({"means_warmup": -1}, "means_warmup"),
                     ({"weight_param": "exp"}, "weight_param"), ({"reimprint": "sometimes"}, "reimprint"),
                     ({"reimprint_buckets": ["x"]}, "reimprint_buckets"),
                     ({"reimprint_buckets": []}, "reimprint_buckets"), ({"reimprint_refit": -1}, "reimprint_refit"),
                     ({"classification_loss": "ce"}, "classification_loss"), ({"efl_scale": 0.0}, "efl_scale")):
        with pytest.raises(ConfigError, match=key):
            TrainConfig.from_dict(bad, preset="tiny")


def test_tracking_curves_read_what_the_means_did_against_the_images_trained(tmp_path):
    import numpy as np

    from dlde.plots.vocabulary_plots import plot_tracking
    from dlde.protocols.vocabulary import tracking_curves

    def run(folder, w):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"config": {"model": "dlde", "epochs": 2},
                                                        "class_names": ["a", "b"], "category_ids": [1, 2]}))
        rows = [{"epoch": e, "train_images": 100, "means_min_angle": 80.0 - e, "means_cos_to_start_r": 1.0,
                 "means_cos_to_start_f": 1.0 - 0.1 * e, "mean_embedding_norm": 0.5, "w_mean": w} for e in (1, 2)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        np.save(folder / "means_history.npy", np.stack([np.eye(2)] * 3))
        return folder

    curves = tracking_curves({"dlde": [run(tmp_path / "a", 14.0), run(tmp_path / "b", 15.0)],
                              "none": [tmp_path / "missing"]})
    assert list(curves) == ["dlde"]
    dlde = curves["dlde"]
    assert dlde["images"].tolist() == [[0, 100, 200]] * 2
    assert dlde["min_angle"][0].tolist() == [90.0, 79.0, 78.0]  # before training: from the starting means
    assert dlde["cos_start_f"][0].tolist() == pytest.approx([1.0, 0.9, 0.8])
    assert np.isnan(dlde["cos_start_c"]).all() and np.isnan(dlde["w"][:, 0]).all()
    assert dlde["w"][:, 1].tolist() == [14.0, 15.0]
    figure = plot_tracking(curves, title="t")
    assert len(figure.axes) == 4


def test_the_reimprint_command_prints_before_and_after_and_never_overwrites(tiny_run, tmp_path, capsys):
    from dlde.train.reimprint_cli import main

    _, result = tiny_run
    out = tmp_path / "reimprint.json"
    numbers = main([str(result.run_dir), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out) == json.loads(json.dumps(numbers))
    assert numbers["before"]["AP"] == result.metrics[-1]["AP"] and set(numbers["after"]) >= {"AP", "AP50"}
    assert numbers["reimprinted"] > 0
    with pytest.raises(SystemExit):
        main([str(result.run_dir), "--out", str(out)])  # the file exists: refused, kept
    assert json.loads(out.read_text())["before"] == numbers["before"]
    refit = main([str(result.run_dir), "--refit", "2"])
    assert refit["reimprint_refit"] == 2 and refit["before"] == numbers["before"]


# ------------------------------------------------------------------------------------ equal time
def test_equal_time_gives_each_head_the_reference_heads_seconds_less_its_reimprinting():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "equal_time.py"
    spec = importlib.util.spec_from_file_location("equal_time", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [{"head": "retinanet", "step_s": 0.6, "reimprint_s": None, "steps": 1149, "epochs": 3},
            {"head": "dlde", "step_s": 0.5, "reimprint_s": 47.0, "steps": 1149, "epochs": 3}]
    table = module.budget_table(rows, "retinanet")
    # 1149 steps at 0.6 s are 689.4 s; DLDENet: (689.4 - 47) / 0.5 = 1285 steps, 3.35 epochs of 383.
    assert "| dlde | 0.500 | 0.83 | 47.0 | 1149 in 3 | 1285 | 3.35 |" in table
    assert "| retinanet | 0.600 | 1.00 | – | 1149 in 3 | 1149 | 3.00 |" in table
