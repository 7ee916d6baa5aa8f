"""Tasks of a hyperparameter sweep: one trial, a failed trial's record, the table.

``train_trial`` runs on a Dask worker: it gets paths and ids, never arrays, and
logs to its own nested MLflow run through an explicit client and run id.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from mnist_pipeline import runs, sweep_runs, tracking_store
from mnist_pipeline.callbacks import EpochMetrics
from mnist_pipeline.config import TrialParams
from mnist_pipeline.errors import SweepError
from mnist_pipeline.preprocess import PreparedData
from mnist_pipeline.runtime import configure_flow_logs
from mnist_pipeline.sweep import (
    TrialResult,
    check_trial,
    trial_name,
    trial_rows,
    trial_tags,
    trials_summary,
)
from mnist_pipeline.train import EpochLogger, train_model
from tasks.track import MLFLOW_RETRY


@task(name="trial", task_run_name="trial-{index}", cache_policy=NO_CACHE)
def train_trial(
    index: int,
    params: TrialParams,
    *,
    prepared_path: str,
    seed: int,
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    workdir: str,
) -> TrialResult:
    """Train one combination in a nested MLflow run; save the model in ``workdir``."""
    configure_flow_logs()  # in this worker process too
    logger = get_run_logger()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    client = tracking_store.connect(tracking_uri)
    with runs.nested_run(
        client,
        experiment_id,
        parent_run_id,
        trial_name(index, params),
        trial_tags(index, worker),
    ) as run_id:
        runs.log_params(client, run_id, params.flat_params() | {"seed": seed})
        if not Path(prepared_path).is_file():
            raise SweepError(
                f"Worker {worker} cannot read {prepared_path}: the work folder "
                "must be shared by the flow and every Dask worker, at the same path."
            )
        prepared = PreparedData.load(Path(prepared_path))
        check_trial(params, len(prepared.x_train))
        logger.info("Trial %d on %s: %s", index, worker, params.label())
        model, history = train_model(
            prepared,
            epochs=params.epochs,
            batch_size=params.batch_size,
            learning_rate=params.learning_rate,
            seed=seed,
            conv_filters=params.conv_filters,
            dropout=params.dropout,
            augmentation=params.augmentation,
            callbacks=[
                EpochLogger(logger, images=len(prepared.x_train)),
                EpochMetrics(client, run_id),
            ],
        )
        path = Path(workdir) / "models" / run_id / "model.keras"
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
    info = client.get_run(run_id).info
    return TrialResult(
        index=index,
        params=params,
        status="FINISHED",
        run_id=run_id,
        val_accuracy=history["val_accuracy"][-1],
        val_loss=history["val_loss"][-1],
        model_path=str(path),
        history=history,
        started=info.start_time / 1000,
        finished=info.end_time / 1000,
        worker=worker,
    )


@task(name="record-failed-trial", **MLFLOW_RETRY)
def record_failed_trial(
    index: int,
    params: TrialParams,
    reason: str,
    *,
    experiment_id: str,
    parent_run_id: str,
) -> TrialResult:
    """Make sure a failed trial's run is FAILED with the reason; describe it."""
    run = sweep_runs.fail_child_run(
        tracking_store.client(),
        experiment_id,
        parent_run_id,
        trial_name(index, params),
        trial_tags(index),
        reason,
    )
    get_run_logger().warning("Trial %d failed: %s", index, reason)
    info = run.info
    return TrialResult(
        index=index,
        params=params,
        status="FAILED",
        run_id=info.run_id,
        started=info.start_time / 1000 if info.start_time else None,
        finished=info.end_time / 1000 if info.end_time else None,
        worker=run.data.tags.get("sweep.worker"),
        error=run.data.tags.get("failure_reason", reason),
    )


@task(name="record-trials", **MLFLOW_RETRY)
def record_trials(
    run_id: str, results: list[TrialResult], best_index: int | None
) -> None:
    """The trials table in the parent MLflow run and as a Prefect table artifact."""
    rows = trial_rows(results, best_index)
    tags, metrics = trials_summary(results, best_index)
    sweep_runs.log_sweep(tracking_store.client(), run_id, rows, tags, metrics)
    create_table_artifact(
        rows,
        key="sweep-trials",
        description="Every trial of the sweep: settings, status, validation scores",
    )


@task(name="record-outcome", **MLFLOW_RETRY)
def record_outcome(run_id: str, test_accuracy: float, version: str, gate: str) -> None:
    """What became of the best trial, on the parent run."""
    sweep_runs.log_sweep_outcome(
        tracking_store.client(),
        run_id,
        tags={"sweep.registered_version": version, "sweep.gate": gate},
        metrics={"best_test_accuracy": test_accuracy},
    )
