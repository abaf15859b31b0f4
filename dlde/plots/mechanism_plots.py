"""Figures of ``notebooks/00_mechanism.ipynb`` (:mod:`dlde.protocols.mechanism`): the score of a class
against the cosine, and tracked means moving (or collapsing) on a stream of embeddings.

One column wide, print-sized (:func:`dlde.plots.plotting.print_style`); series differ by line
style as well as colour, so the figures read in grey.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .plotting import LINES, OKABE_ITO, figure_size, print_style

__all__ = ["plot_probability_curves", "plot_stream_tracking"]


@print_style
def plot_probability_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]):
    """``p_c`` against the cosine ``s_c`` for a few ``(w, b)`` (:func:`dlde.protocols.mechanism.probability_curves`)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figure_size(2.4))
    for index, (label, (cosines, p)) in enumerate(curves.items()):
        ax.plot(cosines, p, color=OKABE_ITO[index % len(OKABE_ITO)], ls=LINES[index % len(LINES)], label=label)
    ax.set_xlabel("cosine s_c between embedding and class mean")
    ax.set_ylabel("class probability p_c")
    ax.set_xlim(-1, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


@print_style
def plot_stream_tracking(runs: Mapping[str, Mapping[str, np.ndarray]]):
    """Tracked means on a stream of embeddings that share one direction
    (:func:`dlde.protocols.mechanism.track_stream`): left, how far one class mean turned from its start;
    right, the smallest angle between two means (it falls when they collapse together)."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=figure_size(2.3, columns=2))
    for index, (label, run) in enumerate(runs.items()):
        style = {"color": OKABE_ITO[index % len(OKABE_ITO)], "ls": LINES[index % len(LINES)], "label": label}
        steps = np.arange(len(run["angle_to_start"]))
        left.plot(steps, run["angle_to_start"], **style)
        right.plot(steps, run["min_angle"], **style)
    left.set_title("one class mean: degrees from its start")
    right.set_title("smallest angle between two means (°)")
    for ax in (left, right):
        ax.set_xlabel("tracked batches")
        ax.grid(alpha=0.3)
    right.legend(loc="best")
    fig.tight_layout()
    return fig
