"""Task: score the model on the test split and draw what it learned."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from mnist_pipeline import plots
from mnist_pipeline.drift import reference_profile
from mnist_pipeline.evaluate import evaluate_model, feature_maps
from mnist_pipeline.gate import Scores
from mnist_pipeline.preprocess import PreparedData
from tasks.train import TrainedModel

FEATURE_IMAGE = 0  # which test image the feature-map plots show
#: The version's reference profile, under the run's artifacts (and the workdir).
REFERENCE_PROFILE = "reference/profile.json"
#: The test figures logged as MLflow metrics. The per-class ones go in the
#: per-class table only: thirty one-bar charts hid the training curves.
TEST_METRICS = ("test_loss", "test_accuracy", "test_min_class_recall")


class EvaluationSummary(BaseModel):
    """Test metrics, the per-class table and the evaluation plots."""

    metrics: dict[str, float]
    per_class: list[dict[str, float]]
    confusion: list[list[int]]
    plots: list[str]
    reference_profile: str | None = None
    #: The test labels and the model's predicted class, image by image.
    labels: list[int] = []
    predicted: list[int] = []

    def scores(self) -> Scores:
        """What the promotion gate compares: correct test images, worst recall,
        and which images were right (for the paired test)."""
        correct = sum(row[i] for i, row in enumerate(self.confusion))
        total = sum(map(sum, self.confusion))
        right = np.equal(self.predicted, self.labels) if self.predicted else None
        return Scores(correct, total, self.metrics["test_min_class_recall"], right)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(trained: TrainedModel, prepared_path: str) -> EvaluationSummary:
    """Evaluate on the test split; write plots and the version's reference profile."""
    model = keras.saving.load_model(trained.path)
    data = PreparedData.load(Path(prepared_path))
    result = evaluate_model(model, data.x_test, data.y_test)
    image = data.x_test[FEATURE_IMAGE]
    label = int(data.y_test[FEATURE_IMAGE].argmax())
    figures = {
        "confusion_matrix.png": plots.plot_confusion_matrix(result.confusion),
        "misclassified.png": plots.plot_misclassified(
            data.x_test, result.y_true, result.y_pred, result.confidence
        ),
        "training_curves.png": plots.plot_training_curves(trained.history),
    }
    for layer, maps in feature_maps(model, image).items():
        title = (
            f"{layer}: {maps.shape[-1]} feature maps of test image "
            f"#{FEATURE_IMAGE} (label {label})"
        )
        figures[f"feature_maps_{layer}.png"] = plots.plot_feature_maps(
            image, maps, title
        )
    folder = Path(trained.path).parent / "plots"
    paths = [
        str(plots.save_figure(fig, folder / name)) for name, fig in figures.items()
    ]
    # What batches will be compared with: the test split as the model sees it
    # (uint8 pixels back from the 0..1 scaling) and its outputs on it.
    images = np.rint(data.x_test.reshape(-1, 28, 28) * 255.0).astype(np.uint8)
    profile = Path(trained.path).parent / REFERENCE_PROFILE
    profile.parent.mkdir(parents=True, exist_ok=True)
    profile.write_text(
        reference_profile(images, result.probabilities).model_dump_json()
    )
    get_run_logger().info("Test accuracy %.4f, loss %.4f", result.accuracy, result.loss)
    return EvaluationSummary(
        metrics={k: v for k, v in result.metrics().items() if k in TEST_METRICS},
        per_class=result.per_class,
        confusion=result.confusion.tolist(),
        plots=paths,
        reference_profile=str(profile),
        labels=result.y_true.tolist(),
        predicted=result.y_pred.tolist(),
    )
