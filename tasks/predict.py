"""Tasks of batch inference: read the images, predict, record the run."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mnist_pipeline import tracking
from mnist_pipeline.predict import load_inputs, write_predictions
from mnist_pipeline.serving import as_model_input
from tasks.track import MLFLOW_RETRY


@task(name="predict", cache_policy=NO_CACHE)
def predict_images(model_uri: str, input_path: str, output_path: str) -> dict:
    """Read the inputs, predict with the model and write the CSV."""
    inputs = load_inputs(Path(input_path))
    model = tracking.load_pyfunc(model_uri)
    probabilities = model.predict(as_model_input(inputs.images))
    write_predictions(Path(output_path), inputs, probabilities)
    counts = probabilities.argmax(axis=1)
    summary = {
        "images": len(inputs.ids),
        "mean_confidence": float(probabilities.max(axis=1).mean()),
        **{f"predicted_class_{c}": int((counts == c).sum()) for c in range(10)},
    }
    get_run_logger().info(
        "Predicted %d image(s) from %s into %s",
        len(inputs.ids),
        input_path,
        output_path,
    )
    return summary


@task(name="log-predictions", **MLFLOW_RETRY)
def log_predictions(run_id: str, summary: dict, output_path: str) -> None:
    """Log the prediction counts and the CSV to the MLflow run."""
    client = tracking.client()
    tracking.log_metrics(client, run_id, summary)
    tracking.log_files(client, run_id, [Path(output_path)], "predictions")
