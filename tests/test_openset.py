"""Tests of unknown-object scores and open-set metrics on hand-computed toy cases."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from dlde.analysis.openset import (
    absolute_open_set_error,
    auroc,
    concentration_about,
    cosine_unknown_score,
    energy_unknown_score,
    exceeds,
    knn_unknown_score,
    known_recall_threshold,
    log_odds,
    probability_unknown_score,
    roc_curve,
    unknown_recall_at_known_precision,
    unknown_recall_at_known_recall,
    vmf_log_normalizer,
    vmf_unknown_score,
    wilderness_impact,
)
from dlde.analysis.retrieval import EmbeddingIndex
from dlde.analysis.stats import t_interval
from dlde.inference.unknown_flag import UnknownFlag, calibrate_unknown_flag
from dlde.plots.fewshot_plots import plot_unknown_scores
from dlde.plots.metric_plots import plot_roc, plot_score_histograms
from dlde.protocols.openset import (
    SCORES,
    OpenSetResult,
    PooledOpenSet,
    _flagged,
    _precision_at_recall,
    open_set_evaluation,
    pool_open_set,
)
from dlde.protocols.tables import open_set_table
from dlde.tables import interval_cell


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


# ------------------------------------------------------------------ scores from the class statistics
def log_normalizer_by_integration(kappa, d):
    """``log C_d(κ)`` from ``1 / C_d(κ) = |S^{d-2}| ∫_{-1}^{1} e^{κt} (1 - t²)^{(d-3)/2} dt``, integrated
    in log space around the integrand's peak ``t*``."""
    from scipy.integrate import quad
    from scipy.special import gammaln

    def log_integrand(t):
        return kappa * t + (d - 3) / 2 * np.log1p(-t * t)

    peak = 0.0 if kappa == 0 else (-(d - 3) + math.sqrt((d - 3) ** 2 + 4 * kappa**2)) / (2 * kappa)
    top = log_integrand(peak)
    integral, _ = quad(lambda t: math.exp(log_integrand(t) - top), -1, 1, points=[peak], epsabs=0, epsrel=1e-12,
                       limit=500)
    log_sphere = math.log(2) + (d - 1) / 2 * math.log(math.pi) - gammaln((d - 1) / 2)  # log |S^{d-2}|
    return -(log_sphere + top + math.log(integral))


def test_vmf_log_normalizer_closed_forms():
    kappa = np.array([1e-3, 0.5, 1.0, 10.0, 100.0, 1e4])
    log_sinh = kappa + np.log1p(-np.exp(-2 * kappa)) - math.log(2)
    np.testing.assert_allclose(vmf_log_normalizer(kappa, 3), np.log(kappa) - math.log(4 * math.pi) - log_sinh,
                               rtol=1e-12)  # C_3 = κ / (4π sinh κ)
    from scipy.special import i0

    np.testing.assert_allclose(vmf_log_normalizer(kappa[:5], 2), -np.log(2 * math.pi * i0(kappa[:5])), rtol=1e-12)
    # κ = 0 is the uniform density 1 / |S^{d-1}|; NaN (no estimate) stays NaN
    np.testing.assert_allclose(vmf_log_normalizer([0.0, 0.0], 3), [-math.log(4 * math.pi)] * 2, rtol=1e-14)
    np.testing.assert_allclose(vmf_log_normalizer(0.0, 2), -math.log(2 * math.pi), rtol=1e-14)
    assert np.isnan(vmf_log_normalizer([np.nan, 1.0], 8)[0])
    with pytest.raises(ValueError, match="kappa must be finite"):
        vmf_log_normalizer([-1.0], 3)
    with pytest.raises(ValueError, match="d >= 2"):
        vmf_log_normalizer([1.0], 1)


@pytest.mark.parametrize("d, kappa", [(5, 0.5), (5, 30.0), (32, 1e-6), (32, 10.0), (32, 500.0), (128, 0.0),
                                      (128, 3.0), (128, 1e4), (1024, 100.0), (1024, 2000.0)])
