"""Promotion locks: one lock file per model beside a SQLite store, with a timeout."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.files import exclusive_lock
from tasks.locking import limit_name, lock_file, promotion_lock

pytestmark = pytest.mark.usefixtures("no_prefect_server")


def test_names_are_safe_for_prefect_and_the_file_system(tmp_path):
    assert limit_name("mnist-cnn") == "mnist-promotion-mnist-cnn"
    assert limit_name("team/model v2") == "mnist-promotion-team-model-v2"
    path = lock_file(tmp_path / "mlflow.db", "mnist-cnn")
    assert path == tmp_path / "mlflow.db.mnist-promotion-mnist-cnn.lock"


def test_one_holder_at_a_time_beside_a_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spans: list[tuple[float, float]] = []

    def hold() -> None:
        with promotion_lock("mnist-cnn", uri, timeout=30) as held:
            assert held == [
                f"lock file {lock_file(tmp_path / 'mlflow.db', 'mnist-cnn')}"
            ]
            start = time.monotonic()
            time.sleep(0.3)
            spans.append((start, time.monotonic()))

    errors: list[BaseException] = []

    def run() -> None:
        try:
            hold()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # Each thread runs in a copy of this context: the fixture's settings.
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(run,))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    spans.sort()
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end


def test_other_models_do_not_wait(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with promotion_lock("one", uri, timeout=1):
        with promotion_lock("other", uri, timeout=1) as held:
            assert held


def test_a_lock_held_too_long_fails_the_promotion(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    waits = []
    with exclusive_lock(lock_file(tmp_path / "mlflow.db", "mnist-cnn"), timeout=1):
        with pytest.raises(RegistryError, match="held its lock for more than 0.5 s"):
            with promotion_lock("mnist-cnn", uri, timeout=0.5):
                pass
        with pytest.raises(TimeoutError):
            with exclusive_lock(
                lock_file(tmp_path / "mlflow.db", "mnist-cnn"),
                timeout=0.3,
                on_wait=lambda: waits.append(1),
            ):
                pass
    assert waits == [1]  # told once that it waits


def test_no_lock_at_all_is_said(caplog, tmp_path):
    with promotion_lock("mnist-cnn", "http://127.0.0.1:1", timeout=1) as held:
        assert held == []
    assert "not serialised" in caplog.text
