"""Time and extra memory of validating 70,000 images, pipeline vs plain numpy asserts.

``python -m benchmarks.validation --mode pipeline|numpy`` builds 60,000 training
and 10,000 test images from the bundled sample (repeated), validates them once
small (so lazy imports are paid before measuring), then measures one validation
of the full set: wall seconds and the peak resident memory above what the
process held before (Linux: ``/proc/self/clear_refs`` resets the peak).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mnist_pipeline.data import Dataset, load_sample
from mnist_pipeline.validate import validate_dataset

TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000
MIN_CLASS_SHARE = 0.05


def numpy_asserts(dataset: Dataset, min_class_share: float = MIN_CLASS_SHARE) -> None:
    """The validation stage's rules as the notebook would write them."""
    for x, y in ((dataset.x_train, dataset.y_train), (dataset.x_test, dataset.y_test)):
        assert len(x) > 0 and len(x) == len(y)
        assert x.shape[1:] in ((28, 28), (28, 28, 1))
        assert x.dtype == np.uint8
        assert x.min() >= 0 and x.max() <= 255
        assert y.ndim == 1 and y.dtype.kind in "iu"
        assert y.min() >= 0 and y.max() <= 9
        counts = np.bincount(y, minlength=10)
        assert (counts > 0).all() and (counts / len(y) >= min_class_share).all()


def repeated(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` repeated along its first axis to ``size`` entries."""
    return np.resize(array, (size, *array.shape[1:]))


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("pipeline", "numpy"), required=True)
    args = parser.parse_args()
    validate = {
        "pipeline": lambda d: validate_dataset(d, min_class_share=MIN_CLASS_SHARE),
        "numpy": numpy_asserts,
    }[args.mode]

    sample = load_sample()
    images = np.concatenate([sample.x_train, sample.x_test])
    labels = np.concatenate([sample.y_train, sample.y_test])
    full = Dataset(
        repeated(images, TRAIN_IMAGES),
        repeated(labels, TRAIN_IMAGES),
        repeated(images, TEST_IMAGES),
        repeated(labels, TEST_IMAGES),
        name="sample-x14",
        source="benchmark",
    )
    validate(sample)  # warm-up: imports and first-call costs

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
    before = _kib("VmRSS")
    started = time.perf_counter()
    validate(full)
    seconds = time.perf_counter() - started
    extra_mb = (_kib("VmHWM") - before) / 1024
    report = {"seconds": seconds, "extra_mb": extra_mb, "images": 70_000}
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
