"""Retrieval by embedding: exact cosine search (torch, or FAISS for large galleries) and metrics.

:class:`EmbeddingIndex` keeps a gallery of unit embeddings (e.g. of detected or ground-truth
boxes) and returns the k most similar items of each query by cosine similarity. The default
backend is an exact chunked matrix product in torch; ``backend='faiss'`` uses FAISS's exact
inner-product index (``faiss.IndexFlatIP``) on the same normalized float32 vectors, installed
with ``pip install dlde[retrieval]``.

Metrics follow Musgrave et al., "A Metric Learning Reality Check" (ECCV 2020):
:func:`recall_at_k` (a hit among the first k results) and :func:`map_at_r` (MAP@R).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlde.model.anchors import assign_batch

__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_ELEMENTS",
    "EmbeddingIndex",
    "box_embeddings",
    "crop_boxes",
    "map_at_r",
    "per_class",
    "recall_at_k",
]

BACKENDS = ("torch", "faiss")
DEFAULT_CHUNK_ELEMENTS = 2**24  # queries x gallery-chunk similarities held at once (64 MiB)


def unit_rows(x: Any, name: str, d: int | None = None, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, d) rows of ``dtype`` scaled to unit norm (the one check of embeddings given to the
    analyses); zero or non-finite rows raise, naming ``name``."""
    x = torch.as_tensor(x).detach().to(dtype)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        want = f"(N, {d})" if d is not None else "(N, d)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    norm = x.norm(dim=1)
    bad = ~torch.isfinite(norm) | (norm == 0)
    if bad.any():
        raise ValueError(f"{name} rows {torch.nonzero(bad)[:5, 0].tolist()} are zero or not "
                         "finite: they have no direction")
    return F.normalize(x, dim=1)


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the 'faiss' backend needs faiss: pip install dlde[retrieval] "
                          "(or pip install faiss-cpu)") from None
    return faiss


