"""Unknown-object scores and open-set detection metrics.

An *unknown score* is high when a detection looks like none of the known classes:

- DLDENet: ``1 - max_c cos(e, mu_c)`` for the detection's unit embedding ``e`` and the tracked
  class means ``mu_c`` (:func:`cosine_unknown_score`, in [0, 2]);
- a sigmoid (or any probability) head: ``1 - max_c p_c`` (:func:`probability_unknown_score`);
- a class density: minus the von Mises-Fisher log-likelihood of the most likely class, with each
  class's concentration κ̂ and the normalizing constant (:func:`vmf_unknown_score`, SIREN);
- the free energy of the class logits ``-T logsumexp(logits / T)`` (:func:`energy_unknown_score`
  of :func:`log_odds`, VOS);
- the cosine distance to the k-th nearest training embedding (:func:`knn_unknown_score`).

The metrics take the unknown scores of detections that match a known object (``known``) and
of detections that match an unknown object (``unknown``); unknown is the positive class.
ORE's metrics (Joseph et al., CVPR 2021) are :func:`wilderness_impact` and
:func:`absolute_open_set_error`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from dlde.model.means import kappa_from_resultant

from .calibration import DEFAULT_IOU
from .retrieval import EmbeddingIndex, unit_rows

__all__ = [
    "DEFAULT_KNN_K",
    "DEFAULT_KNOWN_PRECISION",
    "EMBEDDING_SCORES",
    "SCORES",
    "absolute_open_set_error",
    "auroc",
    "concentration_about",
    "cosine_unknown_score",
    "energy_unknown_score",
    "exceeds",
    "knn_unknown_score",
    "known_recall_threshold",
    "log_odds",
    "probability_unknown_score",
    "roc_curve",
    "unknown_recall_at_known_precision",
    "unknown_recall_at_known_recall",
    "vmf_log_normalizer",
    "vmf_unknown_score",
    "wilderness_impact",
]

DEFAULT_KNOWN_PRECISION = 0.95  # operating point of unknown_recall_at_known_precision/_recall
DEFAULT_KNN_K = 10  # neighbour of knn_unknown_score (a gallery of a few thousand training boxes)
#: The unknown scores by name: 1 - max probability, 1 - nearest cosine, minus the vMF log-likelihood,
#: the energy of the class logits, the kNN distance (the functions below).
SCORES = ("probability", "cosine", "vmf", "energy", "knn")
#: The scores of a detection's box embedding: only heads with an embedding space have them.
EMBEDDING_SCORES = ("cosine", "vmf", "knn")


def cosine_unknown_score(embeddings: Any, means: Any) -> torch.Tensor:
    """``1 - max_c cos(e, mu_c)``: how far each embedding is from the nearest class mean.

    Args:
        embeddings: (N, d) embeddings (normalized here; a zero row raises).
        means: (C, d) class means; all-zero rows (classes never seen) are ignored.

    Returns:
        (N,) float32 scores in [0, 2]; 0 when an embedding points exactly along a mean.
    """
    e = torch.as_tensor(embeddings).detach().float()
    m = torch.as_tensor(means).detach().float().to(e.device)
    if e.ndim != 2 or m.ndim != 2 or e.shape[1] != m.shape[1]:
        raise ValueError(f"need embeddings (N, d) and means (C, d), got {tuple(e.shape)} and "
                         f"{tuple(m.shape)}")
    e_norm, m_norm = e.norm(dim=1, keepdim=True), m.norm(dim=1, keepdim=True)
    if (e_norm == 0).any():
        raise ValueError(f"embeddings rows {torch.nonzero(e_norm[:, 0] == 0)[:5, 0].tolist()} "
                         "are zero and have no direction")
    seen = m_norm[:, 0] > 0
    if not seen.any():
        raise ValueError("every class mean is zero: no class has a direction yet")
    cosines = (e / e_norm) @ (m[seen] / m_norm[seen]).T  # (N, C_seen)
    return (1.0 - cosines.max(dim=1).values).clamp(0.0, 2.0)


def probability_unknown_score(probabilities: Any) -> torch.Tensor:
    """``1 - max_c p_c`` of per-class probabilities (sigmoid or softmax head).

    Args:
        probabilities: (N, C) class probabilities in [0, 1], C >= 1.

    Returns:
        (N,) float32 scores in [0, 1].
    """
    p = torch.as_tensor(probabilities).detach().float()
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 1, got {tuple(p.shape)}")
    return 1.0 - p.max(dim=1).values


# ------------------------------------------------------------------ scores from the class statistics
def vmf_log_normalizer(kappa: Any, d: int) -> np.ndarray:
    """``log C_d(κ)`` of the von Mises-Fisher density ``f(e) = C_d(κ) exp(κ μᵀe)`` on the unit sphere of R^d.

    ``log C_d(κ) = (d/2 − 1) log κ − (d/2) log 2π − log I_{d/2−1}(κ)``, with the modified Bessel
    function taken as ``log I_v(κ) = log ive(v, κ) + κ`` (scipy's exponentially scaled ``ive``: no
    overflow at any κ). Where ``ive`` underflows (``< 1e-300``: only for large ``v`` well above
    κ, e.g. d = 1024 and κ = 100) ``log I_v`` comes from the uniform asymptotic (Debye) expansion
    to third order (:func:`_log_bessel_iv_debye`; ``v`` is then above about 140 and the error
    below 1e-10), or from the power series for tiny κ. κ = 0 gives the uniform density,
    ``log C_d(0) = log Γ(d/2) − log 2 − (d/2) log π`` (the limit of the formula).

    Args:
        kappa: concentrations κ >= 0, any shape; NaN stays NaN (a class without an estimate).
        d: dimension of the embeddings, >= 2.

    Returns:
        ``log C_d(κ)`` (float64, the shape of ``kappa``).
    """
    from scipy.special import gammaln, ive

    if int(d) != d or d < 2:
        raise ValueError(f"the vMF density needs d >= 2 dimensions, got {d}")
    shape = np.shape(kappa)
    kappa = np.asarray(kappa, dtype=np.float64).reshape(-1)
    if (kappa < 0).any() or np.isinf(kappa).any():
        raise ValueError("kappa must be finite and >= 0 (NaN marks a class without an estimate)")
    v = d / 2 - 1
    positive = kappa > 0
    k = kappa[positive]
    log_i = ive(v, k)  # e^-κ I_v(κ), then log I_v(κ)
    representable = log_i > 1e-300
    log_i[representable] = np.log(log_i[representable]) + k[representable]
    if not representable.all():
        log_i[~representable] = _log_bessel_iv_small(v, k[~representable])
    out = np.full(kappa.shape, np.nan)
    out[positive] = v * np.log(k) - (d / 2) * np.log(2 * np.pi) - log_i
    out[kappa == 0] = gammaln(d / 2) - np.log(2.0) - (d / 2) * np.log(np.pi)
    return out.reshape(shape)


def _log_bessel_iv_small(v: float, kappa: np.ndarray) -> np.ndarray:
    """``log I_v(κ)`` where ``ive`` underflows: the power series to its fourth term where
    ``κ² / 4(v + 1) <= 1e-3`` (relative error below 1e-13), Debye's expansion elsewhere (there
    ``v`` exceeds about 140)."""
    from scipy.special import gammaln

    x = kappa**2 / 4
    small = x <= 1e-3 * (v + 1)
    out = np.empty_like(kappa)
    xs = x[small]
    series = 1 + xs / (v + 1) * (1 + xs / (2 * (v + 2)) * (1 + xs / (3 * (v + 3))))
    out[small] = v * np.log(kappa[small] / 2) - gammaln(v + 1) + np.log(series)
    if not small.all():
        out[~small] = _log_bessel_iv_debye(v, kappa[~small])
    return out


def _log_bessel_iv_debye(v: float, kappa: np.ndarray) -> np.ndarray:
    """Uniform asymptotic expansion of ``log I_v(v z)`` for large ``v`` (DLMF 10.41.3), terms
    ``u_1..u_3``: ``v η − log(2π v)/2 − log(1 + z²)/4 + log(1 + u_1(t)/v + u_2(t)/v² + u_3(t)/v³)``
    with ``η = sqrt(1 + z²) + log(z / (1 + sqrt(1 + z²)))`` and ``t = 1 / sqrt(1 + z²)``."""
    z = np.asarray(kappa, dtype=np.float64) / v
    root = np.sqrt(1.0 + z**2)
    t = 1.0 / root
    eta = root + np.log(z) - np.log1p(root)
    u1 = (3 * t - 5 * t**3) / 24
    u2 = (81 * t**2 - 462 * t**4 + 385 * t**6) / 1152
    u3 = (30375 * t**3 - 369603 * t**5 + 765765 * t**7 - 425425 * t**9) / 414720
    return v * eta - 0.5 * np.log(2 * np.pi * v) - 0.5 * np.log(root) + np.log1p(u1 / v + u2 / v**2 + u3 / v**3)


def vmf_unknown_score(embeddings: Any, means: Any, kappa: Any) -> torch.Tensor:
    """``−max_c [log C_d(κ_c) + κ_c μ_cᵀ e]``: minus the vMF log-likelihood of the most likely class.

    Each known class is a vMF density with mean direction ``μ_c`` (the tracked mean, or a learned
    prototype) and concentration ``κ_c`` (its κ̂), normalizing constant included
    (:func:`vmf_log_normalizer`), as in SIREN (Du et al., NeurIPS 2022). Unlike the cosine score,
    a detection at a given angle from a concentrated class is less likely (scores higher) than at
    the same angle from a broad one. The maximum over classes (not the log of the equal-weight
    mixture, ``logsumexp``) is used: it is the likelihood of the class the detection would be
    given, and the two differ by at most ``log C`` over ``C`` classes.

    Classes left out: those whose mean is zero (never seen) and those whose κ̂ is NaN (fewer than
    2 embeddings behind the estimate): no density can be evaluated for them.

    Args:
        embeddings: (N, d) embeddings (normalized here; a zero row raises).
        means: (C, d) class mean directions (normalized here).
        kappa: (C,) concentrations κ̂ >= 0, NaN for a class without an estimate.

    Returns:
        (N,) float64 scores (any sign; high = unknown).
    """
    e = unit_rows(embeddings, "embeddings", dtype=torch.float64).cpu()
    m = torch.as_tensor(means).detach().cpu().double()
    kappa = torch.as_tensor(kappa).detach().cpu().double()
    if m.ndim != 2 or m.shape[1] != e.shape[1] or kappa.shape != (m.shape[0],):
        raise ValueError(f"need embeddings (N, d), means (C, d) and kappa (C,), got {tuple(e.shape)}, "
                         f"{tuple(m.shape)} and {tuple(kappa.shape)}")
    m_norm = m.norm(dim=1)
    usable = (m_norm > 0) & ~torch.isnan(kappa)
    if not usable.any():
        raise ValueError("no class has both a mean direction and a concentration (κ̂ is NaN or the mean zero)")
    k = kappa[usable]
    log_c = torch.from_numpy(vmf_log_normalizer(k.numpy(), e.shape[1]))
    log_likelihood = log_c + k * (e @ (m[usable] / m_norm[usable, None]).T)  # (N, C_usable)
    return -log_likelihood.max(dim=1).values


def concentration_about(embeddings: Any, labels: Any, directions: Any) -> np.ndarray:
    """κ̂ of each class around a given mean direction (a prototype or tracked mean).

    With the mean direction ``μ_c`` known, the maximum-likelihood κ solves ``A_d(κ) = r̄_c``
    with ``r̄_c`` the mean of ``μ_cᵀ e`` over the class's embeddings; Banerjee's approximation
    (:func:`dlde.model.means.kappa_from_resultant`) solves it, as for the tracked κ̂ (where the
    mean is the embeddings' own). ``r̄_c`` below 0 gives κ̂ = 0.

    Args:
        embeddings: (N, d) embeddings (normalized here; a zero row raises).
        labels: (N,) class ids in ``[0, C)``.
        directions: (C, d) class mean directions (normalized here; a zero row gives NaN).

    Returns:
        (C,) float64 κ̂; NaN for classes with fewer than 2 embeddings or no direction.
    """
    e = unit_rows(embeddings, "embeddings", dtype=torch.float64).cpu()
    m = torch.as_tensor(directions).detach().cpu().double()
    labels = torch.as_tensor(labels).detach().cpu().long()
    if m.ndim != 2 or m.shape[1] != e.shape[1] or labels.shape != (e.shape[0],):
        raise ValueError(f"need embeddings (N, d), labels (N,) and directions (C, d), got {tuple(e.shape)}, "
                         f"{tuple(labels.shape)} and {tuple(m.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= m.shape[0]):
        raise ValueError(f"labels must lie in [0, {m.shape[0]})")
    m_norm = m.norm(dim=1, keepdim=True)
    cosines = (e * (m / m_norm.clamp(min=1e-300))[labels]).sum(dim=1)  # (N,) cosine to the own direction
    counts = torch.bincount(labels, minlength=m.shape[0]).numpy()
    sums = np.bincount(labels.numpy(), weights=cosines.numpy(), minlength=m.shape[0])
    r_bar = np.divide(sums, counts, out=np.zeros(len(counts)), where=counts > 0)
    kappa = kappa_from_resultant(np.clip(r_bar, 0.0, 1.0), counts, e.shape[1])
    kappa[m_norm[:, 0].numpy() == 0] = np.nan
    return kappa


def log_odds(probabilities: Any) -> torch.Tensor:
    """Per-class logits ``log p − log(1 − p)`` of per-class probabilities (float64).

    For a sigmoid head (the ordinary one, learned prototypes) they are its pre-sigmoid values;
    for DLDENet's scaled sigmoid ``p = sigmoid(z) / sigmoid(m)`` (``z = |w|(cos + b)``,
    ``m = |w|(1 + b)``) they are ``z − log sigmoid(m) − log(1 − e^{z − m})``. Computed from the
    float32 probabilities the heads return, so ``p`` is first clipped to
    ``[2^-126, 1 − 2^-24]`` (the float32 range below 1): logits lie in about ``[−87.3, 16.6]``,
    and detections surer than ``p = 1 − 2^-24`` tie.

    Args:
        probabilities: (N, C) probabilities in [0, 1].

    Returns:
        (N, C) float64 logits.
    """
    p = torch.as_tensor(probabilities).detach().cpu().double()
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 1, got {tuple(p.shape)}")
    p = p.clamp(float(torch.finfo(torch.float32).tiny), 1.0 - 2.0**-24)
    return torch.log(p) - torch.log1p(-p)


def energy_unknown_score(logits: Any, temperature: float = 1.0) -> torch.Tensor:
    """The free energy ``−T logsumexp(logits / T)`` of the class logits (VOS, Du et al., ICLR 2022).

    Low (very negative) when some class is sure of the detection, high when none is: an unknown
    score as it stands. ``−inf`` logits (a class that cannot fire) contribute nothing.

    Args:
        logits: (N, C) class logits (e.g. :func:`log_odds` of a head's probabilities).
        temperature: ``T > 0``.

    Returns:
        (N,) float64 scores.
    """
    z = torch.as_tensor(logits).detach().cpu().double()
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, C) with C >= 1, got {tuple(z.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if torch.isnan(z).any() or (z == float("inf")).any() or (z == float("-inf")).all(dim=1).any():
        raise ValueError("logits must be finite or -inf, with at least one finite logit per row")
    return -temperature * torch.logsumexp(z / temperature, dim=1)


def knn_unknown_score(embeddings: Any, gallery: Any, k: int = DEFAULT_KNN_K) -> torch.Tensor:
    """Cosine distance ``1 − cos`` to the k-th nearest training embedding (Sun et al., ICML 2022).

    On unit vectors the k-th nearest neighbour by cosine is the k-th by Euclidean distance
    (``|a − b|² = 2 − 2 cos``), the distance of the deep nearest-neighbour detector.

    Args:
        embeddings: (N, d) embeddings (normalized here; a zero row raises).
        gallery: an :class:`dlde.analysis.retrieval.EmbeddingIndex` of the training embeddings of
            the known classes, or their (M, d) array.
        k: the neighbour whose distance is the score, ``1 <= k <= M``.

    Returns:
        (N,) float32 scores in [0, 2].
    """
    index = gallery if isinstance(gallery, EmbeddingIndex) else EmbeddingIndex(gallery)
    cosines, _ = index.search(embeddings, int(k))  # (N, k), most similar first
    return (1.0 - cosines[:, -1]).clamp(0.0, 2.0)


def _scores(known: Any, unknown: Any) -> tuple[np.ndarray, np.ndarray]:
    return _score_array("known_scores", known), _score_array("unknown_scores", unknown)


def _score_array(name: str, x: Any) -> np.ndarray:
    """``x`` as a non-empty finite (N,) float64 array (else a ValueError naming ``name``)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty (N,) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def auroc(known_scores: Any, unknown_scores: Any) -> float:
    """Area under the ROC curve of telling unknown (positive) from known by the score.

    Equals the probability that a random unknown detection scores higher than a random
    known one, ties counting one half (Mann-Whitney U / (N_known N_unknown)).

    Args:
        known_scores: (N,) unknown scores of known objects.
        unknown_scores: (M,) unknown scores of unknown objects.

    Returns:
        AUROC in [0, 1]; 0.5 is chance.
    """
    from sklearn.metrics import roc_auc_score

    known, unknown = _scores(known_scores, unknown_scores)
    truth = np.concatenate([np.zeros(known.size), np.ones(unknown.size)])
    return float(roc_auc_score(truth, np.concatenate([known, unknown])))


def roc_curve(known_scores: Any, unknown_scores: Any) -> dict:
    """ROC of unknown detection, for :func:`dlde.plots.metric_plots.plot_roc`.

    Args:
        known_scores: (N,) unknown scores of known objects.
        unknown_scores: (M,) unknown scores of unknown objects.

    Returns:
        ``fpr`` (T,) fraction of known flagged, ``tpr`` (T,) fraction of unknown flagged (at
        decreasing thresholds ``thresholds`` (T,): flagged when score >= threshold) and
        ``auroc``.
    """
    from sklearn.metrics import roc_curve as _sk_roc_curve

    known, unknown = _scores(known_scores, unknown_scores)
    truth = np.concatenate([np.zeros(known.size), np.ones(unknown.size)])
    fpr, tpr, thresholds = _sk_roc_curve(truth, np.concatenate([known, unknown]),
                                         drop_intermediate=False)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds,
            "auroc": auroc(known, unknown)}


