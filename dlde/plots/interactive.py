"""Interactive figures for JupyterLab, static ones everywhere else.

In a kernel started by a Jupyter server (JupyterLab), figures are shown as ``ipympl`` widgets
(matplotlib's own interactive backend: zoom, pan, 3-D rotation) and :class:`MeansExplorer`
gets an epoch slider and a class selector (``ipywidgets``). Under papermill or in a terminal
the same notebook cells draw and save the ordinary static figures.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .plotting import LABEL_PT, class_colors, figure_size, print_style

#: ``1``/``0`` forces widgets on/off; unset: on when the kernel was started by a Jupyter server.
WIDGETS_ENV = "DLDE_WIDGETS"


def use_widgets(enable: bool | None = None) -> bool:
    """Whether this kernel shows widgets (True in JupyterLab, False under papermill).

    Jupyter servers start kernels with ``JPY_SESSION_NAME`` set; papermill and nbclient do
    not, so executed notebooks keep static PNG figures.

    Args:
        enable: force the answer; None decides from ``$DLDE_WIDGETS`` (``1``/``0``), else from
            ``JPY_SESSION_NAME``.

    Raises:
        ImportError: widgets requested but ``ipympl`` or ``ipywidgets`` is not installed.
    """
    if enable is None:
        forced = os.environ.get(WIDGETS_ENV, "").strip().lower()
        enable = forced in {"1", "true", "yes"} if forced else "JPY_SESSION_NAME" in os.environ
    if enable:
        import ipympl  # noqa: F401  (fails here, with the package named, not at the first figure)
        import ipywidgets  # noqa: F401
    return bool(enable)


def widget_canvas(fig):
    """Attach an ``ipympl`` widget canvas to ``fig`` and return it (display it to show ``fig``).

    The figure stays usable after :func:`dlde.plots.plotting.save_figure` closed it in pyplot; the
    canvas also carries a PNG of the figure for viewers without widgets.
    """
    from ipympl.backend_nbagg import Canvas, FigureManager

    canvas = Canvas(fig)
    with warnings.catch_warnings():  # ipympl's toolbar passes traitlets an argument it deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        manager = FigureManager(canvas, id(fig))
    canvas.header_visible = False
    canvas.manager = manager
    return canvas


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pca_basis(points: np.ndarray) -> np.ndarray:
    """The two leading principal directions of ``points``.

    Args:
        points: (N, d) with d >= 2.

    Returns:
        (d, 2) orthonormal columns.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError(f"points must be (N, d) with d >= 2, got shape {points.shape}")
    finite = points[np.isfinite(points).all(axis=1)]
    _, _, vt = np.linalg.svd(finite - finite.mean(axis=0), full_matrices=False)
    basis = vt[:2].T
    if basis.shape[1] < 2:  # a single point: any two axes
        basis = np.eye(points.shape[1])[:, :2]
    return basis


