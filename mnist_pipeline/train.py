"""Train stage: fit the reference model, seeded, reporting every epoch."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from mnist_pipeline.config import Augmentation
from mnist_pipeline.distribute import choose_strategy
from mnist_pipeline.model import (
    CONV_FILTERS,
    DROPOUT,
    augmentation_layers,
    build_model,
    compile_model,
)
from mnist_pipeline.preprocess import PreparedData

History = dict[str, list[float]]


def train_model(
    prepared: PreparedData,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    conv_filters: tuple[int, int] = CONV_FILTERS,
    dropout: float = DROPOUT,
    augmentation: Augmentation | None = None,
    strategy: tf.distribute.Strategy | None = None,
    initial_epoch: int = 0,
) -> tuple[keras.Model, History]:
    """Build, compile and fit the model; return it with its per-epoch history.

    The model is built and compiled in ``strategy``'s scope, by default the one
    :func:`~mnist_pipeline.distribute.choose_strategy` picks for the devices
    present; ``batch_size`` stays the global batch, split across its replicas.
    ``initial_epoch`` continues a fit whose weights a callback restores (Keras's
    ``BackupAndRestore``): its epochs see the batches an uninterrupted fit
    would have seen from that epoch on.

    With ``augmentation``, what is fitted is the augmentation layers followed
    by the model (the same layers and weights); the model returned is the
    plain one, so the saved and served model never augments.
    """
    keras.utils.set_random_seed(seed)
    if strategy is None:
        strategy = choose_strategy()
    with strategy.scope():
        model = build_model(
            prepared.x_train.shape[1:],
            prepared.y_train.shape[1],
            conv_filters=conv_filters,
            dropout=dropout,
        )
        fitted = model
        augment = augmentation and augmentation_layers(
            augmentation.rotation, augmentation.shift, augmentation.zoom, seed=seed
        )
        if augment and augment.layers:  # all strengths 0 is no augmentation
            fitted = keras.Sequential(
                [keras.Input(shape=prepared.x_train.shape[1:]), augment, model],
                name="lenet_augmented",
            )
        compile_model(fitted, learning_rate)
    history = fitted.fit(
        shuffled_batches(
            prepared.x_train,
            prepared.y_train,
            batch_size,
            epochs=epochs,
            seed=seed,
            first_epoch=initial_epoch,
        ),
        steps_per_epoch=math.ceil(len(prepared.x_train) / batch_size),
        # Validated every epoch: batched once, kept in memory.
        validation_data=without_autotune(
            tf.data.Dataset.from_tensor_slices((prepared.x_val, prepared.y_val))
            .batch(batch_size)
            .cache()
        ),
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # shuffled_batches already did
        verbose=0,
        callbacks=list(callbacks),
    )
    if fitted is not model:
        # The plain model is the one returned and saved: with the trained
        # optimizer it saves and loads as a model fitted without augmentation.
        model.compile(
            optimizer=fitted.optimizer, loss=fitted.loss, metrics=["accuracy"]
        )
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}


def shuffled_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    epochs: int,
    seed: int,
    first_epoch: int = 0,
) -> tf.data.Dataset:
    """The batches of epochs ``first_epoch`` .. ``epochs - 1``, each epoch in its
    own random order, seeded by ``(seed, epoch)``.

    An epoch's order depends on nothing but its number, so a fit resumed at
    epoch k sees exactly the batches the uninterrupted fit saw from epoch k on.
    One pipeline for the whole fit, so Keras never restarts it: for numpy
    arrays Keras rebuilds its input iterator every epoch, which stalled some
    epochs' first step by seconds. Batches are gathered by index, in parallel
    and ahead of the step that needs them.
    """
    count = len(labels)
    images, labels = tf.constant(images), tf.constant(labels)

    def epoch_order(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64),
            seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
        )
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    return without_autotune(
        tf.data.Dataset.range(first_epoch, epochs)
        .flat_map(epoch_order)
        .map(
            lambda index: (tf.gather(images, index), tf.gather(labels, index)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .prefetch(tf.data.AUTOTUNE)
    )


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` without tf.data's autotuning thread.

    Its teardown, when ``fit`` ended, waited up to ~10 s on a busy machine (4
    of 10 fits with both cores loaded; none of 26 without it), at the same
    throughput: the parallelism then defaults to the cores present.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


class EpochLogger(keras.callbacks.Callback):
    """Logs one line per epoch: metrics, duration and images per second."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, images: int):
        super().__init__()
        self._logger = logger
        self._images = images
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self._started
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items())
        self._logger.info(
            "Epoch %d/%d: %s (%.1f s, %.0f images/s)",
            epoch + 1,
            self.params.get("epochs", 0),
            metrics,
            seconds,
            self._images / seconds if seconds else 0.0,
        )
