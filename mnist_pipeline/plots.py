"""Figures of the data and of the trained model, drawn with matplotlib.

Functions build :class:`matplotlib.figure.Figure` objects directly (no pyplot
state, no screen needed); :func:`save_figure` writes one to PNG.

Grids of small images (samples, mistakes, feature maps) are drawn as one mosaic
image with a text label over each tile: a figure with one axes per panel took
over a second to lay out and draw, the mosaic a tenth of that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mnist_pipeline.files import atomic_write

if TYPE_CHECKING:
    from mnist_pipeline.drift import DriftReport, FeatureDrift, Profile

_CMAP = "gray"
_POINTS_PER_INCH = 72


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG and return its path.

    Every figure uses constrained layout, which already fits titles and labels
    inside it; ``bbox_inches="tight"`` would only draw it a second time.
    """
    return atomic_write(path, lambda partial: figure.savefig(partial, dpi=110))


@dataclass(frozen=True)
class _Mosaic:
    """Tiles of equal size laid out in a grid, each with room for a label above."""

    tile: tuple[int, int]  # (height, width) of one tile in pixels
    cols: int
    rows: int
    label_px: int  # pixel rows above each tile for its label
    inches_per_px: float

    @classmethod
    def plan(
        cls, count: int, tile: tuple[int, int], cols: int, tile_inches: float, label
    ) -> _Mosaic:
        """Lay out ``count`` tiles; ``label`` is (lines, font size) of their labels."""
        inches_per_px = tile_inches / tile[0]
        lines, size = label
        label_inches = lines * size * 1.3 / _POINTS_PER_INCH if lines else 0.0
        rows = int(np.ceil(count / cols))
        return cls(
            tile, cols, rows, int(np.ceil(label_inches / inches_per_px)), inches_per_px
        )

    @property
    def gap(self) -> int:
        return max(1, round(0.1 * self.tile[1]))

    @property
    def cell(self) -> tuple[int, int]:
        return self.label_px + self.tile[0] + self.gap, self.tile[1] + self.gap

    def inches(self) -> tuple[float, float]:
        """Width and height of the whole mosaic in inches."""
        height, width = self.cell
        return (
            self.cols * width * self.inches_per_px,
            self.rows * height * self.inches_per_px,
        )

    def origin(self, index: int) -> tuple[int, int]:
        """Top-left pixel (row, column) of tile ``index``."""
        row, col = divmod(index, self.cols)
        height, width = self.cell
        return row * height + self.label_px, col * width


