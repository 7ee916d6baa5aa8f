"""Train stage: fit the reference model, seeded, reporting every epoch."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import keras

from mnist_pipeline.distribute import choose_strategy
from mnist_pipeline.model import CONV_FILTERS, DROPOUT, build_model, compile_model
from mnist_pipeline.preprocess import PreparedData

if TYPE_CHECKING:
    import tensorflow as tf

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
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[keras.Model, History]:
    """Build, compile and fit the model; return it with its per-epoch history.

    The model is built and compiled in ``strategy``'s scope, by default the one
    :func:`~mnist_pipeline.distribute.choose_strategy` picks for the devices
    present; ``batch_size`` stays the global batch, split across its replicas.
    """
    keras.utils.set_random_seed(seed)
    if strategy is None:
        strategy = choose_strategy()
    with strategy.scope():
        model = compile_model(
            build_model(
                prepared.x_train.shape[1:],
                prepared.y_train.shape[1],
                conv_filters=conv_filters,
                dropout=dropout,
            ),
            learning_rate,
        )
    history = model.fit(
        prepared.x_train,
        prepared.y_train,
        validation_data=(prepared.x_val, prepared.y_val),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        callbacks=list(callbacks),
    )
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}


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
