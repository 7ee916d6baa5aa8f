"""Tasks: record the run in MLflow and register the model (retried with backoff)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from mnist_pipeline import tracking
from mnist_pipeline.data import DatasetRef, open_dataset
from tasks.evaluate import EvaluationSummary
from tasks.train import TrainedModel

# MLflow calls cross the network when tracking goes to a server: retry them.
MLFLOW_RETRY = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "cache_policy": NO_CACHE,
}


@task(name="log-params", **MLFLOW_RETRY)
def log_params(run_id: str, params: Mapping[str, object]) -> None:
    """Log the run's configuration as MLflow params."""
    tracking.log_params(tracking.client(), run_id, params)


@task(name="log-dataset", **MLFLOW_RETRY)
def log_dataset(run_id: str, ref: DatasetRef) -> None:
    """Record the train and test splits as MLflow dataset inputs."""
    tracking.log_datasets(tracking.client(), run_id, ref)


@task(name="log-results", **MLFLOW_RETRY)
def log_results(
    run_id: str, evaluation: EvaluationSummary, data_plots: list[str]
) -> None:
    """Log test metrics, the per-class table and every plot."""
    client = tracking.client()
    tracking.log_evaluation(
        client, run_id, evaluation.metrics, evaluation.per_class, evaluation.confusion
    )
    tracking.log_files(client, run_id, map(Path, data_plots), "plots/data")
    tracking.log_files(client, run_id, map(Path, evaluation.plots), "plots/evaluation")


@task(name="register", **MLFLOW_RETRY)
def register_model(
    run_id: str,
    trained: TrainedModel,
    ref: DatasetRef,
    model_name: str,
    test_accuracy: float,
) -> str:
    """Log the model with its signature and example; register a new version."""
    example = open_dataset(ref).x_test[:1].reshape(-1, 28, 28)
    tags = {
        "run_id": run_id,
        "dataset": ref.name,
        "dataset_digest": ref.digest,
        "test_digest": ref.split_digests["test"],
        "test_accuracy": f"{test_accuracy:.4f}",
    }
    _, version = tracking.log_model(
        run_id, Path(trained.path), model_name, example, tags
    )
    tracking.set_challenger(tracking.client(), model_name, version)
    get_run_logger().info(
        "Registered %s version %s as @challenger", model_name, version
    )
    return version
