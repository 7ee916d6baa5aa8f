"""Resumable training: history bookkeeping, the lock, and a real Keras resume."""

from __future__ import annotations

import numpy as np

from mnist_pipeline.checkpoint import (
    CheckpointFolder,
    EpochHistory,
    load_history,
    merge_history,
    training_key,
)
from mnist_pipeline.preprocess import preprocess
from mnist_pipeline.train import train_model


def test_training_key_depends_on_params_and_data():
    params = {"epochs": 10, "seed": 0}
    assert training_key(params, "abc") == training_key(dict(params), "abc")
    assert training_key(params, "abc") != training_key(params, "abd")
    assert training_key(params, "abc") != training_key({"epochs": 11, "seed": 0}, "abc")


def test_history_is_truncated_to_where_the_fit_resumed(tmp_path):
    path = tmp_path / "history.json"
    recorder = EpochHistory(path)
    for epoch in range(3):
        recorder.on_epoch_begin(epoch)
        recorder.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
    assert [e["epoch"] for e in load_history(path)] == [1, 2, 3]
    resumed = EpochHistory(path)
    resumed.on_epoch_begin(2)  # the backup held 2 finished epochs
    assert resumed.resumed_from == 2
    assert [e["epoch"] for e in resumed.previous] == [1, 2]
    resumed.on_epoch_end(2, {"loss": 0.3})
    assert [e["loss"] for e in load_history(path)] == [1.0, 0.5, 0.3]


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


class _StopAfter:
    """Raises after ``n`` epochs, like a process dying mid-training."""

    def __init__(self, n: int) -> None:
        import keras

        class Stop(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == n:
                    raise KeyboardInterrupt

        self.callback = Stop()


def test_interrupted_fit_resumes_from_the_last_epoch(tmp_path, tiny_dataset):
    prepared = preprocess(tiny_dataset, 0.2, seed=0)
    settings = {"epochs": 4, "batch_size": 16, "learning_rate": 0.01, "seed": 0}
    with CheckpointFolder(tmp_path / "ck") as checkpoint:
        recorder, backup = checkpoint.callbacks()
        try:
            train_model(
                prepared,
                **settings,
                callbacks=[recorder, backup, _StopAfter(2).callback],
            )
        except KeyboardInterrupt:
            pass
    assert [e["epoch"] for e in load_history(tmp_path / "ck" / "history.json")] == [
        1,
        2,
    ]

    with CheckpointFolder(tmp_path / "ck") as checkpoint:
        recorder, backup = checkpoint.callbacks()
        _, history = train_model(prepared, **settings, callbacks=[recorder, backup])
        assert recorder.resumed_from == 2
        assert len(history["loss"]) == 2  # only epochs 3 and 4 ran
        merged = merge_history(recorder.previous, history)
        assert len(merged["loss"]) == 4
        assert np.isfinite(merged["val_loss"]).all()
        checkpoint.clear()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["lock"]
