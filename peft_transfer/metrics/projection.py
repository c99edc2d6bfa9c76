"""The paper's Fig. 7: real, accepted and rejected inputs in two principal components (`pca_2d`,
`plot_projection`; matplotlib is imported only to draw)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .distance import _as_points


def pca_2d(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """
    Projects each array onto the first two principal axes of all of them pooled.

    Args:
        arrays (`list[np.ndarray]`, each of shape `(n_i, dim)`, `n_i >= 1`): the groups to project.

    Returns:
        `list[np.ndarray]`, each of shape `(n_i, 2)`. When `dim` or the rank is below 2 the missing coordinate
        is 0, so that one-dimensional embeddings still plot.
    """
    pooled = np.concatenate(arrays)
    center = pooled.mean(0)
    # The principal axes are the right singular vectors of the centered data (no scikit-learn needed).
    _, _, vt = np.linalg.svd(pooled - center, full_matrices=False)
    axes = np.zeros((pooled.shape[1], 2))
    axes[:, : min(2, vt.shape[0])] = vt[:2].T
    return [(array - center) @ axes for array in arrays]


def plot_projection(real, accepted, rejected, path, *, title: str | None = None) -> Path:
    """
    Scatter of real, accepted and rejected inputs in the first two principal components (paper Fig. 7).

    The PCA is fitted on the three sets pooled, so that the axes do not favour any one of them.

    Args:
        real (`np.ndarray` of shape `(n_real, dim)`): Embeddings of real task inputs.
        accepted (`np.ndarray` of shape `(n_accepted, dim)`): Embeddings of candidates the filter kept.
        rejected (`np.ndarray` of shape `(n_rejected, dim)`): Embeddings of candidates the filter dropped.
            Any of the three may be empty (0 rows); it is then left out of the plot and the legend.
        path (`str` or `os.PathLike`): Where to write the PNG; parent folders are created.
        title (`str`, *optional*): Title of the figure.

    Returns:
        `pathlib.Path`: the path written.
    """
    try:
        # The object-oriented API with the Agg canvas: no pyplot global state, no GUI backend, safe in threads
        # and on headless training nodes, and it leaves the caller's backend choice alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "`plot_projection` needs matplotlib: `pip install matplotlib` (or `pip install peft-transfer[plots]`)."
        ) from error

    groups = [("real", real), ("accepted", accepted), ("rejected", rejected)]
    arrays = []
    dims = set()
    for name, points in groups:
        array = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
        if array.size == 0:
            array = array.reshape(0, array.shape[-1] if array.ndim == 2 else 0)
        else:
            array = _as_points(array, name)
            dims.add(array.shape[1])
        arrays.append(array)
    if not dims:
        raise ValueError("All three embedding arrays are empty: nothing to plot.")
    if len(dims) > 1:
        raise ValueError(f"The embedding arrays have different dimensions: {sorted(dims)}.")
    projections = iter(pca_2d([array for array in arrays if array.shape[0]]))
    arrays = [next(projections) if array.shape[0] else array for array in arrays]

    figure = Figure(figsize=(6, 5), dpi=120)
    FigureCanvasAgg(figure)
    plot = figure.add_subplot(1, 1, 1)
    styles = {"real": ("tab:blue", "o"), "accepted": ("tab:green", "^"), "rejected": ("tab:red", "x")}
    for (name, _), array in zip(groups, arrays):
        if array.shape[0] == 0:
            continue
        color, marker = styles[name]
        plot.scatter(array[:, 0], array[:, 1], s=12, c=color, marker=marker, alpha=0.7,
                     label=f"{name} ({array.shape[0]})")
    plot.set_xlabel("PC 1")
    plot.set_ylabel("PC 2")
    plot.legend(loc="best")
    if title:
        plot.set_title(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
