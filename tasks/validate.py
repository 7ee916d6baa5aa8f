"""Task: validate the dataset before anything trains on it."""

from __future__ import annotations

from prefect import get_run_logger, task

from mnist_pipeline.data import DatasetRef, open_dataset
from mnist_pipeline.validate import ValidationReport, validate_dataset
from tasks.caching import StageCache, StageSerializer


@task(
    name="validate",
    result_serializer=StageSerializer(),
    cache_policy=StageCache(
        parts=lambda inputs: {
            "digest": inputs["ref"].digest,
            "min_class_share": inputs["min_class_share"],
        },
        code=("mnist_pipeline.validate",),
    ),
)
def validate_data(ref: DatasetRef, min_class_share: float) -> ValidationReport:
    """Run every schema check; fail the flow with all failures named."""
    report = validate_dataset(open_dataset(ref), min_class_share=min_class_share)
    get_run_logger().info(
        "Validated %s: %d train and %d test images pass every check",
        ref.name,
        report.counts["train"],
        report.counts["test"],
    )
    return report