class EmbeddingIndex:
    """Exact cosine-similarity search over a gallery of embeddings.

    Args:
        embeddings: (N, d) gallery vectors (normalized here; zero rows raise).
        labels: optional (N,) integer class ids of the gallery items, kept as ``labels``.
        backend: ``'torch'`` (exact chunked matmul + top-k) or ``'faiss'`` (``IndexFlatIP``).
        chunk_elements: torch backend: at most this many query x gallery similarities are
            held at once (the gallery is processed in chunks of ``chunk_elements // Q`` rows).

    Attributes:
        embeddings: (N, d) float32 unit rows on the CPU.
        labels: (N,) int64 tensor, or None.
    """

    def __init__(self, embeddings: Any, labels: Any | None = None, *, backend: str = "torch",
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
        self.embeddings = unit_rows(embeddings, "embeddings").cpu().contiguous()
        self.labels = None
        if labels is not None:
            labels = torch.as_tensor(labels).detach().cpu()
            if labels.shape != (len(self.embeddings),) or labels.is_floating_point():
                raise ValueError(f"labels must be ({len(self.embeddings)},) integers, got "
                                 f"{tuple(labels.shape)} {labels.dtype}")
            self.labels = labels.long()
        self.backend = backend
        self.chunk_elements = int(chunk_elements)
        self._faiss_index = None
        if backend == "faiss":
            faiss = _import_faiss()
            self._faiss_index = faiss.IndexFlatIP(self.dim)
            self._faiss_index.add(self.embeddings.numpy())

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        """Embedding size d."""
        return self.embeddings.shape[1]

    def __repr__(self) -> str:
        return f"EmbeddingIndex(size={len(self)}, dim={self.dim}, backend={self.backend!r})"

    def search(self, queries: Any, k: int, *, exclude: Any | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k gallery items most similar to each query, most similar first.

        Args:
            queries: (Q, d) query vectors (normalized here).
            k: results per query, 1 <= k <= N (N - 1 with ``exclude``).
            exclude: optional (Q,) gallery index to leave out of each query's results (-1:
                none), e.g. ``arange(N)`` to query the gallery with itself (leave-one-out).

        Returns:
            ``scores`` (Q, k) float32 cosines and ``indices`` (Q, k) int64 gallery indices.
        """
        queries = unit_rows(queries, "queries", self.dim).cpu().contiguous()
        n = len(self) - (exclude is not None)
        if not 1 <= k <= n:
            raise ValueError(f"k must lie in [1, {n}] for a gallery of {len(self)}"
                             f"{' with exclude' if exclude is not None else ''}, got {k}")
        if exclude is not None:
            exclude = torch.as_tensor(exclude).detach().cpu().long()
            if exclude.shape != (len(queries),):
                raise ValueError(f"exclude must have shape ({len(queries)},), got "
                                 f"{tuple(exclude.shape)}")
        if self.backend == "faiss":
            return self._search_faiss(queries, k, exclude)
        return self._search_torch(queries, k, exclude)

    def _search_torch(self, queries: torch.Tensor, k: int, exclude: torch.Tensor | None):
        q = len(queries)
        chunk = max(k + 1, self.chunk_elements // max(q, 1))
        best_scores = queries.new_full((q, 0), float("-inf"))
        best_indices = torch.zeros((q, 0), dtype=torch.int64)
        rows = torch.arange(q)
        for start in range(0, len(self), chunk):  # chunks of the gallery, not items
            block = self.embeddings[start:start + chunk]
            sims = queries @ block.T  # (Q, n_chunk) cosines
            if exclude is not None:
                local = exclude - start
                inside = (local >= 0) & (local < len(block))
                sims[rows[inside], local[inside]] = float("-inf")
            top = sims.topk(min(k, len(block)), dim=1)
            scores = torch.cat([best_scores, top.values], dim=1)
            indices = torch.cat([best_indices, top.indices + start], dim=1)
            keep = scores.topk(min(k, scores.shape[1]), dim=1).indices
            best_scores, best_indices = scores.gather(1, keep), indices.gather(1, keep)
        return best_scores, best_indices

    def _search_faiss(self, queries: torch.Tensor, k: int, exclude: torch.Tensor | None):
        extra = exclude is not None
        scores, indices = self._faiss_index.search(queries.numpy(), k + extra)
        scores, indices = torch.from_numpy(scores), torch.from_numpy(indices).long()
        if extra:
            # Drop the excluded item where it came back, otherwise the (k + 1)-th result.
            drop = indices == exclude[:, None]
            drop[:, -1] |= ~drop.any(dim=1)
            keep = ~drop
            scores = scores[keep].reshape(len(queries), k)
            indices = indices[keep].reshape(len(queries), k)
        return scores, indices


def _result_labels(result_labels: Any, query_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    results = torch.as_tensor(result_labels).detach().cpu().numpy()
    queries = torch.as_tensor(query_labels).detach().cpu().numpy()
    if results.ndim != 2 or queries.shape != (results.shape[0],):
        raise ValueError(f"need result_labels (Q, K) and query_labels (Q,), got {results.shape} "
                         f"and {queries.shape}")
    return results.astype(np.int64), queries.astype(np.int64)


def recall_at_k(result_labels: Any, query_labels: Any, k: int, *, average: bool = True):
    """Recall@k: whether a result of the query's class is among the first k.

    Args:
        result_labels: (Q, K) labels of the results, most similar first (e.g.
            ``index.labels[indices]``), K >= k.
        query_labels: (Q,) labels of the queries.
        k: number of results looked at.
        average: return the mean over queries; otherwise the (Q,) float hits.

    Returns:
        The fraction of queries with a hit (float), or per-query 0/1 values (Q,).
    """
    results, queries = _result_labels(result_labels, query_labels)
    if not 1 <= k <= results.shape[1]:
        raise ValueError(f"k must lie in [1, {results.shape[1]}] (results per query), got {k}")
    hits = (results[:, :k] == queries[:, None]).any(axis=1).astype(np.float64)
    return float(hits.mean()) if average else hits


def map_at_r(result_labels: Any, query_labels: Any, gallery_labels: Any, *,
             queries_in_gallery: bool = False, average: bool = True):
    """MAP@R (Musgrave et al. 2020): mean average precision over the first R results.

    R is the number of gallery items of the query's class (less one when the query is itself
    in the gallery and was excluded from its results: ``queries_in_gallery``), and
    ``AP@R = (1/R) sum_{i<=R} P(i) rel(i)`` with P(i) the precision of the first i results.
    Queries with R = 0 have no relevant item and are left out (NaN per query).

    Args:
        result_labels: (Q, K) labels of the results, most similar first, K >= max R.
        query_labels: (Q,) labels of the queries.
        gallery_labels: (N,) labels of the whole gallery.
        queries_in_gallery: subtract the query itself from R (leave-one-out search).
        average: return the mean over queries with R > 0 (NaN if none); otherwise (Q,) values.

    Returns:
        MAP@R as a float, or per-query AP@R (Q,).
    """
    results, queries = _result_labels(result_labels, query_labels)
    gallery = torch.as_tensor(gallery_labels).detach().cpu().numpy().astype(np.int64).ravel()
    classes, counts = np.unique(gallery, return_counts=True)
    position = np.searchsorted(classes, queries).clip(0, max(len(classes) - 1, 0))
    found = (classes[position] == queries) if len(classes) else np.zeros(len(queries), bool)
    r = np.where(found, counts[position] if len(classes) else 0, 0) - int(queries_in_gallery)
    r = np.maximum(r, 0)  # (Q,)
    if r.size and r.max() > results.shape[1]:
        raise ValueError(f"MAP@R needs at least R = {r.max()} results per query, got "
                         f"{results.shape[1]}: search with k >= the largest class size")
    width = int(r.max()) if r.size else 0
    ranks = np.arange(1, width + 1)  # (R_max,)
    within = ranks[None, :] <= r[:, None]  # (Q, R_max)
    relevant = (results[:, :width] == queries[:, None]) & within
    precision = np.cumsum(relevant, axis=1) / ranks[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(r > 0, (precision * relevant).sum(axis=1) / r, np.nan)
    if not average:
        return ap
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def per_class(values: Any, labels: Any) -> dict[int, float]:
    """Mean of per-query values (e.g. ``average=False`` metrics) grouped by query label.

    Args:
        values: (Q,) per-query values; NaN entries are skipped.
        labels: (Q,) integer labels of the queries.

    Returns:
        label -> mean value (NaN if all of that class are NaN), in label order.
    """
    values = np.asarray(torch.as_tensor(values).detach().cpu().numpy(), dtype=np.float64)
    labels = torch.as_tensor(labels).detach().cpu().numpy().astype(np.int64)
    if values.shape != labels.shape or values.ndim != 1:
        raise ValueError(f"values and labels must both be (Q,), got {values.shape} and "
                         f"{labels.shape}")
    classes, inverse = np.unique(labels, return_inverse=True)
    ok = np.isfinite(values)
    sums = np.bincount(inverse[ok], weights=values[ok], minlength=len(classes))
    counts = np.bincount(inverse[ok], minlength=len(classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return {int(c): float(m) for c, m in zip(classes, means)}


def crop_boxes(image: Any, boxes: Any, *, pad: int = 0) -> list[np.ndarray]:
    """Crops of an image for display (e.g. :func:`dlde.plots.detection_plots.plot_retrieval_grid`).

    Args:
        image: (3, H, W) tensor/array or (H, W, 3) array.
        boxes: (N, 4) as x1, y1, x2, y2 in the image's pixels (clipped to it).
        pad: pixels added on every side.

    Returns:
        N arrays (h, w, 3) (at least 1 x 1 pixel each), in the dtype of ``image``.
    """
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if image.ndim != 3:
        raise ValueError(f"image must be (3, H, W) or (H, W, 3), got {image.shape}")
    h, w = image.shape[:2]
    boxes = torch.as_tensor(boxes).detach().cpu().double().reshape(-1, 4).numpy()
    x1 = np.clip(np.floor(boxes[:, 0]) - pad, 0, w - 1).astype(int)
    y1 = np.clip(np.floor(boxes[:, 1]) - pad, 0, h - 1).astype(int)
    x2 = np.maximum(np.clip(np.ceil(boxes[:, 2]) + pad, 0, w).astype(int), x1 + 1)
    y2 = np.maximum(np.clip(np.ceil(boxes[:, 3]) + pad, 0, h).astype(int), y1 + 1)
    return [image[b:d, a:c] for a, b, c, d in zip(x1, y1, x2, y2)]  # slicing views per box


@torch.no_grad()
def box_embeddings(model: nn.Module, images: torch.Tensor, boxes: list[Any]) -> list[torch.Tensor]:
    """One unit embedding per box: the normalized sum of the embeddings of its matched anchors.

    Anchors are matched to the boxes as in training (:func:`dlde.model.anchors.assign_batch` with
    the model's ``assignation_thresholds`` and ``allow_low_quality_matches``, each anchor
    going to its best box), so a box gets the anchors its class mean would be tracked from.
    Works for detected boxes (``model.predict``) and ground-truth boxes alike.

    Args:
        model: a detector with ``embeddings(images) -> (anchors (B, A, 4), unit embeddings
            (B, A, d))`` (:class:`dlde.DLDENetWithTrackedMeans`).
        images: (B, 3, H, W) network input.
        boxes: B tensors (N_i, 4) as x1, y1, x2, y2 in network-input pixels.

    Returns:
        B float32 tensors (N_i, d) on the images' device; a box that no anchor matches
        (only possible without low-quality matches) gets a zero row.
    """
    if not hasattr(model, "embeddings"):
        raise TypeError(f"{type(model).__name__} has no embeddings(): use a DLDENetWithTrackedMeans")
    if len(boxes) != len(images):
        raise ValueError(f"got {len(boxes)} box tensors for {len(images)} images")
    boxes = [torch.as_tensor(b, dtype=torch.float32, device=images.device).reshape(-1, 4)
             for b in boxes]
    batch, most = len(images), max([len(b) for b in boxes] + [1])
    annotations = images.new_full((batch, most, 5), -1.0)  # label = the box's index in its image
    for i, b in enumerate(boxes):  # loop over images
        annotations[i, :len(b), :4] = b
        annotations[i, :len(b), 4] = torch.arange(len(b), device=images.device)
    anchors, embeddings = model.embeddings(images)  # (B, A, 4), (B, A, d)
    assignment = assign_batch(anchors[0], annotations, model.assignation_thresholds,
                              allow_low_quality_matches=model.allow_low_quality_matches)
    objects = assignment.objects_mask  # (B, A)
    box_index = assignment.assigned_annotations[..., 4].long()  # (B, A)
    group = (torch.arange(batch, device=images.device)[:, None] * most + box_index)[objects]
    sums = embeddings.new_zeros((batch * most, embeddings.shape[-1]))
    sums.index_add_(0, group, embeddings[objects].float())
    unit = F.normalize(sums, dim=1).reshape(batch, most, -1)  # zero rows stay zero
    return [unit[i, :len(b)] for i, b in enumerate(boxes)]
