"""The reference notebook as written: the benchmark's baseline.

numpy float arrays, one-hot labels, ``model.fit(..., batch_size=400,
validation_split=0.1)`` (Keras takes the *last* 10% unshuffled), the same model
(``build_model``) and optimizer (Adam 0.01), then ``model.evaluate`` on the test
images. No orchestration, no tracking, no validation, no plots, and TensorFlow's
own defaults (no environment tuning).

From the repository root, ``python -m benchmarks.baseline --data sample`` trains
on the bundled sample and prints one JSON line with the test accuracy and the
seconds of every epoch; ``--data FILE.npz`` trains on ``x_train``/``y_train`` of
that file and tests on the sample's test images.
"""

from __future__ import annotations

import argparse
import json
import math

import keras
import numpy as np

from benchmarks.timing import EpochTimer
from mnist_pipeline.data import load_sample
from mnist_pipeline.model import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="sample", help="sample or a .npz file")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sample = load_sample()
    if args.data == "sample":
        x_train, y_train = sample.x_train, sample.y_train
    else:
        with np.load(args.data) as npz:
            x_train, y_train = npz["x_train"], npz["y_train"]
    report = fit_notebook(
        x_train,
        y_train,
        sample.x_test,
        sample.y_test,
        epochs=args.epochs,
        seed=args.seed,
    )
    print("RESULT " + json.dumps(report), flush=True)


def fit_notebook(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int,
    seed: int,
    steps_per_execution: int = 1,
    verbose: int = 2,
) -> dict:
    """The notebook's preprocessing, model, fit and evaluation on uint8 images.

    Returns the test accuracy, the seconds of every epoch and the number of
    images each epoch trained on. ``steps_per_execution`` stays at Keras's
    default of 1 for the baseline; ``benchmarks.gpu`` also measures 16.
    """
    # The notebook's preprocessing.
    x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255
    x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255
    y_train = keras.utils.to_categorical(y_train, 10)
    y_test = keras.utils.to_categorical(y_test, 10)

    keras.utils.set_random_seed(seed)
    model = build_model((28, 28, 1), 10)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    timer = EpochTimer()
    model.fit(
        x_train,
        y_train,
        batch_size=400,
        epochs=epochs,
        validation_split=0.1,
        verbose=verbose,
        callbacks=[timer],
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {
        "test_accuracy": float(accuracy),
        "epoch_seconds": timer.seconds,
        # Keras keeps the first ceil(90%) images for training.
        "train_images": math.ceil(len(x_train) * 0.9),
    }


if __name__ == "__main__":
    main()
