"""Models-from-code entry: MLflow runs this file to build the served model.

MLflow copies it into the logged model and executes it on load (instead of
unpickling an object), so this is the one module whose import does something.
"""

from mlflow.models import set_model

from mnist_pipeline.serving import MnistClassifier

set_model(MnistClassifier())
