"""The train task's checkpoint bookkeeping, without Prefect or a real fit."""

from __future__ import annotations

import json
import logging

import pytest

from mnist_pipeline.checkpoint import CheckpointFolder, fit_resumably, load_history

#: The checkpoint's callbacks, in the order they must come first in ``fit``'s list.
CHECKPOINT_CALLBACKS = ["EpochHistory", "RandomState", "BackupAndRestore", "RestoredAt"]


class _Fit:
    """Stands in for ``train_model``: records what it was given, returns a history."""

    def __init__(self, history: dict[str, list[float]]) -> None:
        self.history = history
        self.calls: list[tuple[list[str], int]] = []

    def __call__(self, callbacks, initial_epoch):
        self.calls.append(([type(c).__name__ for c in callbacks], initial_epoch))
        return "model", self.history


def _interrupted(folder, *, owner: str, epochs: int) -> None:
    """What a run killed after ``epochs`` backed-up epochs leaves in ``folder``."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_id": owner}))
    history = [{"epoch": e, "loss": 1.0 / e} for e in range(1, epochs + 1)]
    (folder / "history.json").write_text(json.dumps(history))
    (folder / "backup").mkdir()
    (folder / "backup" / "training_metadata.json").write_text(
        json.dumps({"epoch": epochs})
    )


def test_a_fresh_fit_starts_at_epoch_0_and_clears_its_checkpoint(tmp_path):
    folder = tmp_path / "ck"
    fit, resumed = _Fit({"loss": [0.9, 0.4]}), []
    model, history = fit_resumably(folder, "run-1", fit, on_resume=resumed.append)
    assert (model, history) == ("model", {"loss": [0.9, 0.4]})
    assert fit.calls == [(CHECKPOINT_CALLBACKS, 0)]
    assert resumed == []
    assert sorted(p.name for p in folder.iterdir()) == ["lock"]


def test_an_interrupted_fit_resumes_with_its_earlier_epochs(tmp_path):
    folder = tmp_path / "ck"
    _interrupted(folder, owner="killed-run", epochs=2)
    fit, resumed = _Fit({"loss": [0.3]}), []

    def on_resume(resume):
        # Called while the checkpoint still exists: a failure here keeps it.
        assert (folder / "backup").exists()
        resumed.append(resume)

    _, history = fit_resumably(folder, "run-2", fit, on_resume=on_resume)
    assert fit.calls == [(CHECKPOINT_CALLBACKS, 2)]
    (resume,) = resumed
    assert resume.interrupted_run == "killed-run" and resume.initial_epoch == 2
    assert history == {"loss": [1.0, 0.5, 0.3]}
    assert sorted(p.name for p in folder.iterdir()) == ["lock"]


def test_a_failing_resume_record_keeps_the_checkpoint(tmp_path):
    folder = tmp_path / "ck"
    _interrupted(folder, owner="killed-run", epochs=2)

    def on_resume(resume):
        raise ConnectionError("tracking server down")

    with pytest.raises(ConnectionError):
        fit_resumably(folder, "run-2", _Fit({"loss": [0.3]}), on_resume=on_resume)
    assert (folder / "backup" / "training_metadata.json").exists()
    assert [e["epoch"] for e in load_history(folder / "history.json")] == [1, 2]


def test_a_folder_held_by_another_run_trains_without_a_checkpoint(tmp_path, caplog):
    folder = tmp_path / "ck"
    _interrupted(folder, owner="live-run", epochs=2)
    fit = _Fit({"loss": [0.9]})
    with CheckpointFolder(folder) as other, caplog.at_level(logging.WARNING):
        assert other.acquired
        _, history = fit_resumably(
            folder, "run-2", fit, logger=logging.getLogger("test")
        )
    assert fit.calls == [([], 0)]
    assert history == {"loss": [0.9]}
    assert "Another run is training this same configuration" in caplog.text
    # The other run's checkpoint is left as it was.
    assert json.loads((folder / "run.json").read_text()) == {"run_id": "live-run"}
    assert (folder / "backup" / "training_metadata.json").exists()


def test_a_checkpoint_cut_by_a_kill_is_no_checkpoint_with_one_warning(tmp_path, caplog):
    folder = tmp_path / "ck"
    _interrupted(folder, owner="killed-run", epochs=2)
    metadata = folder / "backup" / "training_metadata.json"
    metadata.write_text('{"epo')  # the kill came while Keras wrote it
    seen = []

    def fit(callbacks, initial_epoch):
        # Keras's BackupAndRestore reads the file too: it must be gone by now.
        seen.append((initial_epoch, metadata.exists()))
        return "model", {"loss": [0.9, 0.4]}

    with caplog.at_level(logging.WARNING):
        _, history = fit_resumably(
            folder, "run-2", fit, logger=logging.getLogger("test")
        )
    assert seen == [(0, False)]
    assert history == {"loss": [0.9, 0.4]}  # no epochs of the killed run
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(metadata) in warnings[0], warnings
    assert sorted(p.name for p in folder.iterdir()) == ["lock"]
