"""Evaluate stage: scores derived from predictions, and feature maps per layer."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_pipeline.evaluate import feature_maps, score_predictions
from mnist_pipeline.model import build_model


def test_scores_on_crafted_predictions():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.full((6, 3), 0.1)
    predicted = [0, 0, 1, 2, 2, 2]  # one class-1 image called 2
    probabilities[np.arange(6), predicted] = 0.8
    result = score_predictions(probabilities, y_true)
    assert result.accuracy == pytest.approx(5 / 6)
    assert result.confusion.tolist() == [[2, 0, 0], [0, 1, 1], [0, 0, 2]]
    rows = {row["class"]: row for row in result.per_class}
    assert rows[1]["recall"] == pytest.approx(0.5)
    assert rows[2]["precision"] == pytest.approx(2 / 3)
    assert rows[0]["f1"] == pytest.approx(1.0)
    expected_loss = -(5 * np.log(0.8) + np.log(0.1)) / 6
    assert result.loss == pytest.approx(expected_loss)
    metrics = result.metrics()
    assert metrics["test_min_class_recall"] == pytest.approx(0.5)
    assert metrics["test_recall_class_1"] == pytest.approx(0.5)


def test_feature_maps_have_one_panel_per_filter():
    model = build_model()
    image = np.random.default_rng(0).random((28, 28, 1), dtype=np.float32)
    maps = feature_maps(model, image)
    assert maps["conv1"].shape == (24, 24, 30)
    assert maps["conv2"].shape == (10, 10, 15)
    assert (maps["conv1"] >= 0).all()  # after ReLU
