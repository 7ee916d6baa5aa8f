"""mnist-pipeline: a Prefect + MLflow pipeline that trains a LeNet-style CNN on MNIST.

Stage logic lives in this package as plain functions; Prefect tasks wrap them in
``tasks/`` and flows chain them in ``flows/``.
"""

__version__ = "0.1.0"
