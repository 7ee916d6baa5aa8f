"""A Keras callback that records the seconds of every epoch."""

from __future__ import annotations

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """Seconds of every epoch, training and validation both."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._started)
