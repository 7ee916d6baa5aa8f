"""A version registered through a tracking server, as the README's servers run it."""

from __future__ import annotations

import json

from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from mnist_pipeline import packaging, runs, tracking_store

from .servers import mlflow_server


def test_the_logged_model_lists_its_version_once(trained_registry, tmp_path):
    # Through a server, MLflow's handler and its client each added the version.
    with mlflow_server(tmp_path) as uri:
        client = tracking_store.connect(uri)
        experiment = client.create_experiment("served")
        with runs.tracked_run(client, experiment, "register", {}) as run_id:
            _, version = packaging.log_model(
                run_id,
                trained_registry.root / "model.keras",
                "mnist-cnn",
                trained_registry.sample.x_test[:1],
                {},
            )
        source = client.get_model_version("mnist-cnn", version).source
        logged = client.get_logged_model(source.removeprefix("models:/"))
    listed = json.loads(logged.tags[MLFLOW_MODEL_VERSIONS])
    assert [(v["name"], str(v["version"])) for v in listed] == [("mnist-cnn", version)]
