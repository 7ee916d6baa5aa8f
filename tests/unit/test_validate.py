"""Validate stage: good data passes, and every failed check is named with its split."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_pipeline.data import Dataset
from mnist_pipeline.errors import DataValidationError
from mnist_pipeline.validate import (
    class_table,
    image_table,
    label_table,
    validate_dataset,
)


def with_arrays(dataset: Dataset, **arrays: np.ndarray) -> Dataset:
    values = dataset.arrays() | arrays
    return Dataset(**values, name="bad", source="bad.npz")


def failures_of(dataset: Dataset, **kwargs) -> list[str]:
    with pytest.raises(DataValidationError) as info:
        validate_dataset(dataset, **kwargs)
    assert "bad.npz" in str(info.value)
    return info.value.failures


def test_valid_dataset_passes_with_counts(tiny_dataset):
    report = validate_dataset(tiny_dataset)
    assert report.counts == {"train": 60, "test": 30}
    assert report.class_counts["train"] == [6] * 10


def test_trailing_channel_axis_is_accepted(tiny_dataset):
    dataset = with_arrays(tiny_dataset, x_train=tiny_dataset.x_train[..., np.newaxis])
    validate_dataset(dataset)


def test_count_mismatch(tiny_dataset):
    failures = failures_of(with_arrays(tiny_dataset, y_train=tiny_dataset.y_train[:-3]))
    assert "train: as many labels as images: 60 images, 57 labels" in failures


def test_wrong_image_shape_and_rank(tiny_dataset):
    flat = tiny_dataset.x_test.reshape(30, 784)
    failures = failures_of(with_arrays(tiny_dataset, x_test=flat))
    assert failures == ["test: images 28x28 with one channel: image shape (784)"]
    rgb = np.repeat(tiny_dataset.x_train[..., np.newaxis], 3, axis=-1)
    failures = failures_of(with_arrays(tiny_dataset, x_train=rgb))
    assert failures == ["train: images 28x28 with one channel: image shape (28x28x3)"]


def test_float_images_with_nan_and_out_of_range_report_every_check(tiny_dataset):
    images = tiny_dataset.x_train.astype(np.float32)
    images[3, 0, 0] = np.nan
    images[7, 5, 5] = 300.0
    images[8, 5, 5] = -1.0
    failures = failures_of(with_arrays(tiny_dataset, x_train=images))
    assert failures == [
        "train: images of dtype uint8: dtype float32",
        "train: pixels >= 0: 1 of 60 failed, e.g. -1 at #8",
        "train: pixels <= 255: 1 of 60 failed, e.g. 300 at #7",
        "train: no NaN or infinite pixels: 1 of 60 failed, e.g. 1 at #3",
    ]


def test_labels_out_of_range_and_non_integer(tiny_dataset):
    labels = tiny_dataset.y_test.astype(np.float64)
    labels[4] = 12
    labels[5] = 2.5
    failures = failures_of(with_arrays(tiny_dataset, y_test=labels))
    assert "test: labels of an integer dtype: dtype float64" in failures
    assert "test: labels within 0..9: 1 of 30 failed, e.g. 12 at #4" in failures
    assert "test: labels whole numbers: 1 of 30 failed, e.g. 2.5 at #5" in failures


def test_missing_class_and_rare_class(tiny_dataset):
    labels = tiny_dataset.y_train.copy()
    labels[labels == 3] = 4
    failures = failures_of(with_arrays(tiny_dataset, y_train=labels))
    assert "train: every class present: class 3" in failures
    rare = tiny_dataset.y_test.copy()
    rare[np.flatnonzero(rare == 7)[:2]] = 0  # class 7: 1 of 30 images = 3.3%
    failures = failures_of(with_arrays(tiny_dataset, y_test=rare), min_class_share=0.05)
    assert failures == ["test: every class >= 5.0% of split: class 7"]


def test_empty_split(tiny_dataset):
    empty = with_arrays(
        tiny_dataset,
        x_test=np.zeros((0, 28, 28), np.uint8),
        y_test=np.zeros((0,), np.uint8),
    )
    failures = failures_of(empty)
    assert failures[0] == "test: at least one image: 0 images"
    assert all(f.startswith("test:") for f in failures)


def test_failures_in_both_splits_are_all_reported(tiny_dataset):
    dataset = with_arrays(
        tiny_dataset,
        x_train=tiny_dataset.x_train.astype(np.int64),
        y_test=tiny_dataset.y_test[:-1],
    )
    failures = failures_of(dataset)
    assert [f.split(":")[0] for f in failures] == ["train", "test"]


def test_validation_of_70k_images_uses_compact_tables(tiny_dataset):
    x = np.tile(tiny_dataset.x_train, (1200, 1, 1))  # 72,000 images
    y = np.tile(tiny_dataset.y_train, 1200)
    big = Dataset(x, y, x[:10000], y[:10000], name="big", source="tiled")
    report = validate_dataset(big)
    assert report.counts == {"train": 72000, "test": 10000}
    # Compact: one row of a few summary columns per image and per label, one
    # row per class; never a row (or column) per pixel.
    images, labels = image_table(x), label_table(y)
    assert images.shape == (72000, 3) and labels.shape[0] == 72000
    assert labels.shape[1] <= 3
    assert class_table(labels, 10).shape[0] == 10
    assert images.memory_usage(deep=True).sum() < x.nbytes / 20  # uint8 pixels


def test_a_one_image_split_with_a_bad_pixel_and_label_is_reported(tiny_dataset):
    # One test image: the per-image and per-label tables have one row each,
    # like the split table; each failure is still named as such.
    image = np.full((1, 28, 28), 300.0)
    dataset = with_arrays(tiny_dataset, x_test=image, y_test=np.array([12]))
    failures = failures_of(dataset, min_class_share=0.0)
    assert "test: pixels <= 255: 1 of 1 failed, e.g. 300 at #0" in failures
    assert "test: labels within 0..9: 1 of 1 failed, e.g. 12 at #0" in failures
