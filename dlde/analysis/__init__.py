"""Metrics of trained models and runs: pure functions of embeddings, scores, detections and run
folders, tested on hand-made inputs.

:mod:`.embeddings` (angles between means, κ̂, cosine margins, UMAP projections), :mod:`.calibration`
(reliability and ECE), :mod:`.openset` (unknown scores and open-set metrics: AUROC, WI, A-OSE),
:mod:`.retrieval` (box embeddings, the embedding index, MAP@R, Recall@k), :mod:`.stats` (the
t-interval), :mod:`.inspection` (the embeddings of the anchors matched to objects),
:mod:`.sweep_stats` (a run folder's final numbers, per arm over seeds) and :mod:`.mechanism` (the
pieces of notebook 00). COCO and LVIS evaluation is :mod:`dlde.evaluation`; the protocols that
compute these metrics on base models are :mod:`dlde.protocols`, their figures :mod:`dlde.plots`.
"""
