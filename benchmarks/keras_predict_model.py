"""Benchmark only: the served model as it was, ``keras.Model.predict`` per call.

The registered wrapper called ``keras.Model.predict(batch_size=1000)`` on every
request until it moved to ``predict_on_batch`` (``mnist_pipeline/serving.py``).
The serving benchmark logs this file as a second model (MLflow's models from
code run it on load) to measure that path the same way as today's.
"""

import numpy as np
from mlflow.models import set_model

from mnist_pipeline.serving import MnistClassifier, check_pixels


class KerasPredictClassifier(MnistClassifier):
    """``MnistClassifier`` with the pre-change ``predict``."""

    def predict(self, context, model_input, params=None):
        images = np.asarray(model_input, dtype=np.float32)
        check_pixels(images)
        scaled = images.reshape(-1, 28, 28, 1) / np.float32(255.0)
        return self.model.predict(scaled, batch_size=1000, verbose=0)


set_model(KerasPredictClassifier())
