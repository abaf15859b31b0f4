"""The confidence interval of a mean over seeds or draws (two-sided Student's t).

Used by the sweep statistics (:mod:`dlde.analysis.sweep_stats`, over seeds) and by the few-shot
summary (:func:`dlde.protocols.fewshot.summarize`, over k-shot draws).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95  # coverage of every interval unless asked otherwise


def t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile of Student's t-distribution with ``dof`` degrees of freedom."""
    from scipy.stats import t

    if dof < 1:
        raise ValueError(f"t quantile needs dof >= 1, got {dof}")
    return float(t.ppf(probability, dof))


def t_interval(values: Sequence[float | None], confidence: float = CONFIDENCE) -> dict[str, float]:
    """Mean, sample standard deviation and the two-sided t confidence interval of the mean.

    Missing (None) and non-finite values (a metric a run did not produce) are left out.

    Args:
        values: (n,) one value per seed or draw.
        confidence: coverage of the interval, e.g. 0.95.

    Returns:
        ``mean``, ``sd`` (ddof 1), ``low``, ``high``, ``n`` (in this order); ``sd``/``low``/``high``
        are NaN for fewer than two values and everything but ``n`` is NaN for none.
    """
    x = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "sd": nan, "low": nan, "high": nan, "n": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "sd": nan, "low": nan, "high": nan, "n": 1}
    sd = float(x.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": n}
