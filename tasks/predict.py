"""Tasks of batch inference: stream the images through the model, record the run."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from mnist_pipeline import packaging, plots, runs, tracking_store
from mnist_pipeline.config import DriftConfig
from mnist_pipeline.drift import BatchMonitor, DriftReport, Profile
from mnist_pipeline.photos import Normalisation
from mnist_pipeline.predict import BatchSummary, open_input, predict_to_csv
from mnist_pipeline.redact import redact_url
from mnist_pipeline.report import prediction_note
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


class BatchOutcome(BaseModel):
    """What a batch prediction produced: metrics, the skipped files, its drift."""

    metrics: dict[str, float]
    errors: str | None = None
    drift: DriftReport | None = None
    drift_plot: str | None = None


@task(name="predict", cache_policy=NO_CACHE)
def predict_images(
    model_uri: str,
    input_path: str,
    output_path: str,
    chunk_size: int,
    preprocessing: Normalisation = "mnist",
    reference: Profile | None = None,
    thresholds: DriftConfig | None = None,
) -> BatchOutcome:
    """Read the inputs a chunk at a time, predict each with the model, write the CSV.

    With a ``reference`` profile the batch's profile is built chunk by chunk,
    each image flagged in the CSV, the batch compared with the reference and
    the overlay plot written beside the CSV (``<stem>.drift.png``).
    """
    source = open_input(Path(input_path), preprocessing)
    model = packaging.load_pyfunc(model_uri)
    monitor = BatchMonitor(reference, thresholds) if reference is not None else None
    logger = get_run_logger()
    logger.info(
        "Predicting %d image(s) of %s with %s",
        source.count,
        input_path,
        redact_url(model_uri),
    )
    summary = predict_to_csv(
        source,
        lambda images: model.predict(as_model_input(images)),
        Path(output_path),
        chunk_size,
        on_progress=_Progress(source.count, input_path),
        flag=monitor.add if monitor is not None else None,
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
            "%d file(s) of %s could not be read or show no single digit and were "
            "skipped; listed with the reasons in %s",
            summary.failed,
            input_path,
            summary.errors_path,
        )
    errors = str(summary.errors_path) if summary.errors_path else None
    if monitor is None:
        return BatchOutcome(metrics=summary.metrics(), errors=errors)
    report = monitor.report()
    plot = Path(output_path).with_name(f"{Path(output_path).stem}.drift.png")
    plots.save_figure(plots.plot_drift(monitor.profile(), reference, report), plot)
    return BatchOutcome(
        metrics=summary.metrics() | report.metrics(),
        errors=errors,
        drift=report,
        drift_plot=str(plot),
    )


@task(name="log-predictions", **MLFLOW_RETRY)
def log_predictions(
    run_id: str, outcome: BatchOutcome, output_path: str, input_path: str, model: str
) -> None:
    """Log the input as a dataset, the metrics (drift's too), the CSV, the skipped
    files and the drift plot; the verdict where the run's page opens."""
    client = tracking_store.client()
    images = int(outcome.metrics["images"] + outcome.metrics["failed_images"])
    runs.log_prediction_input(client, run_id, Path(input_path), images)
    runs.log_metrics(client, run_id, outcome.metrics)
    files = [Path(output_path)] + ([Path(outcome.errors)] if outcome.errors else [])
    runs.log_files(client, run_id, files, "predictions")
    if outcome.drift_plot:
        runs.log_files(client, run_id, [Path(outcome.drift_plot)], "drift")
    verdict, note = prediction_note(
        outcome.drift,
        images=int(outcome.metrics["images"]),
        failed=int(outcome.metrics["failed_images"]),
        source=Path(input_path).name,
        model=model,
        output=f"predictions/{Path(output_path).name}",
    )
    runs.describe_run(client, run_id, note, {"drift.verdict": verdict})
