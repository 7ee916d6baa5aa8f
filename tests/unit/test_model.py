"""The model is the notebook's, and training is seeded and reported per epoch."""

from __future__ import annotations

import logging

import numpy as np

from mnist_pipeline.model import build_model
from mnist_pipeline.preprocess import preprocess
from mnist_pipeline.train import EpochLogger, shuffled_batches, train_model


def test_architecture_matches_the_notebook():
    model = build_model()
    summary = [
        (layer.__class__.__name__, tuple(layer.output.shape[1:]))
        for layer in model.layers
    ]
    assert summary == [
        ("Conv2D", (24, 24, 30)),
        ("MaxPooling2D", (12, 12, 30)),
        ("Conv2D", (10, 10, 15)),
        ("MaxPooling2D", (5, 5, 15)),
        ("Flatten", (375,)),
        ("Dense", (500,)),
        ("Dropout", (500,)),
        ("Dense", (10,)),
    ]
    conv1, conv2 = model.get_layer("conv1"), model.get_layer("conv2")
    assert conv1.kernel_size == (5, 5) and conv2.kernel_size == (3, 3)
    assert model.get_layer("dropout").rate == 0.5
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.count_params() == 780 + 4065 + 188000 + 5010


def test_training_is_seeded_and_logs_each_epoch(tiny_dataset, caplog):
    prepared = preprocess(tiny_dataset, validation_split=0.2, seed=0)
    logger = logging.getLogger("test.train")
    runs = []
    for _ in range(2):
        with caplog.at_level(logging.INFO, logger="test.train"):
            model, history = train_model(
                prepared,
                epochs=2,
                batch_size=16,
                learning_rate=0.01,
                seed=7,
                callbacks=[EpochLogger(logger, images=48)],
            )
        runs.append((model, history))
    (first, history), (second, _) = runs
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 2
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    epochs = [r.getMessage() for r in caplog.records if r.name == "test.train"]
    assert epochs[0].startswith("Epoch 1/2: ") and "images/s" in epochs[0]
    assert len(epochs) == 4


def test_filters_and_dropout_are_parameters_with_the_notebooks_defaults():
    default = build_model((28, 28, 1), 10)
    assert default.get_layer("conv1").filters == 30
    assert default.get_layer("conv2").filters == 15
    varied = build_model((28, 28, 1), 10, conv_filters=(8, 4), dropout=0.25)
    assert varied.get_layer("conv1").filters == 8
    assert varied.get_layer("conv2").filters == 4
    assert varied.get_layer("dropout").rate == 0.25
    assert varied.layers[-1].output.shape[1:] == (10,)


def epochs_of(dataset, steps: int) -> list[np.ndarray]:
    """The labels each epoch of ``dataset`` yields, one array per epoch."""
    labels = [y.numpy() for _, y in dataset]
    return [np.concatenate(labels[i : i + steps]) for i in range(0, len(labels), steps)]


def test_shuffled_batches_show_every_image_once_per_epoch_in_a_new_order():
    images = np.arange(10 * 4, dtype=np.float32).reshape(10, 2, 2)
    labels = np.arange(10)
    dataset = shuffled_batches(images, labels, batch_size=4, epochs=3, seed=1)
    sizes = [len(y) for _, y in dataset]
    assert sizes == [4, 4, 2] * 3
    first, second, third = epochs_of(dataset, steps=3)
    for epoch in (first, second, third):
        assert sorted(epoch) == list(range(10))
    assert not np.array_equal(first, second)
    x, y = next(iter(dataset))
    np.testing.assert_array_equal(x.numpy(), images[y.numpy()])  # pairs kept


def test_shuffled_batches_are_seeded():
    images, labels = np.zeros((50, 1), np.float32), np.arange(50)

    def order(seed: int) -> list[np.ndarray]:
        batches = shuffled_batches(images, labels, batch_size=10, epochs=2, seed=seed)
        return epochs_of(batches, steps=5)

    np.testing.assert_array_equal(order(3), order(3))
    assert not np.array_equal(order(3), order(4))
