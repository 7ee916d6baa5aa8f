"""Evaluate stage: test metrics, per-class scores and what the network sees."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from mnist_pipeline.serving import predict_probabilities

_EPSILON = 1e-7  # Keras clips probabilities by this in cross-entropy


@dataclass(frozen=True)
class Evaluation:
    """How a model did on the test split."""

    loss: float
    accuracy: float
    per_class: list[dict[str, float]]
    confusion: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray

    def metrics(self) -> dict[str, float]:
        """Flat test metrics, per-class ones suffixed with the class."""
        flat = {"test_loss": self.loss, "test_accuracy": self.accuracy}
        for row in self.per_class:
            for key in ("precision", "recall", "f1"):
                flat[f"test_{key}_class_{int(row['class'])}"] = row[key]
        flat["test_min_class_recall"] = min(row["recall"] for row in self.per_class)
        return flat


def evaluate_model(
    model: keras.Model, images: np.ndarray, one_hot_labels: np.ndarray
) -> Evaluation:
    """Predict the test split once and derive every score from it."""
    probabilities = predict_probabilities(model, images)
    return score_predictions(probabilities, one_hot_labels.argmax(axis=1))


def score_predictions(probabilities: np.ndarray, y_true: np.ndarray) -> Evaluation:
    """Loss, accuracy, per-class precision/recall/F1 and the confusion matrix."""
    classes = np.arange(probabilities.shape[1])
    y_pred = probabilities.argmax(axis=1)
    picked = probabilities[np.arange(len(y_true)), y_true]
    loss = float(-np.log(np.clip(picked, _EPSILON, 1.0)).mean())
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    per_class = [
        {
            "class": int(c),
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(s),
        }
        for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    ]
    return Evaluation(
        loss=loss,
        accuracy=float((y_pred == y_true).mean()),
        per_class=per_class,
        confusion=confusion_matrix(y_true, y_pred, labels=classes),
        y_true=y_true,
        y_pred=y_pred,
        confidence=probabilities.max(axis=1),
        probabilities=probabilities,
    )


def feature_maps(
    model: keras.Model,
    image: np.ndarray,
    layer_names: tuple[str, ...] = ("conv1", "conv2"),
) -> dict[str, np.ndarray]:
    """Each named layer's output (H, W, channels) for one (28, 28, 1) image."""
    probe = keras.Model(
        inputs=model.inputs, outputs=[model.get_layer(n).output for n in layer_names]
    )
    outputs = probe.predict_on_batch(image[np.newaxis])
    return {
        name: np.asarray(out[0]) for name, out in zip(layer_names, outputs, strict=True)
    }