def unknown_recall_at_known_precision(
    known_scores: Any, unknown_scores: Any, precision: float = DEFAULT_KNOWN_PRECISION
) -> dict:
    """Unknown recall at the least strict threshold that keeps the known set ``precision`` pure.

    A detection is *flagged unknown* when its score is > ``threshold`` and *kept as known*
    otherwise. Known precision at a threshold is the fraction of kept detections that are
    known objects. The threshold is the **largest** score ``t`` (over the observed scores)
    with known precision >= ``precision``, i.e. the operating point that keeps the most known
    detections while at most ``1 - precision`` of the kept ones are unknown. Reported there:
    unknown recall = fraction of unknown detections flagged, and known recall = fraction of
    known detections kept. When no threshold reaches the precision, everything is flagged
    (threshold -inf, unknown recall 1, known recall 0).

    Read unknown recall together with known recall: a score that cannot separate the two
    reaches the precision only by flagging almost everything (both recalls near 1 and 0).
    :func:`unknown_recall_at_known_recall` fixes the known side instead.

    Args:
        known_scores: (N,) unknown scores of known objects.
        unknown_scores: (M,) unknown scores of unknown objects.
        precision: required known precision in (0, 1].

    Returns:
        ``unknown_recall``, ``known_recall``, ``known_precision`` (reached) and ``threshold``.
    """
    if not 0.0 < precision <= 1.0:
        raise ValueError(f"precision must lie in (0, 1], got {precision}")
    known, unknown = _scores(known_scores, unknown_scores)
    scores = np.concatenate([known, unknown])
    is_unknown = np.concatenate([np.zeros(known.size), np.ones(unknown.size)])
    order = np.argsort(scores, kind="stable")
    scores, is_unknown = scores[order], is_unknown[order]
    last = np.r_[scores[1:] != scores[:-1], True]  # last position of each distinct score
    kept_unknown = np.cumsum(is_unknown)[last]  # kept when score <= that distinct value
    kept = (np.arange(scores.size) + 1)[last]
    kept_known = kept - kept_unknown
    ok = np.flatnonzero(kept_known / kept >= precision - 1e-12)
    if ok.size == 0:
        return {"unknown_recall": 1.0, "known_recall": 0.0, "known_precision": float("nan"),
                "threshold": float("-inf")}
    j = ok[-1]
    return {"unknown_recall": float(1.0 - kept_unknown[j] / unknown.size),
            "known_recall": float(kept_known[j] / known.size),
            "known_precision": float(kept_known[j] / kept[j]),
            "threshold": float(scores[last][j])}


