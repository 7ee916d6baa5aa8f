"""Resumable training: a per-training checkpoint folder that survives a kill.

Keras's ``BackupAndRestore`` keeps the model, optimizer and epoch; an epoch
history file beside it keeps the metrics of finished epochs. A rerun of the same
training (same key: data, settings and code version) continues from the last
completed epoch, on the batches the uninterrupted fit would have seen from
there (``train.shuffled_batches`` orders each epoch by its number alone), with
complete curves. An advisory lock keeps two concurrent runs of one training from
sharing the folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import keras

from mnist_pipeline.files import atomic_write, exclusive_lock

log = logging.getLogger(__name__)

Logger = logging.Logger | logging.LoggerAdapter
History = dict[str, list[float]]
#: A fit from ``initial_epoch`` with these callbacks first: the model, its history.
Fit = Callable[[list[keras.callbacks.Callback], int], tuple[keras.Model, History]]

HISTORY_FILE = "history.json"
OWNER_FILE = "run.json"
RNG_FILE = "rng.json"
BACKUP_FOLDER = "backup"
#: What ``BackupAndRestore`` writes beside its weights: the next epoch to run.
BACKUP_METADATA = "training_metadata.json"


@contextmanager
def training_claim(workdir: Path, key: str) -> Iterator[None]:
    """One run at a time per training in this work folder.

    Held from the registry look-up until the version is registered and gated
    (with ``approval: required``, until the person answered), so an identical
    run started meanwhile (a manual run beside the nightly) waits, then finds
    the version and its verdict and trains nothing.
    """
    path = Path(workdir) / "checkpoints" / f"{key}.claim"
    with exclusive_lock(
        path,
        timeout=math.inf,
        on_wait=lambda: log.info(
            "Another run is training this same configuration (%s); waiting for it.",
            key,
        ),
    ):
        yield


@dataclass
class Resume:
    """Where a fit starts, what it continues, and the callbacks that keep it so.

    ``callbacks`` go first in ``fit``'s list, in this order.
    """

    initial_epoch: int
    interrupted_run: str | None
    previous: list[dict[str, float]]
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)

    @property
    def resumed(self) -> bool:
        """Whether earlier epochs came from a checkpoint."""
        return self.initial_epoch > 0


class CheckpointFolder:
    """Exclusive use of one training's checkpoint folder, or none.

    Use as a context manager; ``acquired`` says whether this process owns it
    (another live run of the same training holds it otherwise). The lock is
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

    def backed_up_epoch(self) -> int | None:
        """How many epochs the backup holds (0 when there is none).

        None when its metadata cannot be read: Keras writes that file in place,
        so a kill can cut it short.
        """
        path = self.folder / BACKUP_FOLDER / BACKUP_METADATA
        if not path.exists():
            return 0
        try:
            return int(json.loads(path.read_text())["epoch"])
        except (ValueError, KeyError, TypeError):
            return None

    def start(self, run_id: str, logger: Logger = log) -> Resume:
        """Claim the folder for ``run_id``; say where its fit starts.

        The history is cut to the backed-up epochs (later records belong to an
        epoch the backup did not keep). A backup whose metadata is unreadable
        is no checkpoint: it is cleared, with a warning, and the fit starts at
        the first epoch.
        """
        epoch = self.backed_up_epoch()
        if epoch is None:
            logger.warning(
                "The checkpoint's %s is unreadable (cut short by a kill?); "
                "training from the first epoch.",
                self.folder / BACKUP_FOLDER / BACKUP_METADATA,
            )
            self.clear()
            epoch = 0
        interrupted = self.previous_owner() if epoch else None
        path = self.folder / HISTORY_FILE
        previous = [e for e in load_history(path) if e["epoch"] <= epoch]
        self.claim(run_id)
        _write_history(path, previous)
        backup = keras.callbacks.BackupAndRestore(
            str(self.folder / BACKUP_FOLDER), double_checkpoint=True
        )
        return Resume(
            initial_epoch=epoch,
            interrupted_run=interrupted,
            previous=previous,
            callbacks=[
                EpochHistory(path),
                RandomState(self.folder / RNG_FILE),
                backup,
                RestoredAt(epoch),
            ],
        )

    def clear(self) -> None:
        """Forget the checkpoint after a completed training."""
        for child in self.folder.iterdir():
            if child.name != "lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()


