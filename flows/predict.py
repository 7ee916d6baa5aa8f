"""Batch inference flow: a registered model over a folder or file of images."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel

from mnist_pipeline import registry, runs, tracking_store
from mnist_pipeline.config import PredictConfig
from mnist_pipeline.redact import redact_url
from mnist_pipeline.runtime import configure_flow_logs
from tasks.drift import load_reference, report_drift
from tasks.lineage import model_label, run_name
from tasks.predict import log_predictions, predict_images
from tasks.track import log_params


class PredictionResult(BaseModel):
    """What a batch-inference run produced."""

    run_id: str
    model_uri: str
    model_version: str | None
    images: int
    failed: int
    output: str
    errors: str | None
    drift_detected: bool | None = None


def _run_name() -> str:
    """``predict-<input>-<model>-<time>``: the input's name, the version or alias."""
    config = PredictConfig.model_validate(flow_run.get_parameters()["config"])
    return run_name("predict", config.input, model_label(config.model_uri))


@flow(name="mnist-predict", flow_run_name=_run_name, log_prints=True)
def mnist_predict(config: PredictConfig) -> PredictionResult:
    """Predict every image of ``config.input`` with ``config.model_uri`` into a CSV.

    An alias is resolved once: the version recorded is the version that predicts,
    and its reference profile (when it has one) is what the batch is compared with.
    """
    configure_flow_logs()
    client = tracking_store.connect()
    experiment_id = tracking_store.ensure_experiment(client, config.experiment)
    model_name, version = registry.resolve_model_uri(client, config.model_uri)
    # The version just resolved and recorded is the one loaded, not the alias
    # again: a promotion in between must not change which model predicts.
    pinned = f"models:/{model_name}/{version}" if version else config.model_uri
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id()),
        "prefect.flow_run_name": str(flow_run.get_name()),
        "model_uri": redact_url(config.model_uri),
        "model_version": f"{model_name}/{version}" if version else "unregistered",
        "model_uri_loaded": redact_url(pinned),
    }
    with runs.tracked_run(client, experiment_id, flow_run.get_name(), tags) as run_id:
        log_params(run_id, config.model_dump() | {"model_version": version})
        reference = load_reference(model_name, version)
        outcome = predict_images(
            pinned,
            config.input,
            config.output,
            config.chunk_size,
            config.preprocessing,
            reference,
            config.drift,
        )
        model = f"{model_name} v{version}" if version else redact_url(config.model_uri)
        log_predictions(run_id, outcome, config.output, config.input, model)
        if outcome.drift is not None:
            report_drift(outcome.drift, model_name, version)
    drift = outcome.drift
    return PredictionResult(
        run_id=run_id,
        model_uri=redact_url(config.model_uri),
        model_version=version,
        images=int(outcome.metrics["images"]),
        failed=int(outcome.metrics["failed_images"]),
        output=config.output,
        errors=outcome.errors,
        drift_detected=drift.drift_detected if drift is not None else None,
    )
