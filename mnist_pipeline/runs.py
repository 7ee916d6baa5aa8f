"""MLflow runs: their lifecycle, and what is logged in them.

Everything goes through :class:`~mlflow.MlflowClient` with explicit run ids, so
it is correct from any thread (MLflow's fluent "active run" is thread-local).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import (
    DatasetInput,
    InputTag,
    Metric,
    Param,
    RunStatus,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from mnist_pipeline import tracking_store
from mnist_pipeline.data import DatasetRef
from mnist_pipeline.redact import redact_text, redact_url

log = logging.getLogger(__name__)
#: Opens MLflow's UI in its "Model training" mode (its default is "GenAI",
#: whose pages hide runs' metrics and the model registry).
UI_MODE = "workflowType=machine_learning"
#: Keras's names for the training metrics, and theirs in MLflow.
METRIC_NAMES = {"loss": "train_loss", "accuracy": "train_accuracy"}


@contextmanager
def tracked_run(
    client: MlflowClient, experiment_id: str, run_name: str | None, tags: Mapping
) -> Iterator[str]:
    """Open an MLflow run; close it FINISHED, or FAILED with the reason as a tag."""
    with recorded_run(client, experiment_id, run_name, tags) as run:
        yield run.open()


class LazyRun:
    """An MLflow run created only when :meth:`open` is first called."""

    def __init__(
        self, client: MlflowClient, experiment_id: str, name: str | None, tags: Mapping
    ) -> None:
        self._client, self._experiment_id = client, experiment_id
        self._name, self._tags = name, dict(tags)
        self.run_id: str | None = None

    def open(self) -> str:
        """The run's id, creating the run on the first call."""
        if self.run_id is None:
            run = self._client.create_run(
                self._experiment_id, run_name=self._name, tags=self._tags
            )
            self.run_id = run.info.run_id
        return self.run_id


@contextmanager
def recorded_run(
    client: MlflowClient, experiment_id: str, run_name: str | None, tags: Mapping
) -> Iterator[LazyRun]:
    """A run that exists once opened, or once the block fails.

    A block that ends without opening it leaves nothing in MLflow (a run that
    found its work done); one that fails always leaves a FAILED run with the
    reason. Interrupts and cancellations (Ctrl+C, SIGTERM as Prefect's
    TerminationSignal) are BaseExceptions: the run was stopped (KILLED).
    """
    run = LazyRun(client, experiment_id, run_name, tags)
    try:
        yield run
    except BaseException as exc:
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        reason = redact_text(f"{type(exc).__name__}: {exc}")[:4000]
        try:
            run_id = run.open()
            client.set_tag(run_id, "failure_reason", reason)
            client.set_terminated(
                run_id, RunStatus.to_string(getattr(RunStatus, status))
            )
        except MlflowException as unrecorded:  # the store may be what failed
            log.warning("Could not record the failure in MLflow: %s", unrecorded)
        raise
    if run.run_id is not None:
        client.set_terminated(run.run_id, "FINISHED")


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, object]) -> None:
    """Log every parameter in one call, credentials in URLs masked."""
    client.log_batch(
        run_id, params=[Param(k, redact_url(str(v))) for k, v in params.items()]
    )


def log_metrics(
    client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0
) -> None:
    """Log a batch of metrics at one step."""
    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
    )


def record_resume(
    client: MlflowClient,
    run_id: str,
    previous_epochs: list[dict[str, float]],
    interrupted_run: str | None,
) -> None:
    """Say in the run that training resumed; carry over the earlier epochs.

    The interrupted run (killed, so still RUNNING) is closed as KILLED.
    """
    for entry in previous_epochs:
        metrics = {METRIC_NAMES.get(k, k): v for k, v in entry.items() if k != "epoch"}
        log_metrics(client, run_id, metrics, step=int(entry["epoch"]))
    client.set_tag(run_id, "training.resumed_from_epoch", str(len(previous_epochs)))
    if not interrupted_run or interrupted_run == run_id:
        return
    client.set_tag(run_id, "training.resumed_from_run", interrupted_run)
    try:
        interrupted = client.get_run(interrupted_run)
    except MlflowException:
        return  # another store, or deleted
    if interrupted.info.status == "RUNNING":
        client.set_tag(
            interrupted_run, "failure_reason", f"interrupted; resumed by run {run_id}"
        )
        client.set_terminated(interrupted_run, "KILLED")


