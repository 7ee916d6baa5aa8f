"""Training throughput on a GPU through Keras 3's JAX backend (no TensorFlow).

For a machine that has a GPU and JAX but where TensorFlow cannot be installed
(the GPU machine lent to this project has no package registry, and TensorFlow's
GPU wheel and its CUDA 12 libraries are over 2 GB), this measures what the
reference model trains at on that card: the notebook as written (numpy float
arrays, ``model.fit(..., batch_size=400, validation_split=0.1)``, the project's
``build_model``, Adam 0.01) and the same fit with ``steps_per_execution``, the
lever that matters once a step takes microseconds. The pipeline's own training
stage needs TensorFlow (``tf.data``, ``tf.distribute``), so it is not one of the
sides here.

``KERAS_BACKEND=jax python -m benchmarks.gpu --runs 2`` runs every side in a
fresh process, alternating, and prints one JSON document: per side the
images/s of every epoch after the first and the test accuracy on the bundled
sample's 1,000 test images after 10 epochs on its 4,000 training images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIDES = {"notebook": 1, "notebook+steps_per_execution=16": 16}


def _trial(steps_per_execution: int, epochs: int, seed: int, repeat_to: int) -> dict:
    import numpy as np

    from benchmarks.baseline import fit_notebook
    from mnist_pipeline.data import load_sample

    sample = load_sample()
    x, y = sample.x_train, sample.y_train
    if repeat_to:
        reps = -(-repeat_to // len(x))
        x, y = np.tile(x, (reps, 1, 1))[:repeat_to], np.tile(y, reps)[:repeat_to]
    result = fit_notebook(
        x,
        y,
        sample.x_test,
        sample.y_test,
        epochs=epochs,
        seed=seed,
        steps_per_execution=steps_per_execution,
        verbose=0,
    )
    images = result["train_images"]
    return {
        "images_per_second": [images / s for s in result["epoch_seconds"][1:]],
        "test_accuracy": result["test_accuracy"],
    }


def _device() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return f"jax {jax.__version__}: {jax.devices()[0].device_kind}"
    return backend


def _run_child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--child", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--child", nargs=4, metavar=("SPE", "EPOCHS", "SEED", "N"))
    args = parser.parse_args()
    if args.child:
        spe, epochs, seed, repeat_to = (int(v) for v in args.child)
        result = _trial(spe, epochs, seed, repeat_to)
        result["device"] = _device()
        print(json.dumps(result), flush=True)
        return

    started = time.time()
    report: dict = {"backend": os.environ.get("KERAS_BACKEND", "tensorflow")}
    throughput: dict[str, list[float]] = {side: [] for side in SIDES}
    for run in range(args.runs):
        order = list(SIDES) if run % 2 == 0 else list(reversed(SIDES))
        for side in order:
            child = [str(SIDES[side]), str(args.epochs), "0", str(args.images)]
            result = _run_child(child)
            report["device"] = result["device"]
            throughput[side].append(statistics.median(result["images_per_second"]))
    accuracy: dict[str, list[float]] = {side: [] for side in SIDES}
    for seed in (int(s) for s in args.seeds.split(",")):
        for side, steps in SIDES.items():
            result = _run_child([str(steps), "10", str(seed), "0"])
            accuracy[side].append(result["test_accuracy"])
    report["sides"] = {
        side: {
            "images_per_second_per_run": throughput[side],
            "images_per_second": statistics.median(throughput[side]),
            "test_accuracy_per_seed": accuracy[side],
            "test_accuracy_mean": statistics.mean(accuracy[side]),
        }
        for side in SIDES
    }
    report["seconds"] = round(time.time() - started, 1)
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
