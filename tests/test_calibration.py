"""Tests of detection calibration (ECE, reliability curve, matching) and its figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dlde.analysis.calibration import (
    detection_calibration,
    expected_calibration_error,
    match_detections,
    reliability_curve,
)
from dlde.plots.metric_plots import plot_per_class_ap, plot_reliability


def test_perfectly_calibrated_scores_give_zero_ece():
    # 4 detections at 0.25 with 1 correct, 4 at 0.75 with 3 correct, 2 at 1.0 both correct.
    scores = [0.25] * 4 + [0.75] * 4 + [1.0] * 2
    correct = [1, 0, 0, 0] + [1, 1, 1, 0] + [1, 1]
    assert expected_calibration_error(scores, correct, bins=10) == pytest.approx(0.0, abs=1e-12)


def test_known_miscalibration_gives_known_ece():
    # All at 0.9 with accuracy 0.6: ECE = |0.6 - 0.9| = 0.3.
    scores = torch.full((10,), 0.9)
    correct = torch.tensor([True] * 6 + [False] * 4)
    assert expected_calibration_error(scores, correct) == pytest.approx(0.3, abs=1e-6)


def test_ece_weights_bins_by_count():
    # bins=2: bin 0 holds three scores 0.2 (accuracy 1/3), bin 1 one score 0.8 (accuracy 0).
    scores = [0.2, 0.2, 0.2, 0.8]
    correct = [1, 0, 0, 0]
    expected = 3 / 4 * abs(1 / 3 - 0.2) + 1 / 4 * abs(0.0 - 0.8)
    assert expected_calibration_error(scores, correct, bins=2) == pytest.approx(expected)


def test_reliability_curve_bins():
    curve = reliability_curve([0.05, 0.15, 0.95, 1.0], [0, 1, 1, 0], bins=10)
    np.testing.assert_allclose(curve["bin_edges"], np.linspace(0, 1, 11))
    assert curve["count"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 goes to the last bin
    np.testing.assert_allclose(curve["confidence"][[0, 1, 9]], [0.05, 0.15, 0.975])
    np.testing.assert_allclose(curve["accuracy"][[0, 1, 9]], [0.0, 1.0, 0.5])
    assert np.isnan(curve["accuracy"][2]) and np.isnan(curve["confidence"][2])


def test_empty_input_gives_nan_and_bad_input_raises():
    assert math.isnan(expected_calibration_error([], []))
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError, match="differ in length"):
        expected_calibration_error([0.5, 0.5], [1])
    with pytest.raises(ValueError, match="booleans"):
        expected_calibration_error([0.5], [2])


GT_BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
GT_LABELS = torch.tensor([0, 1])


def test_match_requires_class_and_iou():
    pred = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],   # exact, class 0 -> correct
        [20.0, 20.0, 30.0, 30.0],  # exact box but wrong class -> wrong
        [0.0, 0.0, 10.0, 20.0],   # IoU 0.5 with GT 0 but GT 0 already taken -> wrong
        [50.0, 50.0, 60.0, 60.0],  # no overlap -> wrong
    ])
    correct = match_detections(pred, torch.tensor([0, 0, 0, 1]), GT_BOXES, GT_LABELS)
    assert correct.tolist() == [True, False, False, False]


def test_match_iou_threshold_is_inclusive():
    pred = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # IoU exactly 100 / 200 = 0.5
    assert match_detections(pred, [0], GT_BOXES, GT_LABELS, iou=0.5).tolist() == [True]
    assert match_detections(pred, [0], GT_BOXES, GT_LABELS, iou=0.51).tolist() == [False]


def test_match_is_greedy_by_score_and_one_to_one():
    pred = torch.tensor([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 10.0]])
    labels = torch.tensor([0, 0])
    # Higher score on the looser box: it takes the object, the exact box is a duplicate.
    assert match_detections(pred, labels, GT_BOXES, GT_LABELS,
                            scores=torch.tensor([0.9, 0.3])).tolist() == [True, False]
    assert match_detections(pred, labels, GT_BOXES, GT_LABELS,
                            scores=torch.tensor([0.3, 0.9])).tolist() == [False, True]


def test_match_takes_the_best_unmatched_object():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0]])
    pred = torch.tensor([[0.0, 0.0, 10.0, 11.0], [0.0, 0.0, 10.0, 10.0]])
    # First detection picks GT 1 (IoU 1) over GT 0; second then gets GT 0.
    assert match_detections(pred, [0, 0], gt, [0, 0]).tolist() == [True, True]


def test_match_empty_and_bad_shapes():
    assert match_detections(torch.zeros(0, 4), [], GT_BOXES, GT_LABELS).shape == (0,)
    assert match_detections(GT_BOXES, GT_LABELS, torch.zeros(0, 4), []).tolist() == [False, False]
    with pytest.raises(ValueError, match="pred_boxes must have shape"):
        match_detections(torch.zeros(3), [0], GT_BOXES, GT_LABELS)


class _Oracle(nn.Module):
    """Predicts the annotation boxes of a fixed table; every other box gets label 1."""

    def __init__(self, detections):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.detections = detections
        self.calls = 0

    def predict(self, images):
        out = self.detections[self.calls:self.calls + len(images)]
        self.calls += len(images)
        return out


def test_detection_calibration_over_a_dataset():
    images = torch.zeros(3, 3, 32, 32)
    targets = [torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.0]]),
               torch.tensor([[5.0, 5.0, 20.0, 20.0, 1.0], [0.0, 0.0, 4.0, 4.0, 0.0]]),
               torch.zeros(0, 5)]
    dataset = list(zip(images, targets))
    detections = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]),
         "labels": torch.tensor([0])},  # correct
        {"boxes": torch.tensor([[5.0, 5.0, 20.0, 20.0], [0.0, 0.0, 4.0, 4.0]]),
         "scores": torch.tensor([0.8, 0.7]), "labels": torch.tensor([1, 1])},  # correct, wrong class
        {"boxes": torch.tensor([[1.0, 1.0, 3.0, 3.0]]), "scores": torch.tensor([0.6]),
         "labels": torch.tensor([0])},  # no ground truth
    ]
    result = detection_calibration(_Oracle(detections), dataset, batch_size=2)
    assert result["correct"].tolist() == [True, True, False, False]
    np.testing.assert_allclose(result["scores"], [0.9, 0.8, 0.7, 0.6])
    expected = np.mean(np.abs(np.array([1, 1, 0, 0]) - np.array([0.9, 0.8, 0.7, 0.6])))
    assert result["ece"] == pytest.approx(expected)
    assert result["curve"]["count"].sum() == 4


def test_plot_reliability_draws_one_line_and_bar_set_per_model():
    curves = {"dlde": reliability_curve([0.9] * 10, [1] * 6 + [0] * 4, bins=5),
              "sigmoid": reliability_curve([0.3, 0.7], [0, 1], bins=5)}
    fig = plot_reliability(curves)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(ax.get_lines()) == 3  # diagonal + one per model
    assert any("dlde" in label and "ECE 0.300" in label for label in labels)
    assert len(ax.containers) == 2 and all(len(c) == 5 for c in ax.containers)


def test_plot_per_class_ap_bars():
    fig = plot_per_class_ap({"a": 0.5, "b": 0.7, "c": 0.9}, title="AP")
    assert sum(len(c) for c in fig.axes[0].containers) == 3
    fig = plot_per_class_ap({"dlde": {"a": 0.5, "b": 0.7}, "sigmoid": {"a": 0.6, "b": 0.8}})
    ax = fig.axes[0]
    assert len(ax.containers) == 2 and sum(len(c) for c in ax.containers) == 4
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]


def test_detection_calibration_runs_a_real_detector():
    from helpers import tiny_model

    from dlde import DLDENetWithTrackedMeans

    model = tiny_model(DLDENetWithTrackedMeans, classes=3, fpn_levels=[3],
                       anchors={"sizes": [16], "scales": [1.0], "ratios": [1.0]},
                       means_init="orthogonal", score_threshold=0.0)  # random but detecting
    model.train()
    dataset = [(torch.rand(3, 64, 64), torch.tensor([[8.0, 8.0, 30.0, 30.0, 1.0]]))
               for _ in range(3)]
    result = detection_calibration(model, dataset, batch_size=2)
    assert model.training  # mode restored
    n = len(result["scores"])
    assert n > 0
    assert result["correct"].shape == (n,) and result["correct"].dtype == bool
    assert ((result["scores"] >= 0) & (result["scores"] <= 1)).all()
    assert result["curve"]["count"].sum() == n
    assert result["ece"] == pytest.approx(
        expected_calibration_error(result["scores"], result["correct"]))
