"""Keras callbacks that report a fit to MLflow.

Kept apart from :mod:`mnist_pipeline.runs` so that logging runs, moving aliases
and reading the registry never import Keras (nor TensorFlow behind it).
"""

from __future__ import annotations

import keras
from mlflow import MlflowClient

from mnist_pipeline.runs import METRIC_NAMES, log_metrics


class EpochMetrics(keras.callbacks.Callback):
    """Logs train/validation loss and accuracy as MLflow metric histories."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        super().__init__()
        self._client = client
        self._run_id = run_id

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {METRIC_NAMES.get(k, k): v for k, v in (logs or {}).items()}
        log_metrics(self._client, self._run_id, metrics, step=epoch + 1)
