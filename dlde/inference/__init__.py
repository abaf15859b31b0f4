"""Inference: a trained detector on images. :mod:`.detect` runs it on dataset items (with their
ground truth) or on a folder of your own images; :mod:`.unknown_flag` flags detections as unknown
objects by one named unknown score, its threshold set on the run's own validation detections, with
the per-detection scores of :mod:`.unknown_scores` (which the unknown-object protocol,
:mod:`dlde.protocols.openset`, computes too).
"""