def _draw_tiles(
    ax: Axes,
    tiles: np.ndarray,
    mosaic: _Mosaic,
    labels: Sequence[str] = (),
    *,
    cmap: str,
    vmin: float,
    vmax: float,
    fontsize: float = 9,
) -> None:
    """Draw ``tiles`` (N, H, W) as one image on ``ax``, each labelled above."""
    import matplotlib

    height, width = mosaic.cell
    canvas = np.full((mosaic.rows * height, mosaic.cols * width), np.nan)
    for index, tile in enumerate(tiles):
        top, left = mosaic.origin(index)
        canvas[top : top + mosaic.tile[0], left : left + mosaic.tile[1]] = tile
    for index, label in enumerate(labels):
        top, left = mosaic.origin(index)
        ax.text(
            left + (mosaic.tile[1] - 1) / 2,
            top - 0.8,
            label,
            ha="center",
            va="bottom",
            fontsize=fontsize,
            linespacing=1.1,
        )
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="white")
    ax.imshow(canvas, cmap=colormap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()


def _unit_range(tiles: np.ndarray) -> np.ndarray:
    """Scale each tile to 0..1 on its own, as ``imshow`` autoscales one image."""
    axes = tuple(range(1, tiles.ndim))
    low = tiles.min(axis=axes, keepdims=True)
    span = tiles.max(axis=axes, keepdims=True) - low
    return (tiles - low) / np.where(span > 0, span, 1)


def plot_samples(
    images: np.ndarray, labels: np.ndarray, per_class: int = 5, seed: int = 0
) -> Figure:
    """A grid with ``per_class`` random images of each class, one row per class."""
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    images = images.reshape(len(images), *images.shape[1:3])
    mosaic = _Mosaic.plan(
        len(classes) * per_class, images.shape[1:3], per_class, 1.2, (0, 0)
    )
    tiles = np.full((len(classes) * per_class, *mosaic.tile), np.nan)
    for row, label in enumerate(classes):
        members = np.flatnonzero(labels == label)
        picked = rng.choice(members, size=min(per_class, len(members)), replace=False)
        tiles[row * per_class : row * per_class + len(picked)] = images[picked]
    width, height = mosaic.inches()
    figure = Figure(figsize=(width + 0.6, height + 0.4), layout="constrained")
    ax = figure.subplots()
    _draw_tiles(ax, tiles, mosaic, cmap=_CMAP, vmin=0, vmax=255)
    for row, label in enumerate(classes):
        top, _ = mosaic.origin(row * per_class)
        ax.text(
            -mosaic.gap,
            top + mosaic.tile[0] / 2,
            str(label),
            ha="right",
            va="center",
            fontsize=13,
        )
    figure.suptitle(f"{per_class} random training images per class", fontsize=12)
    return figure


def plot_class_distribution(
    y_train: np.ndarray, y_test: np.ndarray, num_classes: int = 10
) -> Figure:
    """Bars of how many images each class has, train beside test."""
    classes = np.arange(num_classes)
    figure = Figure(figsize=(9, 4), layout="constrained")
    ax = figure.subplots()
    width = 0.4
    for offset, (split, labels) in zip(
        (-width / 2, width / 2), (("train", y_train), ("test", y_test)), strict=True
    ):
        counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
        bars = ax.bar(classes + offset, counts[:num_classes], width, label=split)
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(classes)
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("Class distribution")
    ax.margins(y=0.12)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def plot_pixel_histogram(x_train: np.ndarray, x_test: np.ndarray) -> Figure:
    """Histogram of pixel intensities (log scale: most MNIST pixels are 0)."""
    figure = Figure(figsize=(8, 4), layout="constrained")
    ax = figure.subplots()
    edges = np.arange(0, 257, 8)
    for split, images in (("train", x_train), ("test", x_test)):
        counts = np.bincount(images.reshape(-1).astype(np.int64), minlength=256)
        binned = counts[:256].reshape(-1, 8).sum(axis=1)
        ax.stairs(binned / max(binned.sum(), 1), edges, label=split, linewidth=1.5)
    ax.set_yscale("log")
    ax.set_xlim(0, 256)
    ax.set_xlabel("pixel intensity (0 = black, 255 = white)")
    ax.set_ylabel("share of pixels")
    ax.set_title("Pixel intensity distribution")
    ax.legend()
    return figure


def plot_confusion_matrix(matrix: np.ndarray) -> Figure:
    """The confusion matrix with counts in every cell."""
    num_classes = len(matrix)
    figure = Figure(figsize=(7, 6), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if count > threshold else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (test split)")
    return figure


def plot_misclassified(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    max_images: int = 25,
) -> Figure:
    """The most confident mistakes, titled true -> predicted (confidence)."""
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:max_images]
    if len(wrong) == 0:
        figure = Figure(figsize=(5, 2), layout="constrained")
        figure.text(0.5, 0.5, "No misclassified test images", ha="center", va="center")
        return figure
    tiles = _unit_range(images[wrong].reshape(len(wrong), *images.shape[1:3]))
    mosaic = _Mosaic.plan(len(wrong), tiles.shape[1:], min(5, len(wrong)), 1.5, (2, 9))
    titles = [f"true {y_true[i]} → {y_pred[i]}\n({confidence[i]:.0%})" for i in wrong]
    width, height = mosaic.inches()
    figure = Figure(figsize=(width + 0.4, height + 0.6), layout="constrained")
    _draw_tiles(figure.subplots(), tiles, mosaic, titles, cmap=_CMAP, vmin=0, vmax=1)
    total = int((y_true != y_pred).sum())
    figure.suptitle(
        f"Misclassified test images: the {len(wrong)} most confident of {total}"
    )
    return figure


def plot_training_curves(history: Mapping[str, Sequence[float]]) -> Figure:
    """Loss and accuracy per epoch, training beside validation."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(key, [])
            epochs = np.arange(1, len(values) + 1)
            ax.plot(epochs, values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"Training {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    return figure


def plot_feature_maps(image: np.ndarray, maps: np.ndarray, title: str) -> Figure:
    """The input image beside every channel of one layer's output for it."""
    channels = maps.shape[-1]
    cols = min(channels, 6 if channels % 6 == 0 else 5)
    tiles = _unit_range(np.moveaxis(maps, -1, 0))
    mosaic = _Mosaic.plan(channels, tiles.shape[1:], cols, 1.2, (1, 7))
    width, height = mosaic.inches()
    figure = Figure(figsize=(width + 2.6, max(height, 2.4) + 0.6), layout="constrained")
    source, grid = figure.subplots(1, 2, width_ratios=[2.0, width])
    source.imshow(np.squeeze(image), cmap=_CMAP)
    source.set_title("input", fontsize=9)
    source.set_axis_off()
    source.set_anchor("N")
    labels = [str(channel) for channel in range(channels)]
    _draw_tiles(grid, tiles, mosaic, labels, cmap="viridis", vmin=0, vmax=1, fontsize=7)
    figure.suptitle(title)
    return figure


_DRIFT_COLOUR = "#d62728"
_STEADY_COLOUR = "#1f77b4"
_REFERENCE_COLOUR = "0.6"


def plot_drift(batch: Profile, reference: Profile, report: DriftReport) -> Figure:
    """A batch's features over the reference's, one panel each; drift in red.

    Args:
        batch: the batch's :class:`~mnist_pipeline.drift.Profile`.
        reference: the model version's reference profile.
        report: :func:`~mnist_pipeline.drift.compare`'s report for the two.
    """
    figures = {f.name: f for f in report.features}
    names = list(figures)
    cols = 4
    rows = int(np.ceil(len(names) / cols))
    figure = Figure(figsize=(4.0 * cols, 2.9 * rows + 0.8), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        feature = figures[name]
        if name == "pixel_histogram":
            _overlay_pixels(ax, batch.pixel_shares, reference.pixel_shares, feature)
        elif name == "predicted_class":
            _overlay_classes(ax, batch.class_shares, reference.class_shares, feature)
        else:
            _overlay_values(ax, batch.features[name], reference.features[name], feature)
        verdict = "DRIFT" if feature.drifted else "ok"
        colour = _DRIFT_COLOUR if feature.drifted else "black"
        statistic = (
            f"JS {feature.js_distance:.2f}"
            if feature.kind == "pixels"
            else f"PSI {feature.psi:.2f}"
        )
        ax.set_title(
            f"{name.replace('_', ' ')}: {verdict} ({statistic})",
            color=colour,
            fontsize=10,
            fontweight="bold" if feature.drifted else "normal",
        )
        ax.tick_params(labelsize=8)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    axes[0].legend(fontsize=8, loc="upper right")
    verdict = (
        f"DRIFT in {len(report.drifting)} of {len(names)} features"
        if report.drift_detected
        else "no drift"
    )
    figure.suptitle(
        f"Batch of {report.images} image(s) vs the model's reference of "
        f"{reference.images}: {verdict}\n"
        f"{report.ood_images} image(s) out of distribution; grey: "
        "reference, line: batch (red where it drifted)",
        fontsize=12,
        color=_DRIFT_COLOUR if report.drift_detected else "black",
    )
    return figure


def _batch_colour(feature: FeatureDrift) -> str:
    return _DRIFT_COLOUR if feature.drifted else _STEADY_COLOUR


def _overlay_values(
    ax: Axes, ours: Sequence[float], theirs: Sequence[float], feature: FeatureDrift
) -> None:
    """Both samples' histograms on shared bins, as shares of their images."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    low = min(ours.min(), theirs.min())
    high = max(ours.max(), theirs.max())
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, 31)
    for values, label, style in (
        (theirs, "reference", {"color": _REFERENCE_COLOUR, "fill": True, "alpha": 0.6}),
        (ours, "batch", {"color": _batch_colour(feature), "linewidth": 2}),
    ):
        counts, _ = np.histogram(values, edges)
        ax.stairs(counts / max(len(values), 1), edges, label=label, **style)
    ax.set_ylabel("share of images", fontsize=8)


def _overlay_pixels(
    ax: Axes, ours: Sequence[float], theirs: Sequence[float], feature: FeatureDrift
) -> None:
    edges = np.linspace(0, 256, len(theirs) + 1)
    ax.stairs(theirs, edges, color=_REFERENCE_COLOUR, fill=True, alpha=0.6)
    ax.stairs(ours, edges, color=_batch_colour(feature), linewidth=2)
    ax.set_yscale("log")
    ax.set_xlabel("pixel intensity", fontsize=8)
    ax.set_ylabel("share of pixels", fontsize=8)


def _overlay_classes(
    ax: Axes, ours: Sequence[float], theirs: Sequence[float], feature: FeatureDrift
) -> None:
    classes = np.arange(len(theirs))
    ax.bar(classes - 0.2, theirs, 0.4, color=_REFERENCE_COLOUR)
    ax.bar(classes + 0.2, ours, 0.4, color=_batch_colour(feature))
    ax.set_xticks(classes)
    ax.set_xlabel("predicted class", fontsize=8)
    ax.set_ylabel("share of images", fontsize=8)
