"""Resumable training: a per-configuration checkpoint folder that survives a kill.

Keras's ``BackupAndRestore`` keeps the model, optimizer and epoch; an epoch
history file beside it keeps the metrics of finished epochs, so a rerun of the
same command continues from the last completed epoch with complete curves.
An advisory lock keeps two concurrent runs of one configuration from sharing it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import keras

from mnist_pipeline.files import atomic_write

HISTORY_FILE = "history.json"
OWNER_FILE = "run.json"


def training_key(params: Mapping[str, object], dataset_digest: str) -> str:
    """Identify a training setup: same key, same checkpoint folder."""
    blob = json.dumps({"params": dict(params), "data": dataset_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class CheckpointFolder:
    """Exclusive use of one configuration's checkpoint folder, or none.

    Use as a context manager; ``acquired`` says whether this process owns it
    (another live run of the same configuration holds it otherwise). The lock is
    released by the kernel even when the process is killed.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.acquired = False
        self._lock: IO[str] | None = None

    def __enter__(self) -> CheckpointFolder:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = (self.folder / "lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.acquired = True
        except BlockingIOError:
            self.acquired = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the lock

    def previous_owner(self) -> str | None:
        """The run id of the run that last trained here, if any."""
        path = self.folder / OWNER_FILE
        return json.loads(path.read_text()).get("run_id") if path.exists() else None

    def claim(self, run_id: str) -> None:
        """Record ``run_id`` as the run training here now."""
        atomic_write(
            self.folder / OWNER_FILE,
            lambda p: p.write_text(json.dumps({"run_id": run_id})),
        )

    def callbacks(self) -> tuple[EpochHistory, keras.callbacks.BackupAndRestore]:
        """The history recorder and Keras's backup, in the order fit needs them."""
        history = EpochHistory(self.folder / HISTORY_FILE)
        backup = keras.callbacks.BackupAndRestore(
            str(self.folder / "backup"), double_checkpoint=True
        )
        return history, backup

    def clear(self) -> None:
        """Forget the checkpoint after a completed training."""
        for child in self.folder.iterdir():
            if child.name != "lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()


class EpochHistory(keras.callbacks.Callback):
    """Persists every finished epoch's metrics; knows where a resumed fit began.

    Must come before ``BackupAndRestore`` in the callbacks: its epoch record is
    then never behind the backup.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.resumed_from: int | None = None
        self.previous: list[dict[str, float]] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.resumed_from is not None:
            return
        # The first epoch of this fit is where BackupAndRestore resumed it.
        self.resumed_from = epoch
        self.previous = [e for e in load_history(self.path) if e["epoch"] <= epoch]
        self._write(self.previous)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        entry = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        done = [e for e in load_history(self.path) if e["epoch"] <= epoch]
        self._write([*done, entry])

    def _write(self, history: list[dict[str, float]]) -> None:
        atomic_write(self.path, lambda p: p.write_text(json.dumps(history)))


def load_history(path: Path) -> list[dict[str, float]]:
    """Epoch records written by :class:`EpochHistory` (empty when none)."""
    return json.loads(path.read_text()) if path.exists() else []


def merge_history(
    previous: list[dict[str, float]], current: Mapping[str, list[float]]
) -> dict[str, list[float]]:
    """Earlier epochs' metrics followed by this fit's, per metric."""
    merged = {key: [e[key] for e in previous if key in e] for key in current}
    return {key: merged[key] + list(values) for key, values in current.items()}
