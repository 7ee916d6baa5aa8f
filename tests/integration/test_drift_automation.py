"""A drifting batch, scored by a trained model, fires the shipped automation.

On a real Prefect server (the session's): the automation from
deployments/drift-automation.yaml, its webhook pointing at a recorder on
127.0.0.1; the event sent by tasks/drift.emit_drift_event.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from deployments.drift_automation import create_drift_automation
from mnist_pipeline import drift
from tasks.drift import emit_drift_event

from .servers import free_port


class _Recorder(BaseHTTPRequestHandler):
    calls: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append({"path": self.path, "body": body.decode()})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server on 127.0.0.1 recording every POST; stopped afterwards."""
    calls: list[dict] = []
    handler = type("Recorder", (_Recorder,), {"calls": calls})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/drift", calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def scored(trained_registry):
    """The session's trained model's outputs on the sample's test images."""
    import keras

    model = keras.models.load_model(trained_registry.root / "model.keras")
    sample = trained_registry.sample

    def probabilities(images: np.ndarray) -> np.ndarray:
        return model.predict(images[..., None].astype("float32") / 255, verbose=0)

    reference = drift.reference_profile(sample.x_test, probabilities(sample.x_test))
    return sample, reference, probabilities


def wait_for(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    return check()


def test_model_outputs_drift_on_inverted_images_but_not_on_the_samples_own(scored):
    sample, reference, probabilities = scored
    own = sample.x_train[:500]
    calm = drift.compare(drift.batch_profile(own, probabilities(own)), reference)
    assert calm.drift_detected is False, calm.drifting
    inverted = 255 - sample.x_test[:300]
    report = drift.compare(
        drift.batch_profile(inverted, probabilities(inverted)), reference
    )
    assert {"mean_intensity", "border_intensity", "pixel_histogram"} <= set(
        report.drifting
    )
    assert {"confidence", "predicted_class"} & set(report.drifting)
    assert emit_drift_event(calm, "mnist-cnn", "1") is None  # calm: no event


def test_a_drifting_batch_emits_the_event_and_the_automation_calls_the_webhook(
    prefect_api_url, scored, webhook
):
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    url, calls = webhook
    sample, reference, probabilities = scored
    automation_id = create_drift_automation(url, allow_private_urls=True)
    assert create_drift_automation(url, allow_private_urls=True) != automation_id
    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name("mnist-drift-alert")
        assert automation.trigger.expect == {"mnist.drift.detected"}

    blank = np.zeros((40, 28, 28), np.uint8)
    report = drift.compare(drift.batch_profile(blank, probabilities(blank)), reference)
    # The server loads a new automation into its triggers service a moment
    # after creating it: an event sent before then is stored but triggers
    # nothing, so a batch with no answer yet is reported again.
    sent = []
    for _ in range(3):
        event = emit_drift_event(report, "mnist-cnn", "1")
        assert event is not None and event.resource.id == "mnist.model.mnist-cnn.1"
        sent.append(str(event.id))
        EventsWorker.drain_all(timeout=30)
        if wait_for(lambda: calls, timeout=15):
            break

    def stored() -> list:
        with get_client(sync_client=True) as client:
            response = client.request(
                "POST",
                "/events/filter",
                json={"filter": {"event": {"name": ["mnist.drift.detected"]}}},
            )
        return [e for e in response.json()["events"] if e["id"] in sent]

    arrived = wait_for(lambda: len(stored()) == len(sent) and stored())
    assert [e["payload"]["drifting_features"] for e in arrived] == [
        report.drifting
    ] * len(sent)

    assert calls, "the automation never called the webhook"
    call = calls[0]
    message = json.loads(call["body"])
    assert call["path"] == "/drift"
    assert (message["model_name"], message["model_version"]) == ("mnist-cnn", "1")
    assert message["drifting_features"] == report.drifting
    assert message["images"] == 40 and message["event_id"] in sent
    assert message["text"].startswith("Input drift on mnist-cnn v1: ")
