"""A sweep in MLflow: its trials' runs under the sweep's run, the trials table,
and what became of the best trial.

Moved here from :mod:`mnist_pipeline.runs`, which keeps what every run shares.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from mnist_pipeline import runs
from mnist_pipeline.redact import redact_text
from mnist_pipeline.sweep import TRIAL_TAG


def child_runs(
    client: MlflowClient, experiment_id: str, parent_run_id: str
) -> dict[int, Run]:
    """The trial runs under ``parent_run_id``, by trial index."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
        max_results=10000,
    )
    return {
        int(run.data.tags[TRIAL_TAG]): run
        for run in found
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
    runs.log_metrics(client, run_id, metrics)


def log_sweep_outcome(
    client: MlflowClient,
    run_id: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
) -> None:
    """Tags and metrics saying what became of a sweep's best trial."""
    client.log_batch(run_id, tags=[RunTag(k, redact_text(v)) for k, v in tags.items()])
    runs.log_metrics(client, run_id, metrics)
