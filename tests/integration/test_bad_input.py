"""Bad input through the training flow: one message, a FAILED run, registry untouched.

The flow runs in this process against the session's Prefect server: what the
command line makes of the same error (one ``Error:`` paragraph, exit code 1, no
traceback) is checked once, in a real process, by tests/integration/test_cli.py.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline import packaging, registry, runs, tracking_store
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.model import build_model

from ..conftest import make_images


def _arrays() -> dict[str, np.ndarray]:
    x_train, y_train = make_images(100, seed=1)
    x_test, y_test = make_images(50, seed=2)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _npz(folder: Path, **changes) -> Path:
    path = folder / "data.npz"
    arrays = _arrays() | changes
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _idx_folder(folder: Path, broken: str | None = None) -> Path:
    root = folder / "idx"
    root.mkdir()
    names = {
        "x_train": "train-images-idx3-ubyte.gz",
        "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz",
        "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    for key, array in _arrays().items():
        magic = 0x0800 + array.ndim
        header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
        payload = header + array.tobytes()
        if key == "x_test" and broken == "magic":
            payload = struct.pack(">I", 0x0801) + payload[4:]
        if key == "x_test" and broken == "header":
            payload = payload[:4] + struct.pack(">I", 60) + payload[8:]
        data = gzip.compress(payload)
        if key == "y_train" and broken == "gzip":
            data = data[: len(data) // 2]
        (root / names[key]).write_bytes(data)
    return root


def _float_images(folder: Path) -> Path:
    x = _arrays()["x_train"].astype(np.float32)
    x[0, 0, 0], x[1, 1, 1] = np.nan, 300.0
    return _npz(folder, x_train=x)


def _labels(folder: Path, kind: str) -> Path:
    y = _arrays()["y_train"].astype(np.int64)
    if kind == "range":
        y[:3] = [10, -1, 42]
        return _npz(folder, y_train=y)
    if kind == "dtype":
        return _npz(folder, y_train=y.astype(np.float64) + 0.5)
    y_test = _arrays()["y_test"].copy()
    y_test[y_test == 3] = 4
    return _npz(folder, y_test=y_test)


def _truncated(folder: Path) -> Path:
    path = _npz(folder)
    path.write_bytes(path.read_bytes()[:5000])
    return path


CASES: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    "truncated npz": (_truncated, ["truncated or corrupted"]),
    "pickle npz": (
        lambda d: _npz(d, y_test=np.array([{"x": 1}] * 50, dtype=object)),
        ["refusing to unpickle"],
    ),
    "missing keys": (lambda d: _npz(d, x_test=None, y_test=None), ["x_test, y_test"]),
    "wrong shape": (
        lambda d: _npz(d, x_train=np.zeros((100, 32, 32), np.uint8)),
        ["train: images 28x28 with one channel: image shape (32x32)"],
    ),
    "wrong rank": (
        lambda d: _npz(d, x_test=_arrays()["x_test"].reshape(50, 784)),
        ["test: images 28x28 with one channel: image shape (784)"],
    ),
    "float NaN and range": (
        _float_images,
        [
            "train: images of dtype uint8: dtype float32",
            "train: no NaN or infinite pixels",
            "train: pixels <= 255: 1 of 100 failed, e.g. 300 at #1",
        ],
    ),
    "labels out of range": (
        lambda d: _labels(d, "range"),
        ["train: labels within 0..9: 3 of 100 failed"],
    ),
    "labels non-integer": (
        lambda d: _labels(d, "dtype"),
        ["train: labels of an integer dtype: dtype float64", "labels whole numbers"],
    ),
    "count mismatch": (
        lambda d: _npz(d, y_test=_arrays()["y_test"][:45]),
        ["test: as many labels as images: 50 images, 45 labels"],
    ),
    "empty split": (
        lambda d: _npz(
            d, x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.uint8)
        ),
        ["test: at least one image: 0 images", "test: every class present"],
    ),
    "class missing": (
        lambda d: _labels(d, "missing"),
        ["test: every class present: class 3"],
    ),
    "corrupted gzip": (lambda d: _idx_folder(d, "gzip"), ["cannot be read"]),
    "idx wrong magic": (
        lambda d: _idx_folder(d, "magic"),
        ["magic number 0x00000801; expected 0x00000803"],
    ),
    "idx wrong header": (lambda d: _idx_folder(d, "header"), ["header declares"]),
}


@pytest.fixture
def registry_with_champion(mlflow_store, tmp_path):
    """A store whose ``mnist-cnn`` v1 is @champion, and a snapshot of its files."""
    client = tracking_store.connect()
    experiment = tracking_store.ensure_experiment(client, "mnist")
    build_model().save(tmp_path / "champion.keras")
    with runs.tracked_run(client, experiment, "champion", {}) as run_id:
        packaging.log_model(
            run_id, tmp_path / "champion.keras", "mnist-cnn", np.zeros((1, 28, 28)), {}
        )
    registry.move_champion(client, "mnist-cnn", "1", by="test", reason="fixture")
    return client


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_message_and_changes_nothing(
    case, registry_with_champion, mlflow_store, tmp_path, prefect_api_url
):
    from flows.training import mnist_training

    client = registry_with_champion
    make, expected = CASES[case]
    data = make(tmp_path)
    before = _snapshot(tmp_path / "mlruns")
    config = TrainConfig(data=str(data), epochs=1, workdir=str(tmp_path / "outputs"))

    with pytest.raises(PipelineError) as info:
        mnist_training(config)

    (message,) = str(info.value).strip().splitlines()
    assert str(data) in message
    for text in expected:
        assert text in message, message
    # Nothing lost or changed: earlier artifacts, versions and the champion.
    after = _snapshot(tmp_path / "mlruns")
    assert all(after.get(path) == size for path, size in before.items())
    versions = client.search_model_versions("name='mnist-cnn'")
    assert [str(v.version) for v in versions] == ["1"]
    assert registry.alias_version(client, "mnist-cnn", registry.CHAMPION) == "1"
    experiment = client.get_experiment_by_name("mnist")
    (failed,) = client.search_runs(
        [experiment.experiment_id], "attributes.status = 'FAILED'"
    )
    assert failed.data.tags["failure_reason"].split(":")[0] in (
        "DataLoadError",
        "DataValidationError",
    )
