"""Training on augmented images: an option, seeded, and never in the saved model."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from mnist_pipeline.config import (
    Augmentation,
    SweepConfig,
    SweepGrid,
    TrainConfig,
    TrialParams,
)
from mnist_pipeline.model import augmentation_layers, build_model
from mnist_pipeline.preprocess import preprocess
from mnist_pipeline.train import train_model


def train(prepared, augmentation):
    return train_model(
        prepared,
        epochs=1,
        batch_size=16,
        learning_rate=0.01,
        seed=3,
        augmentation=augmentation,
    )


def test_augmented_training_reproduces_its_figures_with_a_seed(tiny_dataset, tmp_path):
    prepared = preprocess(tiny_dataset, validation_split=0.2, seed=0)
    first_model, first = train(prepared, Augmentation())
    second_model, second = train(prepared, Augmentation())
    assert first == second
    for a, b in zip(first_model.get_weights(), second_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    _, plain = train(prepared, None)
    assert first["loss"] != plain["loss"]  # the images were changed
    # What was trained and saved is the plain model, which never augments.
    assert [layer.name for layer in first_model.layers] == [
        layer.name for layer in build_model().layers
    ]
    once = first_model.predict(prepared.x_test, verbose=0)
    np.testing.assert_array_equal(once, first_model.predict(prepared.x_test, verbose=0))
    # It saves with its trained optimizer and loads back without a mismatch.
    first_model.save(tmp_path / "model.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(prepared.x_test, verbose=0), once)


def test_augmentation_changes_images_in_training_only():
    images = np.zeros((4, 28, 28, 1), np.float32)
    images[:, 4:24, 12:16] = 1.0
    layers = augmentation_layers(15.0, 0.1, 0.1, seed=0)
    assert [layer.name for layer in layers.layers] == ["rotate", "shift", "zoom"]
    np.testing.assert_array_equal(np.asarray(layers(images, training=False)), images)
    changed = np.asarray(layers(images, training=True))
    assert changed.shape == images.shape and not np.allclose(changed, images)
    assert changed.min() >= 0 and changed[:, 0, 0].max() == 0  # black fill
    assert [layer.name for layer in augmentation_layers(0, 0.1, 0, seed=0).layers] == [
        "shift"
    ]


def test_augmentation_settings_are_training_params_only_when_on():
    default = TrainConfig()
    assert default.augmentation() is None and default.augment is False
    assert default.training_params()["augmentation"] is None
    assert TrainConfig(augment_zoom=0.3).training_params() == default.training_params()
    on = TrainConfig(augment=True, augment_rotation=5)
    assert on.augmentation() == Augmentation(rotation=5, shift=0.1, zoom=0.1)
    assert on.training_params()["augmentation"] == {
        "rotation": 5,
        "shift": 0.1,
        "zoom": 0.1,
    }
    assert on.training_params() != TrainConfig(augment=True).training_params()


def test_a_trial_and_a_run_of_one_training_share_its_settings():
    from mnist_pipeline.config import SweepGrid

    config = TrainConfig(augment=True, epochs=3, learning_rate=0.003, batch_size=200)
    grid = SweepGrid(learning_rate=0.003, batch_size=200, epochs=3, augment=True)
    (trial,) = grid.trials(config.augmentation_strengths())
    assert trial.training_params(config.validation_split, config.seed) == (
        config.training_params()
    )


@pytest.mark.parametrize(
    "values",
    [{"augment_rotation": 90}, {"augment_shift": -0.1}, {"augment_zoom": 0.9}],
)
def test_out_of_range_strengths_are_refused(values):
    with pytest.raises(ValidationError):
        TrainConfig(**values)


def test_the_sweep_grid_switches_augmentation_with_the_shared_strengths():
    grid = SweepGrid(learning_rate=[0.01, 0.003], augment=[False, True])
    config = SweepConfig(grid=grid, training=TrainConfig(augment_rotation=7))
    trials = config.trials()
    assert [t.augmentation is not None for t in trials] == [False, True] * 2
    assert {t.augmentation.rotation for t in trials if t.augmentation} == {7}
    assert SweepGrid().trials()[0].augmentation is None
    augmented = trials[1]
    assert "augmented (rotation 7°, shift 0.1, zoom 0.1)" in augmented.label()
    flat = augmented.flat_params()
    assert flat["augment"] is True and flat["augment_rotation"] == 7
    assert all(not isinstance(v, dict) for v in flat.values())
    plain = TrialParams(**trials[0].model_dump())
    assert plain.flat_params()["augment"] is False
