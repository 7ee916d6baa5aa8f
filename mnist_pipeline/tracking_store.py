"""The MLflow tracking store: which one, whether it answers, a client, experiments.

:func:`connect` is where a flow points MLflow at its store; everything else
takes the :class:`~mlflow.MlflowClient` it returns.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, ErrorCode

from mnist_pipeline.errors import ExperimentDeletedError, TrackingUnavailableError
from mnist_pipeline.files import database_lock, sqlite_file
from mnist_pipeline.redact import redact_url

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_BAD_REQUEST = ErrorCode.Name(BAD_REQUEST)


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
    """The id of experiment ``name``, creating it (race-safely) when missing.

    Raises:
        ExperimentDeletedError: ``name`` is a deleted experiment's: MLflow
            neither records runs in it nor creates another of that name.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        number = experiment.experiment_id
        raise ExperimentDeletedError(
            f"The MLflow experiment {name!r} (id {number}) was deleted, and MLflow "
            "records no runs in a deleted experiment nor creates another of its "
            "name. Restore it with `mlflow experiments restore --experiment-id "
            f"{number}` (MLFLOW_TRACKING_URI set to this store), or choose another "
            "name with --experiment."
        )
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created by a concurrent run in the meantime
        return client.get_experiment_by_name(name).experiment_id


def is_concurrent_insert(exc: MlflowException) -> bool:
    """Whether MLflow's SQL store refused a write because a concurrent one inserted
    the same key first (a unique-key violation; nothing of the refused write stays).

    SQLite's and PostgreSQL's wording, as the store passes it on, directly or over
    REST: MLflow checks for an existing row and then inserts, so two runs writing
    the same new row at once (an alias, a dataset) can meet here.
    """
    # The store answers any SQLAlchemy error as BAD_REQUEST; the words say which.
    return exc.error_code == _BAD_REQUEST and any(
        words in exc.message
        for words in (
            "UNIQUE constraint failed",
            "duplicate key value",
            "UniqueViolation",
        )
    )


def write_past_concurrent_inserts(
    write: Callable[[], object], attempts: int = 3, pause: float = 0.1
) -> None:
    """Call ``write`` again while a concurrent insert refuses it (at most
    ``attempts`` calls); ``write`` re-reads what it needs on every call.

    Raises:
        MlflowException: any other refusal at once, or the last one.
    """
    for attempt in range(attempts):
        try:
            write()
            return
        except MlflowException as exc:
            if attempt == attempts - 1 or not is_concurrent_insert(exc):
                raise
        time.sleep(pause * (attempt + 1))


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
