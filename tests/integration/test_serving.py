"""``mlflow models serve`` answers real HTTP requests with the registered champion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .servers import free_port


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _pings(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def served_champion(trained_registry, tmp_path):
    """``mlflow models serve -m models:/mnist-cnn@champion`` on a free loopback port."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = inherited | {
        "MLFLOW_TRACKING_URI": trained_registry.uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    log = (tmp_path / "serve.log").open("w")
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m"]
    command += ["models:/mnist-cnn@champion", "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Wait until *our* process says it listens (another server could have
        # taken the port after free_port() released it), then until it answers.
        listening = f"Uvicorn running on {url}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            text = (tmp_path / "serve.log").read_text()
            assert process.poll() is None, text
            if listening in text and _pings(url):
                break
            time.sleep(1)
        else:
            pytest.fail("model server did not answer /ping within 180 s")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()


def test_served_model_returns_probabilities(trained_registry, served_champion):
    sample = trained_registry.sample
    images = sample.x_test[:20]
    status, body = post(f"{served_champion}/invocations", {"inputs": images.tolist()})
    assert status == 200, body
    predictions = body["predictions"]
    assert len(predictions) == 20 and all(len(row) == 10 for row in predictions)
    assert all(abs(sum(row) - 1) < 1e-4 for row in predictions)
    predicted = [max(range(10), key=row.__getitem__) for row in predictions]
    correct = sum(p == y for p, y in zip(predicted, sample.y_test[:20], strict=True))
    assert correct >= 16  # a real trained model, not noise


def test_wrong_shape_and_scaled_pixels_are_refused(trained_registry, served_champion):
    image = trained_registry.sample.x_test[:1]
    status, body = post(
        f"{served_champion}/invocations", {"inputs": image[:, :, :27].tolist()}
    )
    assert status == 400
    assert "does not match expected shape (-1, 28, 28)" in body["message"]
    scaled = (image / 255.0).tolist()
    status, body = post(f"{served_champion}/invocations", {"inputs": scaled})
    assert status == 400
    assert "multiplied by 255" in body["message"]