def unknown_recall_at_known_recall(
    known_scores: Any, unknown_scores: Any, recall: float = DEFAULT_KNOWN_PRECISION
) -> dict:
    """Unknown recall when the threshold keeps a fraction ``recall`` of the known detections.

    The out-of-distribution convention (TNR at 95 % TPR): the threshold is the smallest
    observed known score ``t`` with at least ``recall`` of the known scores <= ``t``; a
    detection is flagged unknown when its score is > ``t``.

    Args:
        known_scores: (N,) unknown scores of known objects.
        unknown_scores: (M,) unknown scores of unknown objects.
        recall: fraction of known detections to keep, in (0, 1].

    Returns:
        ``unknown_recall`` (fraction of unknown flagged), ``known_recall`` (reached) and
        ``threshold``.
    """
    known, unknown = _scores(known_scores, unknown_scores)
    threshold = known_recall_threshold(known, recall)  # checks recall
    return {"unknown_recall": float(np.mean(unknown > threshold)),
            "known_recall": float(np.mean(known <= threshold)), "threshold": threshold}


def known_recall_threshold(known_scores: Any, recall: float = DEFAULT_KNOWN_PRECISION) -> float:
    """The smallest observed known score ``t`` with at least a fraction ``recall`` of the known
    scores ``<= t``: flagging the scores ``> t`` keeps that fraction of the known detections.

    Args:
        known_scores: (N,) unknown scores of known objects (finite, N >= 1).
        recall: fraction of known detections to keep, in (0, 1].
    """
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must lie in (0, 1], got {recall}")
    known = np.sort(_score_array("known_scores", known_scores))
    return float(known[int(np.ceil(recall * known.size - 1e-9)) - 1])


