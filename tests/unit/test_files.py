"""Files written by overlapping runs: readers never see a partial write."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.files import atomic_write, database_lock, sqlite_file
from mnist_pipeline.preprocess import PreparedData, preprocess


def test_concurrent_writers_leave_one_complete_file(tmp_path):
    path = tmp_path / "shared" / "data.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    start = threading.Barrier(len(payloads))

    def write(payload: bytes) -> None:
        start.wait()

        def chunked(partial) -> None:
            with partial.open("wb") as file:
                for offset in range(0, len(payload), 1000):
                    file.write(payload[offset : offset + 1000])

        atomic_write(path, chunked)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_bytes() in payloads
    assert [p.name for p in path.parent.iterdir()] == ["data.bin"]


def test_failed_write_keeps_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")

    def half_then_fail(partial) -> None:
        partial.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_two_runs_preparing_the_same_data_read_complete_arrays(tmp_path, tiny_dataset):
    prepared = preprocess(tiny_dataset, 0.2, seed=0)
    path = tmp_path / "prepared" / "same-name.npz"
    start = threading.Barrier(4)
    loaded = []

    def save_then_load() -> None:
        start.wait()
        prepared.save(path)
        loaded.append(PreparedData.load(path))

    threads = [threading.Thread(target=save_then_load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loaded) == 4
    for data in loaded:
        np.testing.assert_array_equal(data.x_train, prepared.x_train)
        np.testing.assert_array_equal(data.y_test, prepared.y_test)


def test_database_lock_lets_one_holder_in_at_a_time(tmp_path):
    database = tmp_path / "new" / "prefect.db"
    events: list[str] = []
    held = threading.Event()

    def second() -> None:
        held.wait()
        with database_lock(database):
            events.append("second in")

    thread = threading.Thread(target=second)
    thread.start()
    with database_lock(database):
        held.set()
        thread.join(timeout=0.5)
        assert thread.is_alive()  # waiting for the first holder
        events.append("first out")
    thread.join(timeout=5)
    assert events == ["first out", "second in"]
    assert (tmp_path / "new" / "prefect.db.lock").exists()


def test_sqlite_file_of_mlflow_and_prefect_urls(tmp_path, monkeypatch):
    from prefect.settings import Settings

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    prefect_default = Settings().server.database.connection_url.get_secret_value()
    assert sqlite_file(prefect_default) == tmp_path / "prefect.db"
    assert sqlite_file("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_file("sqlite:////abs/m.db?timeout=30") == Path("/abs/m.db")
    for other in (
        "sqlite+aiosqlite:///:memory:",
        "sqlite://",
        "postgresql+asyncpg://u:pw@127.0.0.1/prefect",
        "http://127.0.0.1:5000",
        "databricks",
        "",
    ):
        assert sqlite_file(other) is None, other