class MeansExplorer:
    """The tracked class means through training, in one fixed 2-D projection.

    The projection is the PCA plane of the unit embeddings (when given) and of every class
    mean of every epoch, so positions at different epochs are comparable. Each class shows its
    mean at the chosen epoch (star) and its path up to that epoch (line); the embeddings are
    drawn faintly behind. Highlighting one class fades the others.

    Args:
        means_history: (E + 1, C, d) class means before training and after each epoch.
        class_names: C names.
        embeddings: optional (N, d) embeddings of matched anchors (the final model's).
        labels: (N,) class of each embedding; required with ``embeddings``.

    Attributes:
        figure: the matplotlib figure (not registered with pyplot).
        epoch: the epoch shown (0 = before training).
        highlight: the highlighted class, or None for all.
        points: (E + 1, C, 2) projected means.
    """

    @print_style
    def __init__(self, means_history: Any, class_names: Sequence[str], embeddings: Any = None,
                 labels: Any = None) -> None:
        from matplotlib.figure import Figure

        history = np.asarray(means_history, dtype=np.float64)
        if history.ndim != 3 or history.shape[0] < 1:
            raise ValueError(f"means_history must be (epochs + 1, C, d), got shape {history.shape}")
        steps, classes, dim = history.shape
        if len(class_names) != classes:
            raise ValueError(f"class_names has {len(class_names)} names for {classes} classes")
        history = _unit(history)
        stack = [history.reshape(-1, dim)]
        if embeddings is not None:
            embeddings = _unit(np.asarray(embeddings, dtype=np.float64))
            labels = np.asarray(labels, dtype=np.int64)
            if embeddings.ndim != 2 or embeddings.shape[1] != dim or labels.shape != (len(embeddings),):
                raise ValueError(f"embeddings must be (N, {dim}) with (N,) labels, got {embeddings.shape} "
                                 f"and {labels.shape}")
            stack.append(embeddings)
        basis = pca_basis(np.concatenate(stack))  # (d, 2)
        self.points = history @ basis  # (E + 1, C, 2)
        self.class_names = list(class_names)
        self.colors = class_colors(classes)  # (C, 4) RGBA

        self.figure = Figure(figsize=figure_size(2.9), layout="constrained")  # one column, print text sizes
        ax = self.axes = self.figure.add_subplot()
        self._embedding_labels = None
        if embeddings is not None and len(embeddings):
            xy = embeddings @ basis  # (N, 2)
            self._embedding_labels = labels
            self._embeddings = ax.scatter(xy[:, 0], xy[:, 1], s=6, c=self.colors[labels], alpha=0.25,
                                          linewidths=0)
        self._paths = [ax.plot([], [], "-", color=self.colors[c], lw=1.2)[0] for c in range(classes)]
        self._stars = ax.scatter(self.points[-1, :, 0], self.points[-1, :, 1], marker="*", s=90,
                                 c=self.colors, edgecolors="black", linewidths=0.6, zorder=3)
        self._texts = [ax.annotate(name, self.points[-1, c], xytext=(6, 6), textcoords="offset points")
                       for c, name in enumerate(self.class_names)]
        everything = self.points.reshape(-1, 2)
        low, high = everything.min(axis=0), everything.max(axis=0)
        if embeddings is not None and len(embeddings):
            low, high = np.minimum(low, xy.min(axis=0)), np.maximum(high, xy.max(axis=0))
        pad = 0.08 * np.maximum(high - low, 1e-3)
        ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
        ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        self.epoch, self.highlight = steps - 1, None
        self.update(steps - 1, None)

    @property
    def epochs(self) -> int:
        """Number of training epochs in the history (the slider runs from 0 to this)."""
        return self.points.shape[0] - 1

    def update(self, epoch: int | None = None, highlight: int | None = -1) -> None:
        """Show the means after ``epoch`` and highlight class ``highlight``.

        Args:
            epoch: 0..epochs (0 = before training); None keeps the current one.
            highlight: class index, None for all classes, -1 keeps the current choice.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        if not 0 <= epoch <= self.epochs:
            raise ValueError(f"epoch {epoch} outside 0..{self.epochs}")
        if highlight != -1:
            if highlight is not None and not 0 <= int(highlight) < len(self.class_names):
                raise ValueError(f"highlight {highlight} is not a class index (0..{len(self.class_names) - 1})")
            self.highlight = None if highlight is None else int(highlight)
        self.epoch = epoch
        alpha = np.ones(len(self.class_names))
        if self.highlight is not None:
            alpha[:] = 0.15
            alpha[self.highlight] = 1.0
        for c, (path, text) in enumerate(zip(self._paths, self._texts)):
            path.set_data(self.points[: epoch + 1, c, 0], self.points[: epoch + 1, c, 1])
            path.set_alpha(alpha[c])
            text.xy = tuple(self.points[epoch, c])
            text.set_alpha(alpha[c])
        self._stars.set_offsets(self.points[epoch])
        self._stars.set_alpha(alpha)
        if self._embedding_labels is not None:
            self._embeddings.set_alpha(0.25 * alpha[self._embedding_labels])
        chosen = "all classes" if self.highlight is None else f"class {self.class_names[self.highlight]}"
        when = "before training" if epoch == 0 else f"after epoch {epoch}"
        self.axes.set_title(f"class means {when} ({chosen})", fontsize=LABEL_PT)  # also called outside __init__
        self.figure.canvas.draw_idle()

    def controls(self):
        """An epoch slider and a class selector driving :meth:`update` (``ipywidgets``)."""
        import ipywidgets as widgets

        slider = widgets.IntSlider(value=self.epoch, min=0, max=self.epochs, step=1, description="epoch",
                                   continuous_update=True)
        selector = widgets.Dropdown(options=[("all", None)] + [(n, c) for c, n in enumerate(self.class_names)],
                                    value=self.highlight, description="class")
        slider.observe(lambda change: self.update(epoch=change["new"]), names="value")
        selector.observe(lambda change: self.update(highlight=change["new"]), names="value")
        return widgets.HBox([slider, selector])
