"""Task: publish the run's summary and per-class table in Prefect's UI."""

from __future__ import annotations

from collections.abc import Mapping

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mnist_pipeline.report import existing_markdown, per_class_rows, summary_markdown

SUMMARY_KEY = "mnist-training-summary"


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(*, per_class: list[dict[str, float]], **summary: object) -> None:
    """Markdown summary (metrics, dataset, model version, MLflow run) and a table.

    ``summary`` holds :func:`~mnist_pipeline.report.summary_markdown`'s arguments.
    """
    create_markdown_artifact(
        summary_markdown(**summary),
        key=SUMMARY_KEY,
        description="Headline metrics of this training run",
    )
    create_table_artifact(
        per_class_rows(per_class),
        key="per-class-metrics",
        description="Precision, recall and F1 per class on the test split",
    )


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_existing(tags: Mapping[str, str], **summary: object) -> None:
    """The summary of a run whose training a registered version already holds."""
    create_markdown_artifact(
        existing_markdown(tags=tags, **summary),
        key=SUMMARY_KEY,
        description="Nothing trained: a registered version holds this training",
    )
