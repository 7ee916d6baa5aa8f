"""``mnist-pipeline serve-model`` answers real HTTP requests with the champion.

One server (the documented command, two workers) serves the whole module.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from mnist_pipeline import packaging, tracking_store
from mnist_pipeline.serving import as_model_input

from .servers import background, clean_environment, free_port, responds, wait_for


def post(url: str, payload: dict | bytes) -> tuple[int, dict]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture(scope="module")
def served(trained_registry, tmp_path_factory):
    """The served champion's ``/invocations`` URL, and the server's log."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "serve.log"
    command = [sys.executable, "-m", "mnist_pipeline.cli", "serve-model"]
    command += ["--port", str(port)]
    env = clean_environment(MLFLOW_TRACKING_URI=trained_registry.uri)
    with background(command, cwd=folder, env=env, log=log) as process:
        # Our process must say it listens (another one could have taken the
        # port after free_port() let it go), then answer.
        wait_for(
            lambda: (
                f"Uvicorn running on {url}" in log.read_text()
                and responds(f"{url}/ping")
            ),
            timeout=180,
            what="model server",
            process=process,
            log=log,
        )
        yield f"{url}/invocations", log


@pytest.fixture(scope="module")
def in_process(trained_registry):
    """The version the server serves, loaded in this process from the same store."""
    tracking_store.connect(trained_registry.uri)  # earlier tests point MLflow elsewhere
    return packaging.load_pyfunc("models:/mnist-cnn/1")


def test_the_alias_is_resolved_once_and_the_bounds_announced(served):
    _, log = served
    assert (
        "Serving models:/mnist-cnn/1 (models:/mnist-cnn@champion) at "
        in log.read_text()
    )
    assert "at most 1,000 image(s) and 8,192,000 bytes per request" in log.read_text()


@pytest.mark.parametrize("count", [1, 1000])
def test_served_predictions_equal_the_in_process_model(
    served, in_process, trained_registry, count
):
    url, _ = served
    images = np.resize(trained_registry.sample.x_test, (count, 28, 28))
    status, body = post(url, {"inputs": images.tolist()})
    assert status == 200, body
    served_probabilities = np.array(body["predictions"], dtype=np.float32)
    expected = in_process.predict(as_model_input(images))
    # Same model, same batch, same TensorFlow settings: the same bits.
    np.testing.assert_array_equal(served_probabilities, expected)
    labels = np.resize(trained_registry.sample.y_test, count)
    assert (served_probabilities.argmax(1) == labels).mean() >= 0.8  # trained


def test_wrong_shape_and_scaled_pixels_are_refused(served, trained_registry):
    url, _ = served
    image = trained_registry.sample.x_test[:1]
    status, body = post(url, {"inputs": image[:, :, :27].tolist()})
    assert status == 400
    assert "does not match expected shape (-1, 28, 28)" in body["message"]
    status, body = post(url, {"inputs": (image / 255.0).tolist()})
    assert status == 400
    assert "multiplied by 255" in body["message"]


def test_requests_over_the_limits_are_refused_naming_them(served):
    url, _ = served
    status, body = post(url, {"inputs": np.zeros((1001, 28, 28), int).tolist()})
    assert status == 400
    assert "holds 1,001 images; this server accepts at most 1,000" in body["message"]
    assert "mnist-pipeline predict" in body["message"]

    too_large = json.dumps({"inputs": np.zeros((2800, 28, 28)).tolist()}).encode()
    assert len(too_large) > 8_192_000
    status, body = post(url, too_large)
    assert status == 413
    assert f"({len(too_large):,} bytes) exceeds this server's limit" in body["message"]
    assert "mnist-pipeline predict" in body["message"]
    status, _ = post(url, {"inputs": np.zeros((1, 28, 28), int).tolist()})
    assert status == 200  # and the server goes on answering


def post_picture(url: str, data: bytes, kind: str = "image/png") -> tuple[int, dict]:
    request = urllib.request.Request(url, data, {"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_a_png_photo_gets_the_served_champions_digit(served, in_process, tmp_path):
    from PIL import Image

    from mnist_pipeline import photoset
    from mnist_pipeline.photos import normalise_photo

    url = served[0].replace("/invocations", "/predict-image")
    strokes, labels = photoset.uci_strokes()
    (record,) = photoset.write_photo_set(tmp_path, strokes[:1], labels[:1], seed=4)
    photo = tmp_path / record.file
    assert photo.suffix == ".png"  # style "paper": dark ink on tinted paper
    status, body = post_picture(url, photo.read_bytes())
    assert status == 200, body
    with Image.open(photo) as image:
        expected = in_process.predict(as_model_input(normalise_photo(image)[None]))[0]
    np.testing.assert_allclose(body["probabilities"], expected, atol=1e-6)
    assert body["predicted_class"] == int(expected.argmax())

    blank = tmp_path / "blank.png"
    Image.new("RGB", (90, 120), (240, 236, 228)).save(blank)
    status, body = post_picture(url, blank.read_bytes())
    assert status == 422 and body["reason"] == "no ink"
