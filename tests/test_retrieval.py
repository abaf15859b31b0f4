"""Tests of embedding retrieval: exact torch search, FAISS agreement, Recall@k and MAP@R."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlde.analysis.retrieval import (
    EmbeddingIndex,
    box_embeddings,
    crop_boxes,
    map_at_r,
    per_class,
    recall_at_k,
)
from dlde.analysis.stats import t_interval
from dlde.plots.detection_plots import plot_retrieval_grid
from dlde.protocols.retrieval import PooledRetrieval, RetrievalResult, pool_retrieval
from dlde.protocols.tables import retrieval_table


def _brute_force(gallery, queries, k):
    sims = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(
        gallery, dim=1).T
    return sims.topk(k, dim=1)


def test_torch_search_is_exact_cosine_across_chunks():
    gallery, queries = torch.randn(1000, 16), torch.randn(7, 16)
    # chunk_elements 7 * 37: the gallery is searched in 28 chunks of 37 rows.
    index = EmbeddingIndex(gallery * 3.0, chunk_elements=7 * 37)
    scores, indices = index.search(queries, 10)
    expected = _brute_force(gallery, queries, 10)
    assert indices.dtype == torch.int64 and scores.shape == (7, 10)
    torch.testing.assert_close(indices, expected.indices)
    torch.testing.assert_close(scores, expected.values)


def test_faiss_and_torch_return_the_same_top_k():
    pytest.importorskip("faiss")
    gallery, queries = torch.randn(5000, 32), torch.randn(50, 32)
    exact = EmbeddingIndex(gallery, chunk_elements=50 * 999)
    fast = EmbeddingIndex(gallery, backend="faiss")
    s_torch, i_torch = exact.search(queries, 20)
    s_faiss, i_faiss = fast.search(queries, 20)
    torch.testing.assert_close(i_faiss, i_torch)
    torch.testing.assert_close(s_faiss, s_torch, atol=1e-5, rtol=1e-5)
    # Leave-one-out: each gallery item queried against the others.
    q = gallery[:40]
    loo_torch = exact.search(q, 5, exclude=torch.arange(40))
    loo_faiss = fast.search(q, 5, exclude=torch.arange(40))
    torch.testing.assert_close(loo_faiss[1], loo_torch[1])
    assert not (loo_torch[1] == torch.arange(40)[:, None]).any()
    torch.testing.assert_close(loo_torch[1], _brute_force(gallery, q, 6).indices[:, 1:])


def test_missing_faiss_gives_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match=r"pip install dlde\[retrieval\]"):
        EmbeddingIndex(torch.randn(4, 3), backend="faiss")


def test_index_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        EmbeddingIndex(torch.randn(4, 3), backend="annoy")
    with pytest.raises(ValueError, match="rows \\[1\\] are zero"):
        EmbeddingIndex(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    index = EmbeddingIndex(torch.randn(4, 3), labels=[0, 1, 1, 0])
    assert index.labels.tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="k must lie in \\[1, 4\\]"):
        index.search(torch.randn(2, 3), 5)
    with pytest.raises(ValueError, match="queries must have shape \\(N, 3\\)"):
        index.search(torch.randn(2, 4), 1)


RESULTS = np.array([[0, 1, 0, 0],   # query label 0
                    [1, 1, 0, 1],   # query label 1
                    [2, 0, 0, 0]])  # query label 2
QUERIES = np.array([0, 1, 2])


def test_recall_at_k_hand_computed():
    assert recall_at_k(RESULTS, QUERIES, 1) == pytest.approx(1.0)
    assert recall_at_k(np.array([[1, 0], [0, 1]]), [0, 1], 1) == 0.0
    assert recall_at_k(np.array([[1, 0], [0, 0]]), [0, 1], 2) == 0.5
    assert recall_at_k(np.array([[1, 0], [0, 0]]), [0, 1], 2, average=False).tolist() == [1, 0]
    with pytest.raises(ValueError, match="k must lie in"):
        recall_at_k(RESULTS, QUERIES, 5)


def test_map_at_r_hand_computed():
    gallery = np.array([0, 0, 0, 1, 1, 1, 2, 3])  # R = 3, 3, 1
    # q0: rel in first 3 = [1, 0, 1] -> (1 + 2/3) / 3; q1: [1, 1, 0] -> (1 + 1) / 3; q2: [1] -> 1.
    expected = [(1 + 2 / 3) / 3, 2 / 3, 1.0]
    np.testing.assert_allclose(map_at_r(RESULTS, QUERIES, gallery, average=False), expected)
    assert map_at_r(RESULTS, QUERIES, gallery) == pytest.approx(np.mean(expected))
    # Leave-one-out: R = 2, 2, 0 (query 2 is its class's only item: left out).
    loo = map_at_r(RESULTS, QUERIES, gallery, queries_in_gallery=True, average=False)
    np.testing.assert_allclose(loo[:2], [0.5, 1.0])
    assert math.isnan(loo[2])
    with pytest.raises(ValueError, match="R = 5"):
        map_at_r(RESULTS, QUERIES, np.array([0] * 5 + [1, 2]))


def test_leave_one_out_on_clustered_embeddings():
    # Three tight clusters: every neighbour is of the same class -> Recall@1 = MAP@R = 1.
    centers = torch.eye(3, 8) * 10
    labels = torch.arange(3).repeat_interleave(5)
    embeddings = centers[labels] + 0.1 * torch.randn(15, 8)
    index = EmbeddingIndex(embeddings, labels)
    _, indices = index.search(embeddings, 4, exclude=torch.arange(15))
    result_labels = index.labels[indices]
    assert recall_at_k(result_labels, labels, 1) == 1.0
    assert map_at_r(result_labels, labels, index.labels, queries_in_gallery=True) == 1.0
    assert per_class(recall_at_k(result_labels, labels, 1, average=False), labels) == {
        0: 1.0, 1: 1.0, 2: 1.0}


def test_per_class_means_skip_nan():
    assert per_class([1.0, 0.0, float("nan"), 0.5], [2, 2, 3, 0]) == pytest.approx(
        {0: 0.5, 2: 0.5, 3: float("nan")}, nan_ok=True)


def test_crop_boxes_and_retrieval_grid():
    image = torch.rand(3, 20, 30)
    crops = crop_boxes(image, torch.tensor([[2.0, 3.0, 10.0, 8.0], [25.0, 15.0, 40.0, 40.0]]))
    assert [c.shape for c in crops] == [(5, 8, 3), (5, 5, 3)]
    np.testing.assert_array_equal(crops[0], image[:, 3:8, 2:10].permute(1, 2, 0).numpy())
    fig = plot_retrieval_grid(crops, [crops, crops[:1]], query_labels=[0, 1],
                              result_labels=[[0, 1], [1, 1]], result_scores=[[0.9, 0.8], [0.7, 0.6]],
                              class_names=["a", "b"])
    assert len(fig.axes) == 2 * 3
    assert fig.axes[1].get_title() == "a 0.90"


def test_box_embeddings_are_normalized_sums_of_matched_anchors():
    from helpers import tiny_model
    from torchvision.ops import box_iou

    from dlde import DLDENetWithTrackedMeans

    model = tiny_model(DLDENetWithTrackedMeans, classes=3, fpn_levels=[3],
                       anchors={"sizes": [16], "scales": [1.0], "ratios": [1.0]}).eval()
    images = torch.rand(2, 3, 64, 64)
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 24.0], [30.0, 30.0, 62.0, 50.0]]), torch.zeros(0, 4)]
    out = box_embeddings(model, images, boxes)
    assert [tuple(o.shape) for o in out] == [(2, 8), (0, 8)]
    torch.testing.assert_close(out[0].norm(dim=1), torch.ones(2))
    anchors, embeddings = model.embeddings(images[:1])
    iou = box_iou(anchors[0], boxes[0])  # (A, 2)
    best = iou.argmax(dim=1)
    for j in range(2):  # independent reference: IoU >= 0.5 or the box's best anchor
        matched = ((iou[:, j] >= 0.5) | (iou[:, j] == iou[:, j].max())) & (best == j)
        reference = torch.nn.functional.normalize(embeddings[0, matched].sum(0), dim=0)
        torch.testing.assert_close(out[0][j], reference)


def test_pool_retrieval_gives_t_intervals_over_base_seeds():
    def seed(map_r, recall, classes):  # a result as its JSON gives it back
        return RetrievalResult.from_dict({"MAP@R": map_r, "Recall@1": recall, "Recall@5": 1.0, "gallery": 40,
                                          "seconds_per_query": 1e-5,
                                          "per_class": {c: {"MAP@R": map_r, "Recall@1": recall} for c in classes}})

    results = {0: {"dlde": seed(0.5, 0.8, ["0", "7"]), "prototypes": seed(0.3, 0.7, ["0"])},
               1: {"dlde": seed(0.7, 0.9, ["0"]), "prototypes": seed(0.4, 0.6, ["0"])}}
    pooled = pool_retrieval(results)
    assert list(pooled) == ["dlde", "prototypes"] and pooled["dlde"].base_seeds == 2
    assert pooled["dlde"].map_at_r == t_interval([0.5, 0.7])
    assert pooled["prototypes"].recall[1] == t_interval([0.7, 0.6])
    assert pooled["dlde"].per_class["7"]["n"] == 1  # a class one seed did not see counts once
    saved = pooled["dlde"].to_dict()
    assert list(saved) == ["base_seeds", "gallery", "MAP@R", "Recall@1", "Recall@5", "seconds_per_query", "per_class"]
    assert PooledRetrieval.from_dict(saved) == pooled["dlde"] and saved["per_class"]["7"]["MAP@R"]["n"] == 1
    table = retrieval_table(pooled).splitlines()
    assert table[0] == "| model | base seeds | gallery | MAP@R | Recall@1 | Recall@5 | ms per query |"
    assert table[2].startswith("| dlde | 2 | 40 | 0.600 [") and table[2].endswith("| 1.000 [1.000, 1.000] | 0.010 |")
    assert table[-2] == "| dlde | 0.600 | 0.500 |" and table[-1] == "| prototypes | 0.350 | n/a |"
