"""The training flow end to end on a small subset, against real Prefect and MLflow."""

from __future__ import annotations

import asyncio
import time

import keras
import mlflow
import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort

from flows.training import mnist_training
from mnist_pipeline import tracking_store
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import load_sample
from mnist_pipeline.drift import Profile, reference_profile_json
from mnist_pipeline.errors import DataValidationError
from mnist_pipeline.serving import as_model_input

STAGES = {"load", "validate", "plot", "preprocess", "train", "evaluate", "register"}
PLOTS = {
    "plots/data/samples_per_class.png",
    "plots/data/class_distribution.png",
    "plots/data/pixel_histogram.png",
    "plots/evaluation/confusion_matrix.png",
    "plots/evaluation/misclassified.png",
    "plots/evaluation/training_curves.png",
    "plots/evaluation/feature_maps_conv1.png",
    "plots/evaluation/feature_maps_conv2.png",
}


#: A trained version's tags: what people filter on and what the gate reads back.
VERSION_TAGS = {
    "training_key",
    "code_version",
    "prefect.flow_run_id",
    "dataset",
    "dataset_digest",
    "test_digest",
    "test_accuracy",
    "test_correct",
    "test_min_class_recall",
    "gate.decision",
    "gate.reason",
    "gate.compared_with",
}


def _latest_flow_run() -> str:
    async def read() -> str:
        async with get_client() as client:
            (latest,) = await client.read_flow_runs(
                sort=FlowRunSort.START_TIME_DESC, limit=1
            )
        return str(latest.id)

    return asyncio.run(read())


def small_config(tmp_path, **overrides) -> TrainConfig:
    values = {
        "data": "sample",
        "epochs": 1,
        "train_limit": 400,
        "test_limit": 200,
        "workdir": str(tmp_path / "outputs"),
        "experiment": "integration",
    }
    return TrainConfig(**(values | overrides))


async def _flow_run_details(flow_run_id: str):
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        artifacts = await client.read_artifacts()
    return flow_run, task_runs, artifacts


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    paths = set()
    for item in client.list_artifacts(run_id, path):
        paths |= (
            artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
        )
    return paths


