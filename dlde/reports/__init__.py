"""Reports written from finished runs: a sweep's tables and figures (:mod:`.sweeps`), one way from
its run folders through the numbers (:mod:`dlde.analysis`) and the figures (:mod:`dlde.plots`) to its
files under ``figures/ablations``.
"""
