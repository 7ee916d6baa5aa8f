"""The registered model: a pyfunc wrapper around the Keras model.

Its signature takes raw MNIST images as float32 of shape (N, 28, 28) holding
whole pixel values 0..255 (white digit on black) and returns (N, 10) float32
class probabilities. The wrapper checks the values and scales them itself, so
callers never need the training code. float32 rather than uint8 because MLflow's
HTTP server casts JSON numbers to the signature's dtype: with uint8, scaled
floats such as 0.5 would silently become 0 instead of being rejected.

Predictions run through ``keras.Model.predict_on_batch`` in slices of
:data:`PREDICT_BATCH` images: the same compiled function and the same batches as
``keras.Model.predict(batch_size=PREDICT_BATCH)``, so the same answers to the
last bit, without the ~80 ms ``predict`` spends building a data pipeline on
every call (a served request holds one or a few images).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel, PythonModelContext

INPUT_DTYPE = np.float32
#: Images per forward pass (``keras.Model.predict``'s batch size before).
PREDICT_BATCH = 1000
#: The ``model_config`` key bounding the images of one ``predict`` call; 0 or
#: absent: unbounded. Each version is logged with ``ServeConfig``'s default, so
#: it is bounded however it is served (``mlflow models serve``, its Docker image,
#: MLServer); a server overrides it with MLflow's ``model_config`` at load or
#: ``MLFLOW_PYFUNC_INFERENCE_CONFIG``; batch inference and the gate load with 0.
#: Versions logged before it was declared carry none: unbounded, unless
#: :data:`MAX_IMAGES_VARIABLE` is set.
MAX_IMAGES_KEY = "max_images_per_request"
#: Environment variable, read when the model loads, that bounds the images of
#: one ``predict`` call over any ``model_config``; ``mnist-pipeline serve-model``
#: sets it for its workers.
MAX_IMAGES_VARIABLE = "MNIST_MAX_IMAGES_PER_REQUEST"


def as_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) images in the signature's dtype."""
    return np.asarray(images).reshape(-1, 28, 28).astype(INPUT_DTYPE)


def check_pixels(images: np.ndarray) -> None:
    """Reject values that are not raw 0..255 pixels, saying what to send instead.

    Raises:
        MlflowException: (HTTP 400 when served) with the reason.
    """
    if images.size == 0:
        return
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 255:
        raise MlflowException.invalid_parameter_value(
            "Pixel values must be finite and within 0..255 (raw MNIST intensities)."
        )
    if (images != np.round(images)).any():
        raise MlflowException.invalid_parameter_value(
            "Pixel values must be whole numbers 0..255; images scaled to 0..1 must "
            "be multiplied by 255 first."
        )
    flat = images.reshape(len(images), -1)
    scaled = (flat.max(axis=1) <= 1) & (flat.max(axis=1) > 0)
    if scaled.any():
        raise MlflowException.invalid_parameter_value(
            f"Image(s) {np.flatnonzero(scaled)[:5].tolist()} look scaled to 0..1; send "
            "raw pixel values 0..255."
        )


def check_count(count: int, limit: int | None) -> None:
    """Refuse more than ``limit`` images in one call, pointing to batch inference.

    Raises:
        MlflowException: (HTTP 400 when served) naming the limit.
    """
    if limit is not None and count > limit:
        raise MlflowException.invalid_parameter_value(
            f"This request holds {count:,} images; this server accepts at most "
            f"{limit:,} per request (max_images_per_request). Send fewer images per "
            "request, or score a large batch with `mnist-pipeline predict --input "
            "FILE --output predictions.csv`."
        )


def images_bound(model_config: Mapping | None, variable: str | None) -> int | None:
    """The most images one call may hold, from :data:`MAX_IMAGES_VARIABLE`'s value
    when set, else the model config's :data:`MAX_IMAGES_KEY`; None: unbounded."""
    value = variable or (model_config or {}).get(MAX_IMAGES_KEY)
    limit = int(value) if value else 0
    return limit if limit > 0 else None


def predict_probabilities(model, scaled: np.ndarray) -> np.ndarray:
    """``model``'s outputs for ``scaled`` (N, 28, 28, 1), PREDICT_BATCH at a time.

    Equal to the last bit to ``model.predict(scaled, batch_size=PREDICT_BATCH)``.
    A model trained under a strategy with several replicas goes through
    ``model.predict``: Keras's ``predict_on_batch`` returns only the first
    replica's share of the batch there.
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return np.asarray(model.predict(scaled, batch_size=PREDICT_BATCH, verbose=0))
    parts = [
        np.asarray(model.predict_on_batch(scaled[start : start + PREDICT_BATCH]))
        for start in range(0, len(scaled), PREDICT_BATCH)
    ]
    if not parts:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class MnistClassifier(PythonModel):
    """Checks and scales raw 28x28 images; returns the CNN's class probabilities."""

    def load_context(self, context: PythonModelContext) -> None:
        """Load the Keras model saved beside this wrapper; read the request bound."""
        import keras

        self.model = keras.saving.load_model(
            context.artifacts["keras_model"], compile=False
        )
        self.max_images = images_bound(
            context.model_config, os.environ.get(MAX_IMAGES_VARIABLE)
        )

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params=None
    ) -> np.ndarray:
        """Class probabilities for each image of ``model_input``."""
        images = np.asarray(model_input, dtype=np.float32)
        check_count(len(images), self.max_images)
        check_pixels(images)
        scaled = images.reshape(-1, 28, 28, 1) / np.float32(255.0)
        return predict_probabilities(self.model, scaled)