def log_datasets(client: MlflowClient, run_id: str, ref: DatasetRef) -> None:
    """Record the train and test splits as MLflow dataset inputs."""
    source_type = "http" if ref.source.startswith("http") else "local"
    inputs = []
    for split in ("train", "test"):
        schema = {
            "images": {
                "shape": ref.shapes[f"x_{split}"],
                "dtype": ref.dtypes[f"x_{split}"],
            },
            "labels": {
                "shape": ref.shapes[f"y_{split}"],
                "dtype": ref.dtypes[f"y_{split}"],
            },
        }
        entity = DatasetEntity(
            name=f"{ref.name}-{split}",
            digest=ref.split_digests[split],
            source_type=source_type,
            source=json.dumps({"uri": ref.source}),
            schema=json.dumps({"mlflow_tensorspec": schema}),
            profile=json.dumps({"num_rows": ref.shapes[f"y_{split}"][0]}),
        )
        context = InputTag(
            "mlflow.data.context", "training" if split == "train" else "testing"
        )
        inputs.append(DatasetInput(entity, tags=[context]))
    # A dataset row is shared by every run of the experiment that read the same
    # data; MLflow looks it up and then inserts it, so two runs logging a new one
    # at once (overlapping nights) can both insert it. The loser's write is
    # rolled back whole and refused with a unique-key violation; again, it finds
    # the winner's row and links its run to it.
    tracking_store.write_past_concurrent_inserts(
        lambda: client.log_inputs(run_id, datasets=inputs)
    )


def log_prediction_input(
    client: MlflowClient, run_id: str, path: Path, images: int
) -> None:
    """Record a prediction run's input as an MLflow dataset input.

    Its digest covers the input's bytes (every file of a folder, with its name).
    """
    entity = DatasetEntity(
        name=path.name or str(path),
        digest=input_digest(path),
        source_type="local",
        source=json.dumps({"uri": str(path.resolve())}),
        profile=json.dumps({"num_rows": images}),
    )
    context = InputTag("mlflow.data.context", "prediction")
    tracking_store.write_past_concurrent_inserts(
        lambda: client.log_inputs(
            run_id, datasets=[DatasetInput(entity, tags=[context])]
        )
    )


def input_digest(path: Path) -> str:
    """16 hex digits of SHA-256 over a file's bytes, or a folder's files and names."""
    sha = hashlib.sha256()
    files = (
        sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    )
    for file in files:
        sha.update(
            f"{file.relative_to(path) if path.is_dir() else file.name};".encode()
        )
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()[:16]


def describe_run(
    client: MlflowClient, run_id: str, note: str, tags: Mapping[str, str]
) -> None:
    """Set the run's description (the first thing its page shows) and tags."""
    items = {MLFLOW_RUN_NOTE: note, **tags}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in items.items()])


def log_files(
    client: MlflowClient, run_id: str, paths: Iterable[Path], folder: str
) -> None:
    """Upload files (plots, reports) under an artifact folder."""
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=folder)


def log_evaluation(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float],
    per_class: list[dict[str, float]],
    confusion: list[list[int]],
    predictions: tuple[str, Mapping[str, object]] | None = None,
) -> None:
    """Test metrics, the per-class table, the confusion matrix and, given as
    ``(artifact path, record)``, the answer for every test image."""
    log_metrics(client, run_id, metrics)
    client.log_table(run_id, pd.DataFrame(per_class), "evaluation/per_class.json")
    client.log_dict(
        run_id, {"confusion_matrix": confusion}, "evaluation/confusion.json"
    )
    if predictions is not None:
        path, record = predictions
        client.log_dict(run_id, dict(record), path)


def artifact_text(client: MlflowClient, run_id: str, path: str) -> str | None:
    """A text artifact of a run; None when the run has none at ``path``.

    The folder is listed first, so only absence means None: any other error
    (the store unreachable) is raised.
    """
    folder = path.rpartition("/")[0] or None
    if path not in {a.path for a in client.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def load_json_artifact(
    client: MlflowClient, run_id: str, path: str
) -> dict[str, object] | None:
    """A JSON artifact of a run; None when the run has none at ``path``."""
    text = artifact_text(client, run_id, path)
    return None if text is None else json.loads(text)


def run_url(client: MlflowClient, experiment_id: str, run_id: str) -> str | None:
    """Link to the run in the MLflow UI when tracking goes to a server."""
    uri = client.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return None
    base = redact_url(uri.rstrip("/"))
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_MODE}"


@contextmanager
def nested_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    run_name: str,
    tags: Mapping[str, str],
) -> Iterator[str]:
    """A child of ``parent_run_id`` (MLflow's nested runs), closed like tracked_run."""
    tags = {**tags, MLFLOW_PARENT_RUN_ID: parent_run_id}
    with tracked_run(client, experiment_id, run_name, tags) as run_id:
        yield run_id
