"""Figures of the data and of the trained model, drawn with matplotlib.

Functions build :class:`matplotlib.figure.Figure` objects directly (no pyplot
state, no screen needed); :func:`save_figure` writes one to PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mnist_pipeline.files import replace_atomically

_CMAP = "gray"


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG and return its path."""
    with replace_atomically(path) as file:
        figure.savefig(file, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_samples(
    images: np.ndarray, labels: np.ndarray, per_class: int = 5, seed: int = 0
) -> Figure:
    """A grid with ``per_class`` random images of each class, one row per class."""
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    figure = Figure(
        figsize=(1.2 * per_class + 0.6, 1.2 * len(classes)), layout="constrained"
    )
    axes = figure.subplots(len(classes), per_class, squeeze=False)
    for row, label in zip(axes, classes, strict=True):
        members = np.flatnonzero(labels == label)
        picked = rng.choice(members, size=min(per_class, len(members)), replace=False)
        for ax, index in zip(row, picked, strict=False):
            ax.imshow(np.squeeze(images[index]), cmap=_CMAP, vmin=0, vmax=255)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(str(label), rotation=0, labelpad=14, fontsize=13)
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
    cols = min(5, len(wrong))
    rows = int(np.ceil(len(wrong) / cols))
    figure = Figure(figsize=(1.9 * cols, 2.1 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, index in zip(axes, wrong, strict=False):
        ax.imshow(np.squeeze(images[index]), cmap=_CMAP)
        ax.set_title(
            f"true {y_true[index]} → {y_pred[index]}\n({confidence[index]:.0%})",
            fontsize=9,
        )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.set_axis_off()
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
    rows = int(np.ceil(channels / cols))
    figure = Figure(
        figsize=(1.5 * (cols + 1.5), 1.5 * rows + 0.6), layout="constrained"
    )
    grid = figure.add_gridspec(rows, cols + 2, width_ratios=[1.5, 0.2] + [1] * cols)
    ax = figure.add_subplot(grid[: min(rows, 2), 0])
    ax.imshow(np.squeeze(image), cmap=_CMAP)
    ax.set_title("input", fontsize=9)
    ax.set_axis_off()
    for channel in range(channels):
        ax = figure.add_subplot(grid[channel // cols, 2 + channel % cols])
        ax.imshow(maps[..., channel], cmap="viridis")
        ax.set_title(str(channel), fontsize=7, pad=2)
        ax.set_axis_off()
    figure.suptitle(title)
    return figure