def test_vmf_log_normalizer_matches_numeric_integration(d, kappa):
    expected = log_normalizer_by_integration(kappa, d)
    assert vmf_log_normalizer(kappa, d) == pytest.approx(expected, rel=1e-9, abs=1e-8)


def test_vmf_log_normalizer_stable_for_large_kappa_and_d():
    from scipy.special import ive

    assert ive(1024 / 2 - 1, 100.0) < 1e-300  # d = 1024, κ = 100 takes the asymptotic expansion ...
    assert np.isfinite(vmf_log_normalizer(100.0, 1024))  # ... and stays finite (tested against the integral above)
    kappa = np.array([1e4, 1e6, 1e8, 6e8])  # 6e8 ~ the largest κ̂ the clipped mean resultant length gives
    values = vmf_log_normalizer(kappa, 128)
    assert np.isfinite(values).all()
    # log C_d(κ) -> (d - 1)/2 log κ - κ - (d - 1)/2 log 2π for large κ
    asymptote = 127 / 2 * np.log(kappa) - kappa - 127 / 2 * math.log(2 * math.pi)
    np.testing.assert_allclose(values - asymptote, 0.0, atol=0.2)
    assert abs(values[-1] - asymptote[-1]) < 1e-5
    # the expansion and the scaled Bessel function agree where both hold (v = 199)
    from dlde.analysis.openset import _log_bessel_iv_debye

    k = np.array([30.0, 199.0, 1000.0])
    np.testing.assert_allclose(_log_bessel_iv_debye(199.0, k), np.log(ive(199.0, k)) + k, rtol=1e-12)


def test_vmf_score_uses_the_concentration():
    means = torch.eye(3)[:2]  # classes along e0 and e1 of R^3
    at_cos = lambda c, axis: torch.tensor([[c, 0.0, math.sqrt(1 - c * c)]])[:, [axis, 1 - axis, 2]]  # noqa: E731
    # equal κ: a point near a class is less unknown than one between the classes
    near, between = torch.tensor([[0.999, 0.0447, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    scores = vmf_unknown_score(torch.cat([near, between]), means, [200.0, 200.0])
    assert scores[0] < scores[1]
    # a point at cosine 0.9 of a concentrated class (κ 1000) is less likely than at 0.9 of a broad one (κ 5)
    # (the cosine score ties them); log C_3(κ) + κ cos by hand, the other class (cosine 0) the maximum or not
    kappa = np.array([1000.0, 5.0])
    log_c = np.log(kappa) - math.log(4 * math.pi) - (kappa + np.log1p(-np.exp(-2 * kappa)) - math.log(2))
    points = torch.cat([at_cos(0.9, 0), at_cos(0.9, 1), at_cos(1.0, 0)])
    expected = -np.maximum(log_c + kappa * np.array([[0.9, 0.0], [0.0, 0.9], [1.0, 0.0]]), -np.inf).max(axis=1)
    torch.testing.assert_close(vmf_unknown_score(points, means, kappa), torch.from_numpy(expected).double())
    assert expected[0] > expected[1] > expected[2]
    torch.testing.assert_close(cosine_unknown_score(points[:2], means), torch.full((2,), 0.1))


def test_vmf_score_leaves_out_classes_without_concentration_or_mean():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    points = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    only_second = vmf_unknown_score(points, means[1:2], [3.0])
    torch.testing.assert_close(vmf_unknown_score(points, means, [np.nan, 3.0, 7.0]), only_second)
    with pytest.raises(ValueError, match="no class has both"):
        vmf_unknown_score(points, means, [np.nan, np.nan, 1.0])
    with pytest.raises(ValueError, match="kappa"):
        vmf_unknown_score(points, means, [1.0, 2.0])
    with pytest.raises(ValueError, match="are zero"):
        vmf_unknown_score(torch.zeros(1, 2), means, [1.0, 1.0, 1.0])


def test_concentration_about_a_given_direction():
    theta = 0.3
    e = torch.tensor([[math.cos(theta), math.sin(theta)], [math.cos(theta), -math.sin(theta)],  # class 0
                      [0.0, 1.0],  # class 1: one embedding
                      [-1.0, 0.0], [-0.8, 0.6]])  # class 2: pointing away from its direction
    labels = torch.tensor([0, 0, 1, 2, 2])
    directions = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    kappa = concentration_about(e, labels, directions)
    r = math.cos(theta)
    assert kappa[0] == pytest.approx(r * (2 - r**2) / (1 - r**2))  # Banerjee's κ̂ with R̄ = mean cosine
    assert np.isnan(kappa[1]) and kappa[2] == 0.0 and np.isnan(kappa[3])  # 1 sample, R̄ < 0, no direction


def test_energy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), -math.inf]])
    torch.testing.assert_close(energy_unknown_score(logits), torch.tensor([-math.log(4.0), -math.log(2.0)]).double())
    torch.testing.assert_close(energy_unknown_score(logits[:1], temperature=2.0),
                               torch.tensor([-2 * math.log(1 + math.sqrt(3.0))]).double())
    for bad in ([[math.nan, 0.0]], [[math.inf, 0.0]], [[-math.inf, -math.inf]]):
        with pytest.raises(ValueError, match="logits must be finite"):
            energy_unknown_score(torch.tensor(bad))
    with pytest.raises(ValueError, match="temperature"):
        energy_unknown_score(logits, temperature=0.0)


