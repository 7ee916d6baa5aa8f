"""``mnist-pipeline serve-model`` answers real HTTP requests with the champion.

One server (the documented command, two workers) serves the whole module.
How it follows ``@champion`` when the alias moves: test_serving_follows.py.
"""

from __future__ import annotations

import io
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline import packaging, tracking_store
from mnist_pipeline.serving import as_model_input

from .servers import background, clean_environment, free_port, responds, wait_for


def post(url: str, payload: dict | bytes) -> tuple[int, dict]:
    status, body, _ = post_named(url, payload)
    return status, body


def post_named(url: str, payload: dict | bytes, kind: str = "application/json"):
    """Status, JSON body and ``X-Model-Version`` header of one POST."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data, {"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            version = response.headers["X-Model-Version"]
            return response.status, json.load(response), version
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), error.headers["X-Model-Version"]


@pytest.fixture(scope="module")
def served(trained_registry, tmp_path_factory):
    """The served champion's ``/invocations`` URL, the server's log and pid."""
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
        yield f"{url}/invocations", log, process.pid


@pytest.fixture(scope="module")
def in_process(trained_registry):
    """The version the server serves, loaded in this process from the same store."""
    tracking_store.connect(trained_registry.uri)  # earlier tests point MLflow elsewhere
    return packaging.load_pyfunc("models:/mnist-cnn/1")


def test_the_alias_is_resolved_followed_and_the_bounds_announced(served):
    _, log, _ = served
    text = log.read_text()
    assert (
        "Serving models:/mnist-cnn/1 (models:/mnist-cnn@champion, followed: checked "
        "every 5 s) at http://127.0.0.1:" in text
    )
    assert "at most 1,000 image(s) and 8,192,000 bytes per request" in text
    assert "Status: /model-status." in text
    assert "WARNING: listening on" not in text  # loopback: nothing to warn of


def test_every_answer_names_its_version_and_the_status_says_what_serves(served):
    url, _, _ = served
    image = np.zeros((1, 28, 28), int).tolist()
    assert post_named(url, {"inputs": image})[::2] == (200, "1")
    assert post_named(url, {"inputs": [[[0.5] * 28] * 28]})[::2] == (400, "1")
    assert post_named(url, b"x" * 9_000_000)[::2] == (413, "1")
    picture = url.replace("/invocations", "/predict-image")
    assert post_named(picture, b"no picture", "image/png")[::2] == (400, "1")
    with urllib.request.urlopen(url.replace("/invocations", "/model-status")) as got:
        status = json.load(got)
    assert status["served_version"] == "1" and status["alias_version"] == "1"
    assert status["alias"] == "champion" and status["watch_interval_s"] == 5.0
    assert status["loaded_at"].endswith("Z") and status["last_failure"] is None


@pytest.mark.parametrize("count", [1, 1000])
def test_served_predictions_equal_the_in_process_model(
    served, in_process, trained_registry, count
):
    url, _, _ = served
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
    url, _, _ = served
    image = trained_registry.sample.x_test[:1]
    status, body = post(url, {"inputs": image[:, :, :27].tolist()})
    assert status == 400
    assert "does not match expected shape (-1, 28, 28)" in body["message"]
    status, body = post(url, {"inputs": (image / 255.0).tolist()})
    assert status == 400
    assert "multiplied by 255" in body["message"]


def test_requests_over_the_limits_are_refused_naming_them(served):
    url, _, _ = served
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


@pytest.fixture(scope="module")
def strokes():
    """A few of the UCI digits as strokes (making all 1,797 takes seconds)."""
    from mnist_pipeline import photoset

    strokes, labels = photoset.uci_strokes()
    return strokes[:5], labels[:5]


def test_a_png_photo_gets_the_served_champions_digit(
    served, in_process, tmp_path, strokes
):
    from PIL import Image

    from mnist_pipeline import photoset
    from mnist_pipeline.photos import normalise_photo

    url = served[0].replace("/invocations", "/predict-image")
    strokes, labels = strokes
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


def worker_pids(server_pid: int) -> list[int]:
    """The uvicorn worker processes: children of the server started by spawn."""
    children = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        children += (task / "children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def rss_mb(pid: int) -> float:
    """A process's resident memory now, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_huge_picture_is_refused_from_its_header_without_the_memory(served):
    """A 208 KB PNG of 7000x7000 RGBA pixels took 2 GB and 4.4 s to decode."""
    from PIL import Image

    url, _, pid = served
    encoded = io.BytesIO()
    Image.new("RGBA", (7000, 7000), (255, 255, 255, 0)).save(encoded, format="PNG")
    body = encoded.getvalue()
    assert len(body) < 300_000
    workers = worker_pids(pid)
    assert len(workers) == 2
    before = {worker: rss_mb(worker) for worker in workers}
    started = time.perf_counter()
    status, answer = post_picture(url.replace("/invocations", "/predict-image"), body)
    assert time.perf_counter() - started < 2.0
    assert status == 413
    assert (
        "7000x7000 pixels; this server decodes at most 12,000,000"
        in (answer["message"])
    )
    for worker in workers:
        assert rss_mb(worker) - before[worker] < 200


def test_a_large_photo_within_the_cap_gets_the_right_digit(served, strokes, tmp_path):
    from PIL import Image, ImageOps

    from mnist_pipeline import photoset

    url = served[0].replace("/invocations", "/predict-image")
    strokes, labels = strokes
    records = photoset.write_photo_set(tmp_path, strokes, labels, seed=4)
    right = next(
        record  # the champion reads most photos (0.83 on a photo set)
        for record in records
        if post_picture(url, (tmp_path / record.file).read_bytes())[1].get(
            "predicted_class"
        )
        == record.label
    )
    with Image.open(tmp_path / right.file) as opened:
        small = ImageOps.exif_transpose(opened)  # saved below without its EXIF
        scale = int((8_000_000 / (small.width * small.height)) ** 0.5)
        big = small.resize((small.width * scale, small.height * scale))
    encoded = io.BytesIO()
    big.save(encoded, format="PNG")
    assert 5_000_000 < big.width * big.height <= 12_000_000
    status, body = post_picture(url, encoded.getvalue())
    assert status == 200 and body["predicted_class"] == right.label