def test_flow_trains_tracks_and_registers(prefect_api_url, mlflow_store, tmp_path):
    result = mnist_training(small_config(tmp_path))

    client = tracking_store.connect()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "1"
    assert run.data.params["batch_size"] == "400"
    assert run.data.params["min_accuracy"] == "0.94"  # the floor the gate applied
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.test_accuracy)
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(result.run_id, name)] == [1]
    datasets = {i.dataset.name for i in run.inputs.dataset_inputs}
    assert datasets == {
        "mnist-sample-subset400+200-train",
        "mnist-sample-subset400+200-test",
    }
    artifacts = artifact_paths(client, result.run_id)
    assert PLOTS <= artifacts
    assert {"evaluation/per_class.json", "evaluation/confusion.json"} <= artifacts

    assert (result.model_name, result.version) == ("mnist-cnn", "1")
    version = client.get_model_version("mnist-cnn", "1")
    assert version.run_id == result.run_id
    # Found from the version: the reference profile its batches are compared
    # with (JSON, the test split's 200 images and the model's outputs on them).
    profile = Profile.model_validate_json(
        reference_profile_json(client, "mnist-cnn", "1")
    )
    assert profile.images == 200 and len(profile.features["confidence"]) == 200
    served = mlflow.pyfunc.load_model("models:/mnist-cnn/1")
    sample = load_sample()
    probabilities = served.predict(as_model_input(sample.x_test[:50]))
    assert probabilities.shape == (50, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    saved = keras.saving.load_model(
        next((tmp_path / "outputs" / "models").glob("*/*.keras"))
    )
    expected = saved.predict(sample.x_test[:50, ..., None] / 255.0, verbose=0)
    assert (probabilities.argmax(1) == expected.argmax(1)).all()

    flow_run_id = run.data.tags["prefect.flow_run_id"]
    flow_run, task_runs, artifacts = asyncio.run(_flow_run_details(flow_run_id))
    assert flow_run.state.is_completed()
    assert run.data.tags["prefect.flow_run_name"] == flow_run.name
    names = {t.name.rsplit("-", 1)[0] for t in task_runs}
    assert STAGES <= names
    assert all(t.state.is_completed() for t in task_runs)
    ours = [a for a in artifacts if a.flow_run_id == flow_run.id]
    summary = next(a for a in ours if a.key == "mnist-training-summary")
    assert result.run_id in summary.data
    assert "version **1**" in summary.data
    progress = next(a for a in ours if a.type == "progress")
    assert progress.data == 100.0
    assert any(a.key == "per-class-metrics" for a in ours)
    # Each digest named for what it covers; the MLflow inputs carry the splits'.
    splits = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    train_digest = splits["mnist-sample-subset400+200-train"]
    test_digest = splits["mnist-sample-subset400+200-test"]
    assert f"(train split `{train_digest}`, test split `{test_digest}`)" in summary.data
    assert version.tags["test_digest"] == test_digest
    # Only the tags people filter on (and the gate reads back); the rest is in
    # the description or on the source run.
    # (champion.* tags belong to the alias moves: registry.move_champion.)
    assert {t for t in version.tags if not t.startswith("champion.")} == VERSION_TAGS
    # Curves first: per-class and gate figures are tables and JSON, not one-bar charts.
    assert set(run.data.metrics) == {
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "test_loss",
        "test_accuracy",
        "test_min_class_recall",
    }

    _the_same_training_again_trains_nothing(tmp_path, result, version)


def _the_same_training_again_trains_nothing(tmp_path, result, version) -> None:
    """Nothing trained, and every page says whose verdict it reports (v1's)."""
    again = mnist_training(small_config(tmp_path))
    assert again.skipped and again.version == "1"
    day = time.strftime("%Y-%m-%d", time.gmtime(version.creation_timestamp / 1000))
    held = f"v1's gate (run {result.run_id[:8]}, {day}): {result.verdict}"
    assert again.verdict == f"nothing trained; v1 holds this training; {held}"
    skipped_run, _, artifacts = asyncio.run(_flow_run_details(_latest_flow_run()))
    assert str(skipped_run.id) != version.tags["prefect.flow_run_id"]
    assert skipped_run.state.is_completed()
    assert skipped_run.state.message == again.verdict
    page = next(
        a.data
        for a in artifacts
        if a.flow_run_id == skipped_run.id and a.key == "mnist-training-summary"
    )
    assert f"| Promotion gate | {held} |" in page


def test_invalid_data_stops_before_training(prefect_api_url, mlflow_store, tmp_path):
    sample = load_sample()
    bad = tmp_path / "bad.npz"
    labels = sample.y_train.astype(np.int64)
    labels[labels == 3] = 11
    np.savez(
        bad,
        x_train=sample.x_train,
        y_train=labels,
        x_test=sample.x_test.astype(np.float32),
        y_test=sample.y_test,
    )
    with pytest.raises(DataValidationError) as info:
        mnist_training(small_config(tmp_path, data=str(bad), train_limit=None))
    message = str(info.value)
    assert "train: labels within 0..9" in message
    assert "train: every class present: class 3" in message
    assert "test: images of dtype uint8: dtype float32" in message

    client = tracking_store.connect()
    experiment = client.get_experiment_by_name("integration")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert "DataValidationError" in run.data.tags["failure_reason"]
    assert client.search_registered_models() == []
    assert not (tmp_path / "outputs" / "models").exists()


def test_an_augmented_run_trains_augmented_and_registers_a_plain_model(
    prefect_api_url, mlflow_store, tmp_path
):
    plain = mnist_training(small_config(tmp_path, min_accuracy=0.0))
    augmented = mnist_training(small_config(tmp_path, augment=True, min_accuracy=0.0))
    assert not augmented.skipped  # another training: another key
    assert augmented.training_key != plain.training_key
    client = tracking_store.connect()
    params = client.get_run(augmented.run_id).data.params
    assert params["augment"] == "True"
    # Different training curves: the augmented fit saw changed images.
    history = {
        r: [m.value for m in client.get_metric_history(r, "train_loss")]
        for r in (plain.run_id, augmented.run_id)
    }
    assert history[plain.run_id] != history[augmented.run_id]
    model = mlflow.pyfunc.load_model(f"models:/mnist-cnn/{augmented.version}")
    keras_model = model.unwrap_python_model().model
    assert [layer.name for layer in keras_model.layers][0] == "conv1"
