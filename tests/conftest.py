"""Shared fixtures: a tiny synthetic dataset and an isolated MLflow store per test."""

from __future__ import annotations

import contextlib
import http.server
import signal
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from mnist_pipeline.data import Dataset, DatasetRef
from mnist_pipeline.runtime import configure_environment


def pytest_configure(config: pytest.Config) -> None:
    """Entry points set these before Prefect, MLflow or TensorFlow load; so do tests."""
    configure_environment()
    # Tests press Ctrl+C (SIGINT) on the processes they start, as at a terminal.
    # A shell starts background jobs with SIGINT ignored and children inherit
    # that: `mnist-pipeline serve` then never saw the key. With Python's own
    # handler here, children start with the default action.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def loopback_server(
    handler: type[http.server.BaseHTTPRequestHandler],
) -> Iterator[str]:
    """Serve ``handler`` on a free 127.0.0.1 port; yield its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images whose labels are ``arange(n) % 10``.

    Each class draws a bright bar at its own row band, so a model can learn it.
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        top = 2 + 2 * int(label)
        images[i, top : top + 3, 4:24] = 255
    return images, labels


#: A saved dataset's reference as the gate and the registry see it (nothing on disk).
SAMPLE_REF = DatasetRef(
    path="unused.npz",
    name="mnist-sample",
    source="bundled",
    digest="d1g3st",
    split_digests={"train": "tr41n", "test": "t3st"},
    shapes={},
    dtypes={},
)


@pytest.fixture
def tiny_dataset() -> Dataset:
    """60 training and 30 test images, every class present."""
    x_train, y_train = make_images(60, seed=1)
    x_test, y_test = make_images(30, seed=2)
    return Dataset(x_train, y_train, x_test, y_test, name="tiny", source="synthetic")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store; artifacts land under ``tmp_path/mlruns``."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return uri


@pytest.fixture
def no_prefect_server():
    """Settings as a process without PREFECT_API_URL sees them (a temporary
    server), even after integration tests started the session's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


@pytest.fixture(autouse=True)
def _isolated_keras_home(tmp_path_factory, monkeypatch):
    """Never read or write the user's Keras dataset cache."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
