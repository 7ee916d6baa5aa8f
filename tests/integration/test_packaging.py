"""The registered model as MLflow keeps it: its experiment, its bound, its code.

Served the MLflow way (``mlflow models serve``, ``build-docker``, MLServer), a
version is bounded by what it carries; batch work loads it unbounded.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from mnist_pipeline import packaging, tracking_store
from mnist_pipeline.config import ServeConfig
from mnist_pipeline.serving import MAX_IMAGES_VARIABLE

from .servers import BIN, background, clean_environment, free_port, responds, wait_for

#: The bound each version logs: ServeConfig's default, read from the one place.
LIMIT = ServeConfig.model_fields["max_images_per_request"].default


def post(url: str, images: np.ndarray) -> tuple[int, dict]:
    data = json.dumps({"inputs": images.tolist()}).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_logged_model_is_filed_under_its_runs_experiment(trained_registry):
    client = tracking_store.connect(trained_registry.uri)
    version = client.get_model_version("mnist-cnn", "1")
    experiment_id = client.get_run(version.run_id).info.experiment_id
    assert experiment_id != "0"  # "fixtures", not MLflow's "Default"
    model_id = version.source.removeprefix("models:/")  # the version's source model
    logged = client.get_logged_model(model_id)
    assert logged.experiment_id == experiment_id
    assert logged.source_run_id == version.run_id
    found = client.search_logged_models(experiment_ids=[experiment_id])
    assert model_id in [model.model_id for model in found]
    assert not client.search_logged_models(experiment_ids=["0"])


def test_mlflow_models_serve_refuses_more_images_than_the_version_allows(
    trained_registry, tmp_path
):
    """The documented MLflow way, with no help from ``serve-model``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    command = [BIN / "mlflow", "models", "serve", "-m", "models:/mnist-cnn/1"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    env = clean_environment(MLFLOW_TRACKING_URI=trained_registry.uri)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # it runs `uvicorn`
    env.pop(MAX_IMAGES_VARIABLE, None)
    with background(command, cwd=tmp_path, env=env, log=log) as process:
        wait_for(
            lambda: responds(f"{url}/ping"),
            timeout=180,
            what="mlflow models serve",
            process=process,
            log=log,
        )
        started = time.monotonic()
        status, body = post(f"{url}/invocations", np.zeros((LIMIT + 1, 28, 28), int))
        refused_in = time.monotonic() - started
        assert status == 400, body
        assert (
            f"holds {LIMIT + 1:,} images; this server accepts at most {LIMIT:,} per "
            "request (max_images_per_request)" in body["message"]
        )
        print(f"mlflow models serve refused {LIMIT + 1} images in {refused_in:.2f} s")
        assert refused_in < 10, f"refused after {refused_in:.1f} s"
        images = trained_registry.sample.x_test[:2]
        status, body = post(f"{url}/invocations", images)
        assert status == 200, body
        assert np.array(body["predictions"]).shape == (2, 10)


def test_the_version_carries_its_bound_and_batch_work_loads_it_unbounded(
    trained_registry, monkeypatch
):
    tracking_store.connect(trained_registry.uri)
    monkeypatch.delenv(MAX_IMAGES_VARIABLE, raising=False)
    monkeypatch.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", raising=False)
    uri = "models:/mnist-cnn/1"
    info = mlflow.models.get_model_info(uri)
    assert info.flavors["python_function"]["config"] == {
        "max_images_per_request": LIMIT
    }
    images = np.zeros((LIMIT + 1, 28, 28), np.float32)

    def bound(model) -> int | None:
        """The largest call ``model`` accepts (checked at the edges)."""
        try:
            model.predict(images)
        except MlflowException as refused:
            limit = int(
                refused.message.split("at most ")[1].split()[0].replace(",", "")
            )
            model.predict(images[:limit])  # accepted
            with pytest.raises(MlflowException, match="max_images_per_request"):
                model.predict(images[: limit + 1])
            return limit
        return None

    assert bound(mlflow.pyfunc.load_model(uri)) == LIMIT  # as MLflow serves it
    paths = len(sys.path)
    assert bound(packaging.load_pyfunc(uri)) is None  # batch predict
    assert len(sys.path) == paths  # MLflow's code/ folder is not left behind
    assert (
        bound(mlflow.pyfunc.load_model(uri, model_config={"max_images_per_request": 5}))
        == 5
    )
    # MLflow's own serving-time override, and serve-model's variable above it.
    monkeypatch.setenv(
        "MLFLOW_PYFUNC_INFERENCE_CONFIG", json.dumps({"max_images_per_request": 4})
    )
    assert bound(mlflow.pyfunc.load_model(uri)) == 4
    monkeypatch.setenv(MAX_IMAGES_VARIABLE, "3")
    assert bound(mlflow.pyfunc.load_model(uri)) == 3
