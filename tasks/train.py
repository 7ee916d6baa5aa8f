"""Task: train the model, streaming epochs to the log, MLflow and Prefect's UI."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import keras
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from mnist_pipeline import runs, tracking_store
from mnist_pipeline.callbacks import EpochMetrics
from mnist_pipeline.checkpoint import Resume, fit_resumably
from mnist_pipeline.config import Augmentation
from mnist_pipeline.preprocess import PreparedData
from mnist_pipeline.train import EpochLogger, train_model


class TrainedModel(BaseModel):
    """Where the trained Keras model was saved, and its per-epoch history."""

    path: str
    history: dict[str, list[float]]


class _PrefectProgress(keras.callbacks.Callback):
    """Advances a Prefect progress artifact after every epoch."""

    def __init__(self, artifact_id: UUID) -> None:
        super().__init__()
        self._artifact_id = artifact_id

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        epochs = self.params.get("epochs", 1)
        update_progress_artifact(
            self._artifact_id,
            progress=100.0 * (epoch + 1) / epochs,
            description=f"Epoch {epoch + 1}/{epochs}, "
            f"val_accuracy {(logs or {}).get('val_accuracy', float('nan')):.4f}",
        )


@task(name="train", cache_policy=NO_CACHE)
def train(
    prepared_path: str,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    run_id: str,
    workdir: str,
    checkpoint_key: str,
    augmentation: Augmentation | None = None,
) -> TrainedModel:
    """Fit the reference CNN, resuming an interrupted fit of the same training."""
    logger = get_run_logger()
    prepared = PreparedData.load(Path(prepared_path))
    progress = create_progress_artifact(
        0.0, key="training-progress", description=f"Epoch 0/{epochs}"
    )
    client = tracking_store.client()
    callbacks = [
        EpochLogger(logger, images=len(prepared.x_train)),
        EpochMetrics(client, run_id),
        _PrefectProgress(progress),
    ]

    def fit(first: list[keras.callbacks.Callback], initial_epoch: int):
        return train_model(
            prepared,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            callbacks=[*first, *callbacks],
            initial_epoch=initial_epoch,
            augmentation=augmentation,
        )

    def on_resume(resume: Resume) -> None:
        logger.info(
            "Resumed at epoch %d/%d from the checkpoint of run %s",
            resume.initial_epoch,
            epochs,
            resume.interrupted_run,
        )
        runs.record_resume(client, run_id, resume.previous, resume.interrupted_run)

    model, history = fit_resumably(
        Path(workdir) / "checkpoints" / checkpoint_key,
        run_id,
        fit,
        logger=logger,
        on_resume=on_resume,
    )
    path = Path(workdir) / "models" / run_id / "model.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return TrainedModel(path=str(path), history=history)
