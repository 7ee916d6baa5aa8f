"""Lineage of a flow run, as tags for its MLflow run and model version.

Both directions: the MLflow run and the model version name the Prefect flow run
(id, name, UI link, deployment) and the code (git commit, package version, lock
digest, code version); the Prefect summary links the MLflow run and version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)
from prefect.runtime import deployment, flow_run

from mnist_pipeline import lineage
from mnist_pipeline.prefect_server import shared_api_url


def flow_run_tags(entrypoint: str) -> dict[str, str]:
    """Tags naming this Prefect flow run, its deployment and the code it runs."""
    source = lineage.source()
    commit = source["git_commit"]
    tags = {
        MLFLOW_SOURCE_NAME: entrypoint,
        MLFLOW_SOURCE_TYPE: "JOB",
        MLFLOW_USER: lineage.current_user(),
        "prefect.flow_run_id": str(flow_run.get_id()),
        "prefect.flow_run_name": str(flow_run.get_name()),
        "prefect.flow_run_url": flow_run_url() or "temporary server (gone)",
        "prefect.deployment": deployment.get_name() or "none",
        "code.version": lineage.code_version(),
        "code.package_version": source["package_version"],
        "code.git_commit": commit or "not a git checkout",
        "code.lock_digest": source["lock_digest"] or "no requirements.lock",
    }
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit.removesuffix("+dirty")
    return tags


def version_tags(lineage: dict[str, str]) -> dict[str, str]:
    """The part of :func:`flow_run_tags` a model version keeps as tags.

    Only what people filter versions on: the code version (the training key's
    code part) and the Prefect flow run's id. The rest (git commit, package,
    lock digest, flow-run link, deployment) stays on the version's source run.
    """
    return {
        "code_version": lineage["code.version"],
        "prefect.flow_run_id": lineage["prefect.flow_run_id"],
    }


def flow_run_url() -> str | None:
    """This flow run in the Prefect UI, when the server outlives the run."""
    from prefect.utilities.urls import url_for

    if shared_api_url() is None:
        return None  # a temporary server: the link would die with the run
    return url_for("flow-run", obj_id=str(flow_run.get_id()))


def run_name(prefix: str, data: str, details: str) -> str:
    """A readable flow-run name: ``train-sample-10ep-seed0-20261202-021500``."""
    label = data if data in ("auto", "mnist", "sample") else Path(data).stem
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{label}-{details}-{stamp}"


def model_label(uri: str) -> str:
    """A model URI in a run name: ``champion`` (``models:/m@champion``), ``v3``
    (``models:/m/3``), else its last part (never a query: it may hold a token)."""
    ref = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if "@" in ref:
        return ref.split("@", 1)[1]
    return f"v{ref}" if ref.isdigit() else ref


def flow_run_label() -> str | None:
    """This Prefect flow run as the alias history names it: name, id, deployment."""
    run_id = flow_run.get_id()
    if run_id is None:
        return None
    label = f"{flow_run.get_name()} ({run_id})"
    name = deployment.get_name()
    return f"{label}, deployment {name}" if name else label


def operator_label(operator: str) -> str:
    """Who asked for an alias change: ``operator`` when given; for a deployment's
    run without one, that nobody was named (the worker's account is not the
    person who pressed Run); else empty (the history records user@host)."""
    if operator:
        return operator
    name = deployment.get_name()
    return f"not given (Prefect deployment {name})" if name else ""