def test_log_odds_are_each_heads_logits():
    z = torch.linspace(-10, 10, 41)
    error = (log_odds(torch.sigmoid(z)[None])[0] - z.double()).abs()  # sigmoid heads: the pre-sigmoid values ...
    assert (error <= 2.0**-23 * (1 + z.double().exp()) + 1e-6).all()  # ... up to the float32 rounding of p
    p = log_odds(torch.tensor([[0.5, 0.25, 0.0, 1.0]]))[0]
    tiny, top = torch.finfo(torch.float32).tiny, 1 - 2.0**-24  # clipped to the float32 range below 1
    torch.testing.assert_close(p, torch.tensor([0.0, -math.log(3.0), math.log(tiny / (1 - tiny)),
                                                math.log(top / (1 - top))]).double())
    # DLDENet: p = sigmoid(z) / sigmoid(m), z = |w| (cos + b), m = |w| (1 + b): z - log sigmoid(m) - log(1 - e^(z - m))
    w, b = 9.0, -0.4
    cos = torch.tensor([-0.5, 0.0, 0.5, 0.9], dtype=torch.float64)
    z, m = w * (cos + b), torch.tensor(w * (1 + b), dtype=torch.float64)
    expected = z - torch.nn.functional.logsigmoid(m) - torch.log(-torch.expm1(z - m))
    torch.testing.assert_close(log_odds((torch.sigmoid(z) / torch.sigmoid(m))[None])[0], expected)


