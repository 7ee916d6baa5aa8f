"""Everything MLflow: runs, params, metric histories, datasets, plots, the model.

All logging goes through :class:`~mlflow.MlflowClient` with explicit run ids, so
it is correct from any thread (MLflow's fluent "active run" is thread-local).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import (
    DatasetInput,
    InputTag,
    Metric,
    Param,
    Run,
    RunStatus,
    RunTag,
)
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from mnist_pipeline import registry
from mnist_pipeline.data import DatasetRef
from mnist_pipeline.errors import RegistryError, TrackingUnavailableError
from mnist_pipeline.files import database_lock, sqlite_file
from mnist_pipeline.redact import redact_text, redact_url
from mnist_pipeline.serving import as_model_input

log = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_ARTIFACT = "model"
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 28, 28))]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
)


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store in the working folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect(uri: str | None = None) -> MlflowClient:
    """Point MLflow at ``uri`` (default: :func:`tracking_uri`) and return a client.

    Raises:
        TrackingUnavailableError: a tracking server does not answer (retried).
    """
    uri = uri or tracking_uri()
    check_reachable(uri)
    _initialise_sqlite(uri)
    mlflow.set_tracking_uri(uri)
    # The registry follows the tracking URI unless MLFLOW_REGISTRY_URI says
    # otherwise; mlflow.set_registry_uri would export that variable to every
    # later subprocess, so it is not called.
    return MlflowClient(tracking_uri=uri)


def _initialise_sqlite(uri: str) -> None:
    """Create or migrate a SQLite store one process at a time.

    MLflow creates its tables on first use; two runs starting together on a new
    ``mlflow.db`` would both migrate it ("duplicate column name"). A lock file
    beside the database serialises that first use.
    """
    database = sqlite_file(uri)
    if database is None:
        return
    with database_lock(database):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def check_reachable(
    uri: str, attempts: int = 4, timeout: float = 5.0, backoff: float = 1.0
) -> None:
    """Fail fast, after a few retries with backoff, when a server is down.

    Only http(s) URIs are checked; any HTTP answer (even 401) means reachable.
    """
    if not uri.startswith(("http://", "https://")):
        return
    # Without the user:password@ part: urllib would take it for the host. Any
    # answer, a 401 included, says the server is there.
    parts = urlsplit(uri.rstrip("/"))
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    url, error = f"{urlunsplit(bare)}/health", ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            error = str(getattr(exc, "reason", exc))
    waited = sum(backoff * 2**i for i in range(attempts - 1))
    raise TrackingUnavailableError(
        f"The MLflow tracking server at {redact_url(uri)} is unreachable ({error}) "
        f"after {attempts} attempts over {waited:.0f} s. Start it, or unset "
        "MLFLOW_TRACKING_URI to track into ./mlflow.db."
    )


def client() -> MlflowClient:
    """A client for the tracking URI :func:`connect` set."""
    return MlflowClient()


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, creating it (race-safely) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created by a concurrent run in the meantime
        return client.get_experiment_by_name(name).experiment_id


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


class EpochMetrics(keras.callbacks.Callback):
    """Logs train/validation loss and accuracy as MLflow metric histories."""

    _NAMES = {"loss": "train_loss", "accuracy": "train_accuracy"}

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        super().__init__()
        self._client = client
        self._run_id = run_id

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {self._NAMES.get(k, k): v for k, v in (logs or {}).items()}
        log_metrics(self._client, self._run_id, metrics, step=epoch + 1)


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
        metrics = {
            EpochMetrics._NAMES.get(k, k): v for k, v in entry.items() if k != "epoch"
        }
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
    client.log_inputs(run_id, datasets=inputs)


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
) -> None:
    """Test metrics, the per-class table and the confusion matrix."""
    log_metrics(client, run_id, metrics)
    client.log_table(run_id, pd.DataFrame(per_class), "evaluation/per_class.json")
    client.log_dict(
        run_id, {"confusion_matrix": confusion}, "evaluation/confusion.json"
    )


def pip_requirements() -> list[str]:
    """Pinned requirements of the served model (skips MLflow's slow inference)."""
    tensorflow = next(
        (d for d in ("tensorflow-cpu", "tensorflow") if _installed(d)), "tensorflow"
    )
    names = [tensorflow, "keras", "numpy", "mlflow"]
    return [f"{n}=={metadata.version(n)}" if _installed(n) else n for n in names]


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def log_model(
    run_id: str,
    keras_path: Path,
    model_name: str,
    input_example: np.ndarray,
    tags: Mapping[str, str],
) -> tuple[str, str]:
    """Log the model as a pyfunc and register a new version of ``model_name``.

    Idempotent per run: when a version of ``model_name`` from ``run_id`` exists
    already (a retry after the server committed but its answer was lost), that
    version is tagged and returned instead of registering a duplicate.

    Returns:
        The logged model's URI and the registered version.
    """
    from mnist_pipeline import serving_model

    client = MlflowClient()
    earlier = registered_version(client, model_name, run_id)
    if earlier is not None:
        registry.set_version_tags(client, model_name, earlier.version, tags)
        return earlier.source, str(earlier.version)
    with tempfile.TemporaryDirectory() as scratch:
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=MODEL_ARTIFACT,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=serving_model.__file__,
            artifacts={"keras_model": str(keras_path)},
            code_paths=[str(serving_code(Path(scratch)))],
            signature=SIGNATURE,
            input_example=as_model_input(input_example),
            pip_requirements=pip_requirements(),
            registered_model_name=model_name,
            tags=dict(tags),
        )
    version = str(info.registered_model_version)
    registry.set_version_tags(client, model_name, version, tags)
    return info.model_uri, version