def exceeds(scores: Any, threshold: float) -> torch.Tensor:
    """``(N,)`` bool: the detections an unknown score flags at ``threshold`` (score ``> threshold``).

    ``threshold`` -inf flags every detection (what :func:`unknown_recall_at_known_precision`
    returns when no threshold reaches the precision); NaN (no operating point) flags none.
    """
    scores = torch.as_tensor(scores)
    if np.isnan(threshold):
        return torch.zeros(scores.shape, dtype=torch.bool)
    return scores > threshold


def wilderness_impact(precision_closed: Any, precision_open: Any) -> Any:
    """ORE's wilderness impact ``WI = P_K / P_{K u U} - 1``.

    ``P_K`` is the precision of the known-class detections evaluated on known classes only
    (closed set), ``P_{K u U}`` the same detections' precision when unknown objects are in the
    images (open set), both at the same recall (ORE uses recall 0.8). 0 means the unknowns
    cause no false positives.

    Args:
        precision_closed: P_K, a float or array in (0, 1].
        precision_open: P_{K u U}, same shape, in (0, 1].

    Returns:
        WI, a float (or an array for array inputs).
    """
    closed = np.asarray(precision_closed, dtype=np.float64)
    open_ = np.asarray(precision_open, dtype=np.float64)
    if (open_ <= 0).any() or (open_ > 1).any() or (closed < 0).any() or (closed > 1).any():
        raise ValueError("precision_closed must lie in [0, 1] and precision_open in (0, 1]")
    wi = closed / open_ - 1.0
    return float(wi) if wi.ndim == 0 else wi


