"""The pipeline's training stage on a data file, timed per epoch (benchmark side A).

``python -m benchmarks.stage --data FILE.npz`` sets the process up as the
``mnist-pipeline`` entry point does, splits ``x_train``/``y_train`` of the file
with the pipeline's preprocess stage, trains with ``train_model`` and tests on the
bundled sample's test images. It prints one JSON line like the baseline's.
"""

from __future__ import annotations

import argparse
import json

from mnist_pipeline.runtime import configure_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="sample", help="sample or a .npz file")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure_environment()  # before TensorFlow loads, as the CLI does

    import numpy as np

    from benchmarks.timing import EpochTimer
    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.data import Dataset, load_sample
    from mnist_pipeline.evaluate import evaluate_model
    from mnist_pipeline.preprocess import preprocess
    from mnist_pipeline.train import train_model

    defaults = TrainConfig()
    sample = load_sample()
    dataset = sample
    if args.data != "sample":
        with np.load(args.data) as npz:
            dataset = Dataset(
                npz["x_train"],
                npz["y_train"],
                sample.x_test,
                sample.y_test,
                name="benchmark",
                source=args.data,
            )
    prepared = preprocess(dataset, defaults.validation_split, args.seed)
    timer = EpochTimer()
    model, _ = train_model(
        prepared,
        epochs=args.epochs,
        batch_size=defaults.batch_size,
        learning_rate=defaults.learning_rate,
        seed=args.seed,
        callbacks=[timer],
    )
    accuracy = evaluate_model(model, prepared.x_test, prepared.y_test).accuracy
    report = {
        "test_accuracy": accuracy,
        "epoch_seconds": timer.seconds,
        "train_images": len(prepared.x_train),
    }
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
