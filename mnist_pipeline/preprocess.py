"""Preprocess stage: scale, one-hot, and a shuffled, stratified validation split."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from mnist_pipeline.data import Dataset
from mnist_pipeline.files import replace_atomically


@dataclass(frozen=True)
class PreparedData:
    """Model-ready arrays: images (N, 28, 28, 1) float32 in [0, 1], one-hot labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def save(self, path: Path) -> Path:
        """Write all arrays to one uncompressed ``.npz`` (fast to reload)."""
        with replace_atomically(path) as file:
            np.savez(file, **{f.name: getattr(self, f.name) for f in fields(self)})
        return path

    @classmethod
    def load(cls, path: Path) -> PreparedData:
        """Read arrays written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as npz:
            return cls(**{f.name: npz[f.name] for f in fields(cls)})


def scale_images(images: np.ndarray) -> np.ndarray:
    """Reshape to (N, 28, 28, 1) and scale 0..255 to float32 0..1."""
    return (images.reshape(-1, 28, 28, 1).astype(np.float32)) / np.float32(255.0)


def one_hot(labels: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """Labels as float32 one-hot rows."""
    return np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64)]


def split_validation(
    images: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle and hold out ``fraction`` of the images, stratified by class.

    Keras's own ``validation_split`` takes the *last* images unshuffled; on data
    sorted by class that would remove whole classes from training.

    Returns:
        ``x_train, x_val, y_train, y_val``.
    """
    from sklearn.model_selection import train_test_split

    n_val = int(round(len(labels) * fraction))
    n_classes = len(np.unique(labels))
    n_val = min(max(n_val, 1), len(labels) - 1)
    # Stratifying needs a validation set with room for every class.
    stratify = labels if n_classes <= n_val <= len(labels) - n_classes else None
    return train_test_split(
        images, labels, test_size=n_val, stratify=stratify, random_state=seed
    )


def preprocess(
    dataset: Dataset, validation_split: float, seed: int, num_classes: int = 10
) -> PreparedData:
    """Scale images, one-hot labels, and split off a validation set."""
    x_train, x_val, y_train, y_val = split_validation(
        dataset.x_train, dataset.y_train, validation_split, seed
    )
    return PreparedData(
        x_train=scale_images(x_train),
        y_train=one_hot(y_train, num_classes),
        x_val=scale_images(x_val),
        y_val=one_hot(y_val, num_classes),
        x_test=scale_images(dataset.x_test),
        y_test=one_hot(dataset.y_test, num_classes),
    )