def absolute_open_set_error(
    detections: Sequence[Mapping[str, Any]],
    targets: Sequence[Any],
    unknown_labels: Iterable[int],
    *,
    iou: float = DEFAULT_IOU,
) -> int:
    """ORE's absolute open-set error: unknown objects detected as a known class.

    An unknown object (a target whose label is in ``unknown_labels``) counts once when at
    least one detection with a known label (>= 0; label -1 marks a detection flagged unknown)
    overlaps it at IoU >= ``iou``. ORE's code counts the detections instead; with NMS the two
    differ only for duplicate boxes on one object.

    Args:
        detections: one dict per image with ``boxes`` (N, 4) x1, y1, x2, y2 and ``labels``
            (N,) in the pixels of ``targets``.
        targets: one (M, 5) x1, y1, x2, y2, label per image (padding rows with label -1 are
            ignored).
        unknown_labels: the labels of the objects the model was not trained on.
        iou: minimum IoU.

    Returns:
        The number of unknown objects detected as a known class.
    """
    if len(detections) != len(targets):
        raise ValueError(f"got {len(detections)} detection dicts for {len(targets)} targets")
    unknown = torch.as_tensor(sorted({int(u) for u in unknown_labels}), dtype=torch.int64)
    count = 0
    for index, (det, target) in enumerate(zip(detections, targets)):  # loop over images
        target = torch.as_tensor(target).detach().cpu().float().reshape(-1, 5)
        boxes = torch.as_tensor(det["boxes"]).detach().cpu().float().reshape(-1, 4)
        labels = torch.as_tensor(det["labels"]).detach().cpu().reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"detections[{index}]: {len(boxes)} boxes but {len(labels)} labels")
        objects = target[torch.isin(target[:, 4].long(), unknown), :4]  # (U, 4)
        boxes = boxes[labels >= 0]
        if len(objects) and len(boxes):
            count += int((box_iou(objects, boxes) >= iou).any(dim=1).sum())
    return count
