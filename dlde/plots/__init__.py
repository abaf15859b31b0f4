"""Figures: every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` drawn at its print
width, and the widgets of the notebooks.

:mod:`.plotting` (what every figure shares: colours, sizes, print style, deterministic saving),
:mod:`.metric_plots` (training curves, AP per class, calibration, open-set scores),
:mod:`.embedding_plots` (class means and embeddings), :mod:`.detection_plots` (images with boxes,
retrieval crops), :mod:`.fewshot_plots` (the few-shot and unknown-object protocols),
:mod:`.vocabulary_plots` (the large-vocabulary sweeps), :mod:`.sweep_plots` (a sweep over seeds) and
:mod:`.interactive` (JupyterLab widgets). The plots read numbers (:mod:`dlde.analysis`) and protocol
results (:mod:`dlde.protocols`); they compute nothing a table needs.
"""
