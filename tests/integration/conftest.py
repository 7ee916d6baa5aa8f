"""Integration fixtures: a real Prefect server for the session, a CLI runner."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.data import Dataset

from .servers import clean_environment

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_api_url() -> str:
    """A temporary Prefect server and database for the whole session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout=600):
    """Run ``mnist-pipeline`` as a user would, in its own process."""
    environment = clean_environment(**(env or {}))
    command = [sys.executable, "-m", "mnist_pipeline.cli", *args]
    return subprocess.run(
        command,
        check=False,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@dataclass(frozen=True)
class Registry:
    """A store holding ``mnist-cnn`` v1 (@champion), trained for real on the sample."""

    uri: str
    root: Path
    sample: Dataset
    accuracy: float


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory) -> Registry:
    """Train a small but real model once per session and register it."""
    from mnist_pipeline import drift, packaging, registry, runs, tracking_store
    from mnist_pipeline.data import load_sample, stratified_subset
    from mnist_pipeline.evaluate import evaluate_model
    from mnist_pipeline.preprocess import preprocess
    from mnist_pipeline.train import train_model

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sample = load_sample()
    prepared = preprocess(stratified_subset(sample, 2000, None, 0), 0.1, seed=0)
    model, _ = train_model(
        prepared, epochs=4, batch_size=100, learning_rate=0.002, seed=0
    )
    evaluation = evaluate_model(model, prepared.x_test, prepared.y_test)
    accuracy = evaluation.accuracy
    # The reference profile the evaluate task logs with every version.
    test_images = np.rint(prepared.x_test.reshape(-1, 28, 28) * 255).astype(np.uint8)
    profile = drift.reference_profile(test_images, evaluation.probabilities)
    model.save(root / "model.keras")
    client = tracking_store.connect(uri)
    experiment = client.create_experiment(
        "fixtures", artifact_location=(root / "mlruns").as_uri()
    )
    with runs.tracked_run(client, experiment, "fixture", {}) as run_id:
        packaging.log_model(
            run_id, root / "model.keras", "mnist-cnn", sample.x_test[:1], {}
        )
        client.log_text(run_id, profile.model_dump_json(), "reference/profile.json")
    registry.move_champion(client, "mnist-cnn", "1", by="test", reason="fixture")
    return Registry(uri=uri, root=root, sample=sample, accuracy=accuracy)
