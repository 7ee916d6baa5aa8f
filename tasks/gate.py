"""Tasks: run the promotion gate on a registered candidate and act on it."""

from __future__ import annotations

import keras
import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from mnist_pipeline import gate, tracking
from mnist_pipeline.data import DatasetRef, open_dataset
from mnist_pipeline.evaluate import score_predictions
from mnist_pipeline.preprocess import scale_images
from mnist_pipeline.report import gate_markdown
from mnist_pipeline.serving import as_model_input
from tasks.train import TrainedModel


def _scores(probabilities: np.ndarray, labels: np.ndarray) -> gate.Scores:
    result = score_predictions(probabilities, labels)
    return gate.Scores(result.accuracy, min(r["recall"] for r in result.per_class))


@task(name="gate", cache_policy=NO_CACHE)
def gate_candidate(
    model_name: str,
    version: str,
    trained: TrainedModel,
    ref: DatasetRef,
    thresholds: gate.Thresholds,
    seed: int,
) -> tuple[gate.Decision, str | None]:
    """Score candidate and champion on this run's test split; decide.

    Returns:
        The decision and the champion version it was compared with (if any).
    """
    data = open_dataset(ref)
    images, labels = data.x_test.reshape(-1, 28, 28), data.y_test.astype(np.int64)
    model = keras.saving.load_model(trained.path)
    # One predict call over clean and perturbed copies (no per-call retracing).
    variants = gate.perturbations(images, seed)
    stacked = np.concatenate([images, *variants.values()])
    predicted = model.predict(scale_images(stacked), batch_size=1000, verbose=0)
    parts = np.split(predicted.argmax(1), len(variants) + 1)
    in_memory = parts[0]
    robust = {
        name: float((part == labels).mean())
        for name, part in zip(variants, parts[1:], strict=True)
    }
    served = tracking.load_pyfunc(f"models:/{model_name}/{version}").predict(
        as_model_input(images)
    )
    agreement = float((served.argmax(1) == in_memory).mean())
    champion_version = tracking.alias_version(
        tracking.client(), model_name, tracking.CHAMPION
    )
    champion = None
    if champion_version is not None:
        uri = f"models:/{model_name}/{champion_version}"
        champion_model = tracking.load_pyfunc(uri)
        champion = _scores(champion_model.predict(as_model_input(images)), labels)
    decision = gate.decide(
        _scores(served, labels), champion, robust, agreement, thresholds
    )
    get_run_logger().info(
        "Gate %s %s v%s: %s",
        "promotes" if decision.promote else "rejects",
        model_name,
        version,
        "; ".join(decision.reasons) or "every check passed",
    )
    return decision, champion_version


@task(name="promote", cache_policy=NO_CACHE)
def apply_decision(
    run_id: str,
    model_name: str,
    version: str,
    decision: gate.Decision,
    champion_version: str | None,
) -> bool:
    """Record the verdict; move ``@champion`` to the candidate when it passed."""
    client = tracking.client()
    tags = {
        "gate.decision": "promoted" if decision.promote else "rejected",
        "gate.reasons": "; ".join(decision.reasons) or "all checks passed",
        "gate.compared_with": f"v{champion_version}" if champion_version else "none",
    }
    for check in decision.checks:
        tags[f"gate.{check.name}"] = (
            f"{'pass' if check.passed else 'FAIL'}: {check.detail}"
        )
    tags |= {f"gate.figure.{k}": f"{v:.4f}" for k, v in decision.figures.items()}
    metrics = {f"gate_{name}": value for name, value in decision.figures.items()}
    tracking.record_gate(client, run_id, model_name, version, tags, metrics)
    if decision.promote:
        tracking.move_champion(
            client, model_name, version, by="gate", reason=f"run {run_id}"
        )
    create_markdown_artifact(
        gate_markdown(model_name, version, decision, champion_version),
        key="promotion-gate",
        description="Promotion gate decision",
    )
    return decision.promote
