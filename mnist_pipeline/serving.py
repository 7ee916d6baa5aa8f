"""The registered model: a pyfunc wrapper around the Keras model.

Its signature takes raw MNIST images, uint8 of shape (N, 28, 28) with pixel values
0..255 (white digit on black), and returns (N, 10) float32 class probabilities.
The wrapper scales the pixels itself, so callers never need the training code.
"""

from __future__ import annotations

import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext


class MnistClassifier(PythonModel):
    """Scales raw 28x28 images and returns the CNN's class probabilities."""

    def load_context(self, context: PythonModelContext) -> None:
        """Load the Keras model saved beside this wrapper."""
        import keras

        self.model = keras.saving.load_model(
            context.artifacts["keras_model"], compile=False
        )

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params=None
    ) -> np.ndarray:
        """Class probabilities for each image of ``model_input``."""
        images = np.asarray(model_input)
        scaled = images.reshape(-1, 28, 28, 1).astype(np.float32) / np.float32(255.0)
        return self.model.predict(scaled, batch_size=1000, verbose=0)
