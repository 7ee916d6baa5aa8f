"""Resumable training: history bookkeeping, the lock, and a real Keras resume."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mnist_pipeline.checkpoint import (
    CheckpointFolder,
    load_history,
    merge_history,
)
from mnist_pipeline.config import Augmentation
from mnist_pipeline.preprocess import preprocess
from mnist_pipeline.train import train_model


def test_history_is_cut_to_the_backed_up_epochs(tmp_path):
    folder = tmp_path / "ck"
    with CheckpointFolder(folder) as checkpoint:
        recorder = checkpoint.start("run-1").callbacks[0]
        for epoch in range(3):
            recorder.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
    assert [e["epoch"] for e in load_history(folder / "history.json")] == [1, 2, 3]
    # The backup kept 2 epochs (the third record came after the last backup).
    (folder / "backup").mkdir()
    (folder / "backup" / "training_metadata.json").write_text('{"epoch": 2}')
    with CheckpointFolder(folder) as checkpoint:
        resume = checkpoint.start("run-2")
    assert resume.initial_epoch == 2 and resume.resumed
    assert resume.interrupted_run == "run-1"
    assert [e["loss"] for e in resume.previous] == [1.0, 0.5]
    assert [e["epoch"] for e in load_history(folder / "history.json")] == [1, 2]


def test_merge_history():
    previous = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]
    assert merge_history(previous, {"loss": [0.3]}) == {"loss": [1.0, 0.5, 0.3]}


def test_only_one_holder_of_a_folder(tmp_path):
    with CheckpointFolder(tmp_path / "ck") as first:
        with CheckpointFolder(tmp_path / "ck") as second:
            assert first.acquired and not second.acquired
    with CheckpointFolder(tmp_path / "ck") as again:
        assert again.acquired
        again.claim("run-1")
        assert again.previous_owner() == "run-1"


class _StopAfter(keras.callbacks.Callback):
    """Raises after ``n`` epochs, like a process dying mid-training."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.n:
            raise KeyboardInterrupt


def _fit(prepared, folder, extra=(), augmentation=None):
    """Train 4 epochs with a checkpoint in ``folder``, as the train task does."""
    with CheckpointFolder(folder) as checkpoint:
        resume = checkpoint.start("run")
        model, history = train_model(
            prepared,
            epochs=4,
            batch_size=16,
            learning_rate=0.01,
            seed=0,
            callbacks=[*resume.callbacks, *extra],
            initial_epoch=resume.initial_epoch,
            augmentation=augmentation,
        )
        return model, merge_history(resume.previous, history), resume


@pytest.mark.parametrize("augmentation", [None, Augmentation()], ids=["plain", "aug"])
def test_a_resumed_fit_is_the_uninterrupted_one(tmp_path, tiny_dataset, augmentation):
    prepared = preprocess(tiny_dataset, 0.2, seed=0)
    straight, straight_history, _ = _fit(
        prepared, tmp_path / "straight", augmentation=augmentation
    )

    with pytest.raises(KeyboardInterrupt):
        _fit(prepared, tmp_path / "killed", [_StopAfter(2)], augmentation)
    resumed, history, resume = _fit(
        prepared, tmp_path / "killed", augmentation=augmentation
    )
    assert resume.initial_epoch == 2

    # Same batches in the same order, same optimizer, dropout and augmentation
    # state: the same per-epoch metrics and final weights (float tolerance only).
    assert sorted(history) == sorted(straight_history)
    for name, values in straight_history.items():
        np.testing.assert_allclose(history[name], values, rtol=1e-5, err_msg=name)
    for mine, theirs in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
