"""Plots are drawn with content: every panel, label and bar a reader looks for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread

from mnist_pipeline import plots
from mnist_pipeline.data import save_dataset
from tasks.plot import plot_data


def drawn_pixels(ax) -> int:
    """Pixels of the tiles drawn on a mosaic axes (the gaps between are blank)."""
    return int(np.ma.count(ax.images[0].get_array()))


def test_samples_grid_has_five_per_class(tiny_dataset, tmp_path):
    figure = plots.plot_samples(tiny_dataset.x_train, tiny_dataset.y_train, seed=0)
    (ax,) = figure.axes
    assert drawn_pixels(ax) == 50 * 28 * 28
    assert [t.get_text() for t in ax.texts] == [str(c) for c in range(10)]
    # Row r shows class r: its images carry that class's bar at rows 2+2r..4+2r.
    canvas = ax.images[0].get_array()
    brightest = [np.argmax(band) for band in np.ma.mean(canvas, axis=1).reshape(10, -1)]
    assert all(2 + 2 * c <= row <= 4 + 2 * c for c, row in enumerate(brightest))
    png = imread(plots.save_figure(figure, tmp_path / "samples.png"))
    assert png.shape[0] > png.shape[1] > 300  # tall grid, readable size
    assert png[..., :3].std() > 0.1  # not blank


def test_class_distribution_bars_carry_counts(tiny_dataset):
    figure = plots.plot_class_distribution(tiny_dataset.y_train, tiny_dataset.y_test)
    ax = figure.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == [6] * 10 + [3] * 10
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "test"]


def test_pixel_histogram_is_normalised(tiny_dataset):
    figure = plots.plot_pixel_histogram(tiny_dataset.x_train, tiny_dataset.x_test)
    ax = figure.axes[0]
    assert ax.get_yscale() == "log"
    for stairs in ax.patches:
        assert np.isclose(stairs.get_data().values.sum(), 1.0)


def test_confusion_matrix_annotates_every_cell():
    matrix = np.arange(100).reshape(10, 10)
    figure = plots.plot_confusion_matrix(matrix)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts == [str(v) for v in range(100)]


def test_misclassified_shows_most_confident_mistakes_first(tiny_dataset):
    y_true = np.array([0, 1, 2, 3])
    y_pred = np.array([0, 7, 5, 3])
    confidence = np.array([0.9, 0.6, 0.95, 0.8])
    figure = plots.plot_misclassified(tiny_dataset.x_test, y_true, y_pred, confidence)
    (ax,) = figure.axes
    titles = [text.get_text() for text in ax.texts]
    assert titles == ["true 2 → 5\n(95%)", "true 1 → 7\n(60%)"]
    assert drawn_pixels(ax) == 2 * 28 * 28


def test_misclassified_with_no_mistakes_says_so(tiny_dataset):
    labels = np.arange(5)
    figure = plots.plot_misclassified(tiny_dataset.x_test, labels, labels, np.ones(5))
    assert figure.texts[0].get_text() == "No misclassified test images"


def test_training_curves_plot_train_and_validation():
    history = {
        "loss": [1.0, 0.5],
        "val_loss": [1.1, 0.6],
        "accuracy": [0.5, 0.8],
        "val_accuracy": [0.4, 0.7],
    }
    figure = plots.plot_training_curves(history)
    loss_ax, accuracy_ax = figure.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "validation"]
    assert list(accuracy_ax.lines[1].get_ydata()) == [0.4, 0.7]


def test_feature_maps_one_panel_per_channel(tmp_path):
    maps = np.random.default_rng(0).random((24, 24, 30))
    for channels in (30, 15):
        figure = plots.plot_feature_maps(
            np.zeros((28, 28, 1)), maps[..., :channels], "conv"
        )
        source, grid = figure.axes
        assert source.get_title() == "input" and source.images
        assert drawn_pixels(grid) == channels * 24 * 24
        assert [t.get_text() for t in grid.texts] == [str(c) for c in range(channels)]
        png = imread(plots.save_figure(figure, tmp_path / f"maps{channels}.png"))
        assert png.shape[1] > 800  # every panel big enough to see


def test_each_seed_keeps_its_own_plot_files(tiny_dataset, tmp_path):
    """The plot cache keys on the seed: a cached result's files stay that seed's."""
    ref = save_dataset(tiny_dataset, tmp_path / "datasets")
    workdir = str(tmp_path / "outputs")
    first = plot_data.fn(ref, workdir, seed=0)
    drawn = {path: Path(path).read_bytes() for path in first}
    second = plot_data.fn(ref, workdir, seed=1)
    assert {path: Path(path).read_bytes() for path in first} == drawn
    assert set(first).isdisjoint(second)
    samples = {Path(p).name: Path(p).read_bytes() for p in second}
    assert samples["samples_per_class.png"] != drawn[first[0]]
    assert Path(first[0]).name == "samples_per_class.png"