#: The modules of this package the served model imports (``serving_model.py``
#: and what it needs); only these travel with each version.
SERVED_MODULES = ("__init__", "serving")


def serving_code(folder: Path) -> Path:
    """A copy of the package holding only :data:`SERVED_MODULES`, under ``folder``."""
    import mnist_pipeline

    source = Path(mnist_pipeline.__file__).parent
    package = folder / source.name
    package.mkdir(parents=True)
    for name in SERVED_MODULES:
        shutil.copy2(source / f"{name}.py", package / f"{name}.py")
    return package


def download_keras_model(model_name: str, version: str) -> Path:
    """Download a registered version and return its Keras file."""
    folder = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_name}/{version}"
        )
    )
    (path,) = folder.glob("artifacts/*.keras")
    return path


def registered_version(
    client: MlflowClient, model_name: str, run_id: str
) -> ModelVersion | None:
    """The version of ``model_name`` registered from ``run_id``, if any."""
    # run ids are hex; filtering names in Python spares quoting them.
    found = client.search_model_versions(f"run_id = '{run_id}'")
    mine = [v for v in found if v.name == model_name]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def run_url(client: MlflowClient, experiment_id: str, run_id: str) -> str | None:
    """Link to the run in the MLflow UI when tracking goes to a server."""
    uri = client.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return None
    base = redact_url(uri.rstrip("/"))
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def reference_profile_json(
    client: MlflowClient, model_name: str, version: str
) -> str | None:
    """The reference profile (JSON) logged with a version's run; None without one.

    Versions registered before drift monitoring have none: the run's
    ``reference/`` folder is listed first, so only absence means None.
    """
    run_id = client.get_model_version(model_name, version).run_id
    logged = {a.path for a in client.list_artifacts(run_id, "reference")}
    if "reference/profile.json" not in logged:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, "reference/profile.json", folder)
        return Path(path).read_text()


def load_pyfunc(uri: str):
    """Load a logged or registered model through MLflow's generic pyfunc API."""
    return mlflow.pyfunc.load_model(uri)


def record_gate(
    client: MlflowClient,
    run_id: str,
    name: str,
    version: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    record: Mapping[str, object] | None = None,
    description: str | None = None,
) -> None:
    """The gate's verdict as tags on the run and the version; figures as metrics.

    ``record`` (every check and figure) becomes ``gate/decision.json`` on the
    run; ``description`` the version's one-sentence description.
    """
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    registry.set_version_tags(client, name, version, tags)
    log_metrics(client, run_id, metrics)
    if record is not None:
        client.log_dict(run_id, dict(record), "gate/decision.json")
    if description is not None:
        client.update_model_version(name, version, description=description)


