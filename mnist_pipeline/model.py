"""The reference notebook's LeNet-style CNN, in Keras's own words."""

from __future__ import annotations

import keras
from keras import layers

from mnist_pipeline.config import CONV_FILTERS, DROPOUT


def build_model(
    input_shape: tuple[int, int, int] = (28, 28, 1),
    num_classes: int = 10,
    *,
    conv_filters: tuple[int, int] = CONV_FILTERS,
    dropout: float = DROPOUT,
) -> keras.Model:
    """Conv 30@5x5 -> pool -> conv 15@3x3 -> pool -> dense 500 -> dropout -> softmax.

    ``conv_filters`` and ``dropout`` let a sweep vary the filter counts and the
    dropout rate; the defaults are the notebook's.
    """
    first, second = conv_filters
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(first, kernel_size=(5, 5), activation="relu", name="conv1"),
            layers.MaxPooling2D(pool_size=(2, 2), name="pool1"),
            layers.Conv2D(second, kernel_size=(3, 3), activation="relu", name="conv2"),
            layers.MaxPooling2D(pool_size=(2, 2), name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(500, activation="relu", name="dense"),
            layers.Dropout(dropout, name="dropout"),
            layers.Dense(num_classes, activation="softmax", name="softmax"),
        ],
        name="lenet",
    )


def augmentation_layers(
    rotation: float, shift: float, zoom: float, *, seed: int
) -> keras.Sequential:
    """Random rotation (degrees either way), shift and zoom (shares of the side).

    Keras's preprocessing layers: active only when called with ``training=True``
    and filling uncovered pixels with black, MNIST's background. A strength of 0
    leaves its layer out.
    """
    steps = []
    if rotation > 0:
        steps.append(
            layers.RandomRotation(
                rotation / 360.0, fill_mode="constant", seed=seed, name="rotate"
            )
        )
    if shift > 0:
        steps.append(
            layers.RandomTranslation(
                shift, shift, fill_mode="constant", seed=seed + 1, name="shift"
            )
        )
    if zoom > 0:
        steps.append(
            layers.RandomZoom(zoom, fill_mode="constant", seed=seed + 2, name="zoom")
        )
    return keras.Sequential(steps, name="augmentation")


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    """Adam, categorical cross-entropy and accuracy, as in the notebook."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
