"""The quality bar: the notebook's settings on the bundled sample, over three seeds."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import load_sample
from mnist_pipeline.evaluate import evaluate_model
from mnist_pipeline.preprocess import preprocess
from mnist_pipeline.train import train_model


@pytest.mark.slow
def test_default_settings_reach_the_accuracy_bar_on_every_seed():
    defaults = TrainConfig()
    sample = load_sample()
    accuracies = []
    for seed in (0, 1, 2):
        prepared = preprocess(sample, defaults.validation_split, seed)
        model, _ = train_model(
            prepared,
            epochs=defaults.epochs,
            batch_size=defaults.batch_size,
            learning_rate=defaults.learning_rate,
            seed=seed,
        )
        accuracies.append(
            evaluate_model(model, prepared.x_test, prepared.y_test).accuracy
        )
    print(f"sample test accuracy by seed: {accuracies}")
    assert min(accuracies) >= 0.95, accuracies
    assert np.mean(accuracies) >= 0.965, accuracies