def resolve_model_uri(client: MlflowClient, uri: str) -> tuple[str | None, str | None]:
    """A registry model URI as (name, version); (None, None) outside the registry.

    ``models:/name/version``, ``models:/name@alias`` and ``models:/name/latest``
    are resolved to the version they name now.

    Raises:
        RegistryError: the URI names a registered model that lacks the version
            or alias, or has no version at all (``latest``).
    """
    if not uri.startswith("models:/"):
        return None, None
    ref = uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        try:
            version = registry.alias_version(client, name, alias)
        except MlflowException as exc:
            if not registry.is_not_found(exc):
                raise
            raise RegistryError(f"No registered model '{name}' ({uri}).") from exc
        if version is None:
            raise RegistryError(f"Model '{name}' has no alias @{alias} ({uri}).")
        return name, version
    name, _, version = ref.partition("/")
    if version.isdigit():
        registry.check_version(client, name, version)
        return name, version
    if version.lower() == "latest":  # case-insensitive, as MLflow reads it
        return name, latest_version(client, name, uri)
    return None, None


def latest_version(client: MlflowClient, name: str, uri: str) -> str:
    """The highest version of ``name``: what MLflow loads for ``models:/name/latest``.

    Raises:
        RegistryError: ``name`` has no version.
    """
    quote = '"' if "'" in name else "'"
    found = client.search_model_versions(
        f"name = {quote}{name}{quote}", max_results=1, order_by=["version_number DESC"]
    )
    if not found:
        raise RegistryError(f"Model '{name}' has no registered version ({uri}).")
    return str(found[0].version)


def portable_uri(uri: str) -> str:
    """``uri`` usable from another working folder: a relative SQLite path made absolute.

    Sweep trials track from Dask worker processes, which need not share the
    flow's working folder.
    """
    prefix = "sqlite:///"
    path = uri.removeprefix(prefix)
    if not uri.startswith(prefix) or path.startswith("/") or path == ":memory:":
        return uri
    return prefix + str(Path(path).resolve())


#: Tag of a sweep trial's run: its index in the grid.
TRIAL_TAG = "sweep.trial"


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


def child_runs(
    client: MlflowClient, experiment_id: str, parent_run_id: str
) -> dict[int, Run]:
    """The trial runs under ``parent_run_id``, by trial index."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
        max_results=10000,
    )
    return {
        int(run.data.tags[TRIAL_TAG]): run
        for run in runs
        if run.data.tags.get(TRIAL_TAG, "").isdigit()
    }


def fail_child_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    run_name: str,
    tags: Mapping[str, str],
    reason: str,
) -> Run:
    """Leave a failed trial's run FAILED with its reason; create it if it is missing.

    A trial whose worker died never closed (or never opened) its own run.
    """
    index = int(tags[TRIAL_TAG])
    run = child_runs(client, experiment_id, parent_run_id).get(index)
    if run is None:
        tags = {**tags, MLFLOW_PARENT_RUN_ID: parent_run_id}
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    if run.info.status in ("RUNNING", "SCHEDULED"):
        client.set_tag(run.info.run_id, "failure_reason", redact_text(reason)[:4000])
        client.set_terminated(run.info.run_id, "FAILED")
    return client.get_run(run.info.run_id)


def log_sweep(
    client: MlflowClient,
    run_id: str,
    rows: list[dict[str, object]],
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
) -> None:
    """The trials table (``sweep/trials.json``), and the sweep's tags and metrics."""
    client.log_table(run_id, pd.DataFrame(rows), "sweep/trials.json")
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    log_metrics(client, run_id, metrics)


def log_sweep_outcome(
    client: MlflowClient,
    run_id: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
) -> None:
    """Tags and metrics saying what became of a sweep's best trial."""
    client.log_batch(run_id, tags=[RunTag(k, redact_text(v)) for k, v in tags.items()])
    log_metrics(client, run_id, metrics)
