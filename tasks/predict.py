"""Tasks of batch inference: stream the images through the model, record the run."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from mnist_pipeline import packaging, runs, tracking_store
from mnist_pipeline.predict import BatchSummary, open_input, predict_to_csv
from mnist_pipeline.serving import as_model_input
from tasks.track import MLFLOW_RETRY

#: Progress goes to the log and the Prefect artifact at most this often (s).
PROGRESS_EVERY_S = 10.0


class _Progress:
    """Reports a batch's progress: a log line and a Prefect progress artifact."""

    def __init__(self, total: int, source: str) -> None:
        self.total, self.source = total, source
        self.logger = get_run_logger()
        self.artifact = create_progress_artifact(
            0.0, key="batch-predict", description=f"Images of {source} predicted"
        )
        self.reported = time.monotonic()

    def __call__(self, done: int, summary: BatchSummary) -> None:
        now = time.monotonic()
        if done < self.total and now - self.reported < PROGRESS_EVERY_S:
            return
        self.reported = now
        update_progress_artifact(self.artifact, 100.0 * done / self.total)
        self.logger.info(
            "%d/%d of %s (%.0f%%): %.0f images/s, %d unreadable",
            done,
            self.total,
            self.source,
            100.0 * done / self.total,
            summary.images_per_second,
            summary.failed,
        )


@task(name="predict", cache_policy=NO_CACHE)
def predict_images(
    model_uri: str, input_path: str, output_path: str, chunk_size: int
) -> dict:
    """Read the inputs a chunk at a time, predict each with the model, write the CSV.

    Returns:
        The run's metrics, and ``errors``: the list of unreadable files, if any.
    """
    source = open_input(Path(input_path))
    model = packaging.load_pyfunc(model_uri)
    logger = get_run_logger()
    logger.info(
        "Predicting %d image(s) of %s with %s", source.count, input_path, model_uri
    )
    summary = predict_to_csv(
        source,
        lambda images: model.predict(as_model_input(images)),
        Path(output_path),
        chunk_size,
        on_progress=_Progress(source.count, input_path),
    )
    logger.info(
        "Predicted %d image(s) from %s into %s in %.1f s (%.0f images/s)",
        summary.images,
        input_path,
        output_path,
        summary.seconds,
        summary.images_per_second,
    )
    if summary.failed:
        logger.warning(
            "%d file(s) of %s could not be read and were skipped; listed in %s",
            summary.failed,
            input_path,
            summary.errors_path,
        )
    errors = str(summary.errors_path) if summary.errors_path else None
    return summary.metrics() | {"errors": errors}


@task(name="log-predictions", **MLFLOW_RETRY)
def log_predictions(run_id: str, summary: dict, output_path: str) -> None:
    """Log the prediction counts, the CSV and the list of unreadable files."""
    client = tracking_store.client()
    metrics = {k: v for k, v in summary.items() if k != "errors"}
    runs.log_metrics(client, run_id, metrics)
    files = [Path(output_path)] + (
        [Path(summary["errors"])] if summary["errors"] else []
    )
    runs.log_files(client, run_id, files, "predictions")
