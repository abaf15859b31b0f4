"""Tests of unknown-object scores and open-set metrics on hand-computed toy cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlde.analysis.metric_plots import plot_roc, plot_score_histograms
from dlde.analysis.openset import (
    absolute_open_set_error,
    auroc,
    cosine_unknown_score,
    probability_unknown_score,
    roc_curve,
    unknown_recall_at_known_precision,
    unknown_recall_at_known_recall,
    wilderness_impact,
)
from dlde.analysis.openset_protocol import _precision_at_recall


def test_cosine_unknown_score_is_one_minus_nearest_cosine():
    means = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # last class never seen: ignored
    embeddings = torch.tensor([[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [-1.0, -1.0]])
    expected = torch.tensor([0.0, 1.0 - 2**-0.5, 1.0, 1.0 + 2**-0.5])
    torch.testing.assert_close(cosine_unknown_score(embeddings, means), expected)


def test_cosine_unknown_score_errors():
    with pytest.raises(ValueError, match="every class mean is zero"):
        cosine_unknown_score(torch.ones(2, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="are zero"):
        cosine_unknown_score(torch.zeros(1, 3), torch.ones(4, 3))
    with pytest.raises(ValueError, match="embeddings \\(N, d\\)"):
        cosine_unknown_score(torch.ones(2, 3), torch.ones(4, 2))


def test_probability_unknown_score():
    p = torch.tensor([[0.2, 0.7], [0.1, 0.1]])
    torch.testing.assert_close(probability_unknown_score(p), torch.tensor([0.3, 0.9]))


def test_auroc_counts_ties_as_half():
    # Pairs (unknown > known): 0.8 beats all 3; 0.4 beats 0.1 and 0.35 and ties 0.4 -> 5.5 / 6.
    known, unknown = [0.1, 0.4, 0.35], [0.8, 0.4]
    assert auroc(known, unknown) == pytest.approx(5.5 / 6)
    assert auroc([0.0, 0.1], [0.5, 0.9]) == 1.0
    curve = roc_curve(known, unknown)
    assert curve["auroc"] == pytest.approx(5.5 / 6)
    assert curve["fpr"][0] == 0.0 and curve["tpr"][-1] == 1.0 and curve["fpr"][-1] == 1.0


KNOWN = [0.1, 0.2, 0.3, 0.4]
UNKNOWN = [0.35, 0.9]  # sorted: K K K U K U -> kept-set precision 1, 1, 1, 3/4, 4/5, 4/6


def test_unknown_recall_at_known_precision():
    out = unknown_recall_at_known_precision(KNOWN, UNKNOWN, precision=0.8)
    assert out == pytest.approx({"unknown_recall": 0.5, "known_recall": 1.0,
                                 "known_precision": 0.8, "threshold": 0.4})
    out = unknown_recall_at_known_precision(KNOWN, UNKNOWN, precision=0.95)
    assert out == pytest.approx({"unknown_recall": 1.0, "known_recall": 0.75,
                                 "known_precision": 1.0, "threshold": 0.3})


def test_unknown_recall_at_known_precision_unreachable_flags_everything():
    out = unknown_recall_at_known_precision([0.5], [0.1])
    assert out["unknown_recall"] == 1.0 and out["known_recall"] == 0.0
    assert out["threshold"] == -math.inf and math.isnan(out["known_precision"])


def test_unknown_recall_at_known_recall():
    assert unknown_recall_at_known_recall(KNOWN, UNKNOWN, recall=0.75) == pytest.approx(
        {"unknown_recall": 1.0, "known_recall": 0.75, "threshold": 0.3})
    assert unknown_recall_at_known_recall(KNOWN, UNKNOWN, recall=1.0)["unknown_recall"] == 0.5
    assert unknown_recall_at_known_recall(KNOWN, UNKNOWN, recall=0.5)["threshold"] == 0.2
    with pytest.raises(ValueError, match="known_scores must be a non-empty"):
        unknown_recall_at_known_recall([], UNKNOWN)


def test_wilderness_impact():
    assert wilderness_impact(0.8, 0.64) == pytest.approx(0.25)
    assert wilderness_impact(0.5, 0.5) == 0.0
    np.testing.assert_allclose(wilderness_impact([0.9, 0.6], [0.9, 0.4]), [0.0, 0.5])
    with pytest.raises(ValueError, match="precision_open"):
        wilderness_impact(0.5, 0.0)


def test_precision_at_recall_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, False, True, True])
    # recalls 1/3, 1/3, 2/3, 1; precisions 1, 1/2, 2/3, 3/4
    assert _precision_at_recall(scores, correct, 3, 0.6) == pytest.approx(0.75)
    assert _precision_at_recall(scores, correct, 3, 0.3) == pytest.approx(1.0)
    assert math.isnan(_precision_at_recall(scores, correct, 4, 0.8))


def test_absolute_open_set_error_counts_unknown_objects_called_known():
    box_a, box_b = [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]
    box_c, box_d, box_e = [40.0, 0.0, 50.0, 10.0], [0.0, 40.0, 10.0, 50.0], [60, 60, 70, 70]
    targets = [
        torch.tensor([box_a + [8.0], box_b + [0.0], [-1.0] * 5]),  # A unknown, B known, padding
        torch.tensor([box_c + [9.0], box_d + [7.0], box_e + [7.0]]),  # all unknown
    ]
    detections = [
        {"boxes": torch.tensor([box_a, box_b]), "labels": torch.tensor([0, 0])},  # A counts
        {"boxes": torch.tensor([box_c, [40.0, 0.0, 50.0, 11.0], box_d]),
         "labels": torch.tensor([1, 2, -1])},  # C twice (counts once); D flagged unknown
    ]
    assert absolute_open_set_error(detections, targets, unknown_labels=[7, 8, 9]) == 2
    assert absolute_open_set_error(detections, targets, unknown_labels=[9]) == 1
    with pytest.raises(ValueError, match="detection dicts"):
        absolute_open_set_error(detections[:1], targets, [7])


def test_open_set_figures():
    fig = plot_score_histograms(KNOWN, UNKNOWN, bins=5)
    assert len(fig.axes[0].containers) == 2
    assert all(len(c) == 5 for c in fig.axes[0].containers)
    fig = plot_roc({"dlde": roc_curve(KNOWN, UNKNOWN), "sigmoid": roc_curve(UNKNOWN, KNOWN)})
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3  # chance + two models
    assert "AUROC" in lines[1].get_label()
