"""Task: publish the run's summary and per-class table in Prefect's UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mnist_pipeline.report import per_class_rows, summary_markdown


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(
    *,
    metrics: dict[str, float],
    per_class: list[dict[str, float]],
    dataset: str,
    digest: str,
    model_name: str,
    version: str,
    run_id: str,
    run_url: str | None,
    gate: str,
) -> None:
    """Markdown summary (metrics, dataset, model version, MLflow run) and a table."""
    create_markdown_artifact(
        summary_markdown(
            metrics=metrics,
            dataset=dataset,
            digest=digest,
            model_name=model_name,
            version=version,
            run_id=run_id,
            run_url=run_url,
            gate=gate,
        ),
        key="mnist-training-summary",
        description="Headline metrics of this training run",
    )
    create_table_artifact(
        per_class_rows(per_class),
        key="per-class-metrics",
        description="Precision, recall and F1 per class on the test split",
    )