def test_knn_distance_on_a_toy_gallery():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [math.cos(0.1), math.sin(0.1)]])
    queries = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    # cosines: query 0 -> 1, 0, -1, cos 0.1; query 1 -> 0, -1, 0, -sin 0.1
    torch.testing.assert_close(knn_unknown_score(queries, gallery, k=1), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(knn_unknown_score(queries, EmbeddingIndex(gallery), k=2),
                               torch.tensor([1 - math.cos(0.1), 1.0]))
    torch.testing.assert_close(knn_unknown_score(queries, gallery, k=3), torch.tensor([1.0, 1 + math.sin(0.1)]))
    torch.testing.assert_close(knn_unknown_score(queries, gallery, k=4), torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match="k must lie"):
        knn_unknown_score(queries, gallery, k=5)


def toy_open_set(seed=0, d=8, classes=3, per_class=20, unknown=15, noise=0.1):
    """Known embeddings around ``classes`` orthogonal means, unknown ones around another axis, a gallery
    of other known samples and the probabilities of a cosine head ``sigmoid(10 cos - 5)``."""
    g = torch.Generator().manual_seed(seed)
    means = torch.eye(d)[:classes]
    labels = torch.arange(classes).repeat_interleave(per_class)
    sample = lambda centres: torch.nn.functional.normalize(  # noqa: E731
        centres + noise * torch.randn(centres.shape, generator=g), dim=1)
    known, gallery = sample(means[labels]), sample(means[labels])
    unknown_e = sample(torch.eye(d)[classes + 1].expand(unknown, d))
    probabilities = lambda e: torch.sigmoid(10 * e @ means.T - 5)  # noqa: E731
    return means, known, unknown_e, gallery, labels, probabilities


def test_every_score_separates_a_toy_open_set():
    means, known, unknown, gallery, labels, probabilities = toy_open_set()
    kappa = concentration_about(gallery, labels, means)
    assert (kappa > 50).all()
    scores = {
        "probability": lambda e: probability_unknown_score(probabilities(e)),
        "cosine": lambda e: cosine_unknown_score(e, means),
        "vmf": lambda e: vmf_unknown_score(e, means, kappa),
        "energy": lambda e: energy_unknown_score(log_odds(probabilities(e))),
        "knn": lambda e: knn_unknown_score(e, gallery, k=5),
    }
    assert set(scores) == set(SCORES)
    for name, score in scores.items():
        assert auroc(score(known), score(unknown)) == 1.0, name
        assert unknown_recall_at_known_precision(score(known), score(unknown))["known_recall"] == 1.0, name


def test_flagged_drops_or_relabels_by_threshold():
    per_image = [{"boxes": torch.zeros(3, 4), "scores": torch.tensor([0.9, 0.8, 0.7]),
                  "labels": torch.tensor([0, 1, 2]), "vmf": torch.tensor([-1.0, 2.0, 0.5])}]
    assert _flagged(per_image, "vmf", 0.5)[0]["labels"].tolist() == [0, -1, 2]
    kept = _flagged(per_image, "vmf", 0.5, drop=True)[0]
    assert kept["labels"].tolist() == [0, 2] and kept["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert _flagged(per_image, "vmf", math.nan)[0]["labels"].tolist() == [0, 1, 2]  # no operating point


def test_flagged_at_minus_infinity_flags_every_detection():
    """-inf is the threshold of a score that never reaches the known precision: everything flagged
    (unknown recall 1, known recall 0), so after flagging no detection is left as known."""
    per_image = [{"boxes": torch.zeros(3, 4), "scores": torch.tensor([0.9, 0.8, 0.7]),
                  "labels": torch.tensor([0, 1, 2]), "vmf": torch.tensor([-1e300, 2.0, 0.5], dtype=torch.float64)}]
    assert unknown_recall_at_known_precision([1.0, 2.0], [0.5], 1.0)["threshold"] == -math.inf
    assert _flagged(per_image, "vmf", -math.inf)[0]["labels"].tolist() == [-1, -1, -1]
    assert len(_flagged(per_image, "vmf", -math.inf, drop=True)[0]["labels"]) == 0


def test_exceeds_and_known_recall_threshold():
    scores = torch.tensor([0.1, 0.5, 0.9])
    assert exceeds(scores, 0.5).tolist() == [False, False, True]
    assert exceeds(scores, -math.inf).all() and not exceeds(scores, math.nan).any()
    known = np.array([0.4, 0.1, 0.3, 0.2])
    assert known_recall_threshold(known, 0.75) == 0.3 and known_recall_threshold(known, 1.0) == 0.4
    assert known_recall_threshold(known, 0.2) == 0.1  # at least 20 % kept: the smallest score
    assert unknown_recall_at_known_recall(known, [0.35, 0.5], 0.75)["threshold"] == 0.3
    with pytest.raises(ValueError, match="recall"):
        known_recall_threshold(known, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        known_recall_threshold([], 0.5)


def test_unknown_flag_scores_each_detection_by_its_score():
    means, known, unknown, gallery, labels, probabilities = toy_open_set()
    p = probabilities(torch.cat([known[:2], unknown[:2]]))
    e = torch.cat([known[:2], unknown[:2]])
    flag = UnknownFlag("probability", 0.5)
    assert_close(flag.scores(p), probability_unknown_score(p).double())
    assert_close(UnknownFlag("energy", 0.0).scores(p), energy_unknown_score(log_odds(p)))
    cosine = UnknownFlag("cosine", 0.5, partial(cosine_unknown_score, means=means))
    scores = cosine.scores(p, e)
    assert_close(scores, cosine_unknown_score(e, means).double())
    assert (scores[2:] > 0.5).all() and (scores[:2] < 0.5).all()  # the unknown ones score high
    with_zero = cosine.scores(p[:2], torch.stack([e[0], torch.zeros(e.shape[1])]))
    assert not math.isnan(with_zero[0]) and math.isnan(with_zero[1])  # a box without an anchor: no score
    assert not exceeds(with_zero, -math.inf)[1]  # and never flagged
    assert UnknownFlag("vmf", 1.0, lambda x: x[:, 0], known_recall=0.9).summary() == {
        "score": "vmf", "threshold": 1.0, "known_recall": 0.9}
    with pytest.raises(ValueError, match="options"):
        UnknownFlag("mahalanobis", 0.0)
    with pytest.raises(ValueError, match="needs embedding_score"):
        UnknownFlag("knn", 0.0)
    with pytest.raises(ValueError, match="takes no embedding_score"):
        UnknownFlag("energy", 0.0, lambda x: x[:, 0])
    with pytest.raises(ValueError, match="needs the detections' embeddings"):
        cosine.scores(p)


def _seed_result(auroc, wi, aose, flagged):
    """The result of one base seed as its JSON gives it back: one head, two scores."""
    return OpenSetResult.from_dict({"images": 4, "known_objects": 6, "unknown_objects": 2, "closed_images": 2,
            "models": {"dlde": {"probability": {"auroc": auroc, "unknown_recall": 0.5, "known_recall": 0.25,
                                                "threshold": 0.1, "wilderness_impact_flagged": wi,
                                                "A-OSE_flagged": flagged},
                                "vmf": {"auroc": auroc + 0.1, "unknown_recall": 1.0, "known_recall": 0.75,
                                        "threshold": -3.0, "wilderness_impact_flagged": None, "A-OSE_flagged": 0},
                                "primary_score": "cosine", "wilderness_impact": wi, "A-OSE": aose,
                                "A-OSE_flagged": flagged, "known_detections": 5, "unknown_detections": 2,
                                "skipped": {}}}})


def test_pool_open_set_gives_t_intervals_over_base_seeds():
    results = {0: _seed_result(0.6, 0.1, 10, 3), 1: _seed_result(0.7, 0.3, 14, 5), 2: _seed_result(0.8, 0.2, 12, 4)}
    pooled = pool_open_set(results)
    assert pooled.base_seeds == [0, 1, 2] and pooled.images == 4 and set(pooled.by_seed) == {0, 1, 2}
    dlde = pooled.models["dlde"]
    assert list(dlde.scores) == ["probability", "vmf"]  # SCORES order
    assert dlde.scores["probability"].auroc == t_interval([0.6, 0.7, 0.8])
    assert dlde.scores["vmf"].auroc["mean"] == pytest.approx(0.8)
    assert dlde.scores["vmf"].wilderness_impact_flagged["n"] == 0  # NaN (None) left out
    assert dlde.a_ose == t_interval([10, 14, 12]) and dlde.scores["probability"].metric("A-OSE_flagged")["mean"] == 4.0
    saved = pooled.to_dict()
    assert list(saved) == ["base_seeds", "images", "known_objects", "unknown_objects", "models", "by_seed"]
    assert list(saved["models"]["dlde"]) == ["scores", "wilderness_impact", "A-OSE", "known_detections",
                                             "unknown_detections"]
    assert list(saved["by_seed"][0]["models"]["dlde"])[:3] == ["probability", "vmf", "primary_score"]
    assert PooledOpenSet.from_dict(saved).to_dict() == saved
    table = open_set_table(pooled).splitlines()
    assert table[0].startswith("| model | score | AUROC |") and len(table) == 2 + 3
    assert table[2].startswith("| dlde | no flag |  |  |  | 0.200 [")
    auroc_cell = interval_cell(t_interval([0.6, 0.7, 0.8]))
    assert table[3].startswith(f"| dlde | probability | {auroc_cell} | 0.500 [0.500, 0.500]")
    assert table[4].endswith("| n/a | 0.0 [0.0, 0.0] |")
    fig = plot_unknown_scores(pooled)
    assert [ax.get_xticklabels()[1].get_text() for ax in fig.axes] == ["vmf", "vmf"]
    assert "3 base seeds" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="at least one base seed"):
        pool_open_set({})


# ------------------------------------------------------------------------ the protocol, tiny
@pytest.fixture(scope="module")
def tiny_open_set(tmp_path_factory):
    """Untrained tiny base models on 0-6 (keeping every detection) and the ten-digit tiny datasets."""
    from dlde.protocols import fewshot
    from dlde.protocols.base_runs import base_config
    from dlde.train import build_model

    root = tmp_path_factory.mktemp("openset")
    torch.manual_seed(0)
    models, config = {}, None
    for name in ("dlde", "retinanet", "prototypes"):
        config = base_config(name, root / name, preset="tiny", data_root=str(root / "data" / "base"),
                             digits_train_images=24)
        models[name] = build_model(config, len(fewshot.BASE_CLASSES)).eval()
        models[name].score_threshold = 0.0  # untrained: the sigmoid head scores about its prior, 0.01
    train_set, val_set = fewshot.few_shot_datasets(config)
    return models, [str(c) for c in fewshot.BASE_CLASSES], train_set, val_set, config


def test_open_set_evaluation_every_score_at_tiny_size(tiny_open_set):
    models, names, train_set, val_set, _ = tiny_open_set
    common = {"max_images": 8, "iou": 0.3}  # untrained boxes: a looser match
    default = open_set_evaluation(models, val_set, names, **common)
    given = np.full(len(names), 40.0)
    given[0] = np.nan
    out = open_set_evaluation(models, val_set, names, **common, scores=SCORES, train_set=train_set,
                              concentrations={"dlde": given}, knn_k=3)
    for name, metrics in out.models.items():
        has_space = name != "retinanet"
        kinds = list(SCORES) if has_space else ["probability", "energy"]
        assert list(metrics.scores) == kinds
        assert set(metrics.skipped) == (set() if has_space else {"cosine", "vmf", "knn"})
        assert metrics.known_detections == default.models[name].known_detections > 0
        for kind in kinds:
            values = out.scores[name][kind]
            assert np.isfinite(values.known).all() and np.isfinite(values.unknown).all()
            flagged = metrics.scores[kind].a_ose_flagged
            assert isinstance(flagged, int) and flagged <= metrics.a_ose
        for kind in ("probability", "cosine"):  # the default scores are those of the default call
            if kind in default.models[name].scores:
                for split in ("known", "unknown"):
                    np.testing.assert_array_equal(getattr(out.scores[name][kind], split),
                                                  getattr(default.scores[name][kind], split))
                assert default.models[name].scores[kind] == metrics.scores[kind]  # every number, flagged too
    dlde, prototypes = out.models["dlde"], out.models["prototypes"]
    kappa = dlde.statistics["vmf_kappa"]
    assert dlde.statistics["vmf_kappa_source"] == "given" and np.isnan(kappa[0]) and kappa[1] == 40.0
    assert prototypes.statistics["vmf_kappa_source"] == "training boxes"
    assert len(prototypes.statistics["vmf_kappa"]) == len(names)
    assert prototypes.statistics["knn_k"] == 3 and prototypes.statistics["knn_gallery"] > 3
    assert default.models["dlde"].skipped == {} and list(default.scores["dlde"]) == ["probability", "cosine"]
    assert default.models["retinanet"].skipped == {"cosine": "no embedding space"}
    with pytest.raises(ValueError, match="need train_set"):
        open_set_evaluation(models, val_set, names, **common, scores=["knn"])
    with pytest.raises(ValueError, match="distinct names"):
        open_set_evaluation(models, val_set, names, **common, scores=["cosine", "mahalanobis"])


def test_calibrate_unknown_flag_then_flag_a_folder(tiny_open_set, tmp_path):
    """The flag of a run (notebook 04): its threshold keeps the asked fraction of the known
    detections of the validation images; detect_folder labels what scores above it -1."""
    from dlde.inference.detect import detect_folder
    from dlde.protocols import fewshot

    models, _, _, _, config = tiny_open_set  # the base runs' configuration: their 7 digits
    flags = {score: calibrate_unknown_flag(models["dlde"], score, config, known_recall=0.5, max_images=4, iou=0.3,
                                           knn_k=2)
             for score in SCORES}
    assert all(math.isfinite(f.threshold) and f.known_recall == 0.5 for f in flags.values())
    energy = calibrate_unknown_flag(models["retinanet"], "energy", config, known_recall=0.5, max_images=4, iou=0.3)
    assert math.isfinite(energy.threshold) and energy.embedding_score is None
    with pytest.raises(ValueError, match="no embedding space"):
        calibrate_unknown_flag(models["retinanet"], "vmf", config, max_images=4, iou=0.3)
    history = np.full((2, len(fewshot.BASE_CLASSES)), 30.0)
    given = calibrate_unknown_flag(models["dlde"], "vmf", config, kappa_history=history, max_images=4, iou=0.3)
    assert given.threshold != flags["vmf"].threshold  # the run's last κ̂ row, not the estimate
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(Path(config.data_root).glob("val/*.png"))[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    plain = detect_folder(models["dlde"], folder, min_size=64, max_size=64, score_threshold=0.0)
    for score, flag in flags.items():
        flagged = detect_folder(models["dlde"], folder, min_size=64, max_size=64, score_threshold=0.0,
                                unknown_flag=flag)
        for a, b in zip(plain, flagged):
            assert len(b["unknown_score"]) == len(a["labels"]) == len(b["labels"])
            np.testing.assert_array_equal(b["unknown"], np.nan_to_num(b["unknown_score"], nan=-np.inf) > flag.threshold)
            np.testing.assert_array_equal(b["labels"], np.where(b["unknown"], -1, a["labels"]))
        assert any(b["unknown"].any() for b in flagged) and not all(b["unknown"].all() for b in flagged), score
    with pytest.raises(ValueError, match="not both"):
        detect_folder(models["dlde"], folder, min_size=64, max_size=64, unknown_below=0.5, unknown_flag=flags["cosine"])


def test_the_notebook_flag_is_left_off_with_a_reason_when_nothing_matches(monkeypatch):
    from types import SimpleNamespace

    from dlde.inference import unknown_flag

    run = SimpleNamespace(config={}, kappa_history=None)
    assert unknown_flag.run_unknown_flag(None, "", run) == (None, "no unknown flag")

    def weak(*args, **kwargs):
        raise unknown_flag.NoMatchedDetections("no detection of 16 validation images matches an object")

    monkeypatch.setattr(unknown_flag, "calibrate_unknown_flag", weak)
    flag, about = unknown_flag.run_unknown_flag(None, "knn", run)
    assert flag is None and about == "no unknown flag: no detection of 16 validation images matches an object"

    def broken(*args, **kwargs):
        raise ValueError("the 'retinanet' head has no embedding space for the 'knn' score")

    monkeypatch.setattr(unknown_flag, "calibrate_unknown_flag", broken)
    with pytest.raises(ValueError, match="no embedding space"):  # any other problem still fails loudly
        unknown_flag.run_unknown_flag(None, "knn", run)
