"""Tasks: report a batch's drift in Prefect's UI and tell automations about it."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import Event, emit_event

from mnist_pipeline import tracking_store
from mnist_pipeline.drift import (
    DriftReport,
    Profile,
    drift_event,
    reference_profile_json,
)
from mnist_pipeline.report import drift_markdown
from tasks.track import MLFLOW_RETRY


def emit_drift_event(
    report: DriftReport,
    model_name: str,
    model_version: str,
    *,
    related: list[dict[str, str]] | None = None,
) -> Event | None:
    """Send ``mnist.drift.detected`` for a drifting batch; nothing for a calm one.

    Args:
        report: the batch's :func:`~mnist_pipeline.drift.compare` report.
        model_name: the registered model whose reference it was compared with.
        model_version: that model's version (the event's resource names it).
        related: further resources, e.g. the prediction's MLflow run.

    Returns:
        The event sent (None when the batch did not drift, or when Prefect
        sends no events in this process).
    """
    if not report.drift_detected:
        return None
    fields = drift_event(report, model_name, model_version)
    return emit_event(
        event=str(fields["event"]),
        resource=dict(fields["resource"]),
        payload=dict(fields["payload"]),
        related=related,
    )


@task(name="report-drift", cache_policy=NO_CACHE)
def report_drift(report: DriftReport, model_name: str, model_version: str) -> bool:
    """The drift artifact, a warning and the event when the batch drifted."""
    create_markdown_artifact(
        drift_markdown(report, model_name, model_version),
        key="input-drift",
        description="This batch against the model version's reference profile",
    )
    if report.drift_detected:
        get_run_logger().warning(
            "Input drift against %s v%s in %s",
            model_name,
            model_version,
            ", ".join(report.drifting),
        )
        emit_drift_event(report, model_name, model_version)
    return report.drift_detected


@task(name="load-reference", **MLFLOW_RETRY)
def load_reference(model_name: str | None, model_version: str | None) -> Profile | None:
    """The version's reference profile; None (said in one line) when it has none."""
    if model_name is None or model_version is None:
        get_run_logger().info(
            "The model is not a registered version: predicting without drift figures"
        )
        return None
    text = reference_profile_json(tracking_store.client(), model_name, model_version)
    if text is None:
        get_run_logger().info(
            "%s v%s has no reference profile (registered before drift monitoring): "
            "predicting without drift figures",
            model_name,
            model_version,
        )
        return None
    return Profile.model_validate_json(text)