class EpochHistory(keras.callbacks.Callback):
    """Persists every finished epoch's metrics.

    Must come before ``BackupAndRestore`` in the callbacks: its epoch record is
    then never behind the backup.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        entry = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        done = [e for e in load_history(self.path) if e["epoch"] <= epoch]
        _write_history(self.path, [*done, entry])


class RandomState(keras.callbacks.Callback):
    """Keeps the random generators' state (dropout masks) with every epoch.

    ``BackupAndRestore`` restores weights and optimizer, not the state of the
    layers' seed generators: a resumed fit would draw the dropout masks of
    epoch 0 again. This saves their state after each epoch and puts back the
    state of the epoch the backup restored, as that epoch begins. Must come
    before ``BackupAndRestore``, so it saves first.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._started = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # The first epoch of the fit is the one the backup resumed at.
        first, self._started = not self._started, True
        if not first or not epoch:
            return
        saved = self._load().get(str(epoch))
        if saved is None:
            raise RuntimeError(
                f"The checkpoint holds no random-generator state for epoch {epoch}; "
                "the fit cannot resume exactly."
            )
        variables = _rng_variables(self.model)
        if len(saved) != len(variables):
            raise RuntimeError(
                f"The checkpoint holds {len(saved)} random-generator state(s), the "
                f"model has {len(variables)}: not the same model."
            )
        for variable, state in zip(variables, saved, strict=True):
            variable.assign(state)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        states = self._load()
        # In the model's variable order: names differ between model instances.
        states[str(epoch + 1)] = [
            v.numpy().tolist() for v in _rng_variables(self.model)
        ]
        atomic_write(self.path, lambda p: p.write_text(json.dumps(states)))

    def _load(self) -> dict[str, list[list[int]]]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}


def _rng_variables(model: keras.Model) -> list[keras.Variable]:
    # Each layer's SeedGenerator keeps its state in a variable of this name.
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


class RestoredAt(keras.callbacks.Callback):
    """Fails the fit when the backup restored another epoch than the one planned.

    The input pipeline was built for ``epoch`` before ``fit`` began; Keras's
    backup falls back to its previous copy when the latest is unreadable, which
    would pair epochs with the wrong batches. A rerun then reads the fallback.
    Must come after ``BackupAndRestore``.
    """

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_train_begin(self, logs: dict | None = None) -> None:
        restored = getattr(self.model, "_initial_epoch", None) or 0
        if restored != self.epoch:
            raise RuntimeError(
                f"The checkpoint restored epoch {restored}, not the backed-up epoch "
                f"{self.epoch} this fit's input was built for; run again to resume."
            )


def load_history(path: Path) -> list[dict[str, float]]:
    """Epoch records written by :class:`EpochHistory` (empty when none)."""
    return json.loads(path.read_text()) if path.exists() else []


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(history)))


def merge_history(
    previous: list[dict[str, float]], current: Mapping[str, list[float]]
) -> dict[str, list[float]]:
    """Earlier epochs' metrics followed by this fit's, per metric."""
    merged = {key: [e[key] for e in previous if key in e] for key in current}
    return {key: merged[key] + list(values) for key, values in current.items()}


def fit_resumably(
    folder: Path,
    run_id: str,
    fit: Fit,
    *,
    logger: Logger = log,
    on_resume: Callable[[Resume], None] = lambda resume: None,
) -> tuple[keras.Model, History]:
    """Run ``fit`` from the checkpoint in ``folder``; clear it once the fit is done.

    Args:
        folder: this training's checkpoint folder.
        run_id: the run training now (recorded as the folder's owner).
        fit: trains, given the checkpoint's callbacks (first in its list) and
            the epoch to start at.
        logger: where a fit without a checkpoint is reported.
        on_resume: called after a resumed fit, before the checkpoint is cleared
            (a failure there leaves the checkpoint for the next try).

    Returns:
        The model, and the history of every epoch, the resumed ones included.
    """
    with CheckpointFolder(folder) as checkpoint:
        if not checkpoint.acquired:
            logger.warning(
                "Another run is training this same configuration; this run trains "
                "without a resumable checkpoint."
            )
            return fit([], 0)
        resume = checkpoint.start(run_id, logger)
        model, history = fit(resume.callbacks, resume.initial_epoch)
        if resume.resumed:
            on_resume(resume)
            history = merge_history(resume.previous, history)
        checkpoint.clear()
    return model, history
