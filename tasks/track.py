"""Tasks: record the run in MLflow and register the model (retried with backoff)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from mnist_pipeline import packaging, registry, runs, tracking_store
from mnist_pipeline.data import DatasetRef, open_dataset
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.gate import PREDICTIONS_ARTIFACT, Scores, predictions_record
from mnist_pipeline.lineage import TRAINING_KEY_TAG
from tasks.evaluate import EvaluationSummary
from tasks.train import TrainedModel

#: MLflow's answers that a retry cannot change: the request itself was refused.
_FINAL_ERRORS = {
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "INVALID_PARAMETER_VALUE",
    "BAD_REQUEST",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
}


def _transient(task: object, task_run: object, state: State) -> bool:
    """Whether a failed MLflow task is worth another try (not a refusal, not input)."""
    try:
        state.result()
    except PipelineError:
        return False
    except MlflowException as exc:
        return exc.error_code not in _FINAL_ERRORS
    except Exception:  # noqa: BLE001 - lost connections, timeouts, 5xx
        return True
    return True


# MLflow calls cross the network when tracking goes to a server: retry what can
# pass (5xx, lost connections), and give up on a call that hangs (MLflow's own
# HTTP timeout is per request).
MLFLOW_RETRY = {
    "retries": 3,
    "retry_condition_fn": _transient,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "cache_policy": NO_CACHE,
    "timeout_seconds": 300,
}
#: Logging the model uploads its artifacts; large on slow links.
REGISTER_TIMEOUT = 900


class ExistingVersion(BaseModel):
    """A registered version found by its training key."""

    version: str
    run_id: str | None
    tags: dict[str, str]
    url: str | None
    #: The day it was registered (UTC), when its gate ran.
    registered_on: str = "?"


@task(name="log-params", **MLFLOW_RETRY)
def log_params(run_id: str, params: Mapping[str, object]) -> None:
    """Log the run's configuration as MLflow params."""
    runs.log_params(tracking_store.client(), run_id, params)


@task(name="log-dataset", **MLFLOW_RETRY)
def log_dataset(run_id: str, ref: DatasetRef) -> None:
    """Record the train and test splits as MLflow dataset inputs."""
    runs.log_datasets(tracking_store.client(), run_id, ref)


@task(name="log-results", **MLFLOW_RETRY)
def log_results(
    run_id: str, evaluation: EvaluationSummary, data_plots: list[str], test_digest: str
) -> None:
    """Log test metrics, the per-class table, every test image's answer (the
    gate's paired test reads it back), every plot and the reference profile."""
    client = tracking_store.client()
    runs.log_evaluation(
        client,
        run_id,
        evaluation.metrics,
        evaluation.per_class,
        evaluation.confusion,
        (
            PREDICTIONS_ARTIFACT,
            predictions_record(test_digest, evaluation.labels, evaluation.predicted),
        ),
    )
    runs.log_files(client, run_id, map(Path, data_plots), "plots/data")
    runs.log_files(client, run_id, map(Path, evaluation.plots), "plots/evaluation")
    if evaluation.reference_profile:  # reference/profile.json: drift's baseline
        profile = Path(evaluation.reference_profile)
        runs.log_files(client, run_id, [profile], profile.parent.name)


@task(name="find-training", **MLFLOW_RETRY)
def find_training(
    model_name: str, key: str, tag: str = TRAINING_KEY_TAG
) -> ExistingVersion | None:
    """The registered version that already holds this training (or sweep), if any."""
    client = tracking_store.client()
    version = registry.first_tagged(client, model_name, tag, key)
    if version is None:
        return None
    return ExistingVersion(
        version=str(version.version),
        run_id=version.run_id,
        tags=dict(version.tags),
        url=registry.version_url(client, model_name, str(version.version)),
        registered_on=_day(version.creation_timestamp),
    )


def _day(milliseconds: int | None) -> str:
    if milliseconds is None:
        return "?"
    return datetime.fromtimestamp(milliseconds / 1000, UTC).strftime("%Y-%m-%d")


@task(name="register", **MLFLOW_RETRY | {"timeout_seconds": REGISTER_TIMEOUT})
def register_model(
    run_id: str,
    trained: TrainedModel,
    ref: DatasetRef,
    model_name: str,
    scores: Scores,
    tags: Mapping[str, str],
) -> str:
    """Log the model with its signature; register it as a new @challenger version.

    ``tags`` (lineage, the training key) go on the version beside the dataset's
    digests and the test scores.
    """
    example = open_dataset(ref).x_test[:1].reshape(-1, 28, 28)
    version_tags = registry.candidate_tags(ref, scores, tags)
    _, version = packaging.log_model(
        run_id, Path(trained.path), model_name, example, version_tags
    )
    registry.set_challenger(tracking_store.client(), model_name, version)
    get_run_logger().info(
        "Registered %s version %s as @challenger", model_name, version
    )
    return version
