"""The shipped drift automation file is a valid Prefect automation for the event."""

from __future__ import annotations

from uuid import uuid4

from prefect.events.actions import CallWebhook
from prefect.events.schemas.events import Event, Resource
from typer.testing import CliRunner

from deployments.drift_automation import AUTOMATION_FILE, automation_spec
from mnist_pipeline import drift
from mnist_pipeline.cli import app
from mnist_pipeline.config import DriftConfig


def test_the_automation_reacts_to_drift_events_of_any_model_version():
    block = uuid4()
    spec = automation_spec(block)
    assert AUTOMATION_FILE.name == "drift-automation.yaml"
    assert spec.name == "mnist-drift-alert" and spec.enabled
    (action,) = spec.actions
    assert isinstance(action, CallWebhook) and action.block_document_id == block
    trigger = spec.trigger
    assert trigger.expect == {"mnist.drift.detected"}
    assert trigger.posture == "Reactive" and trigger.threshold == 1
    report = drift.DriftReport(
        images=4,
        drift_detected=True,
        drifting=["ink_share"],
        features=[],
        ood_images=4,
        out_of_distribution=[True] * 4,
        ood_reasons=[["ink_share"]] * 4,
        thresholds=DriftConfig(),
    )
    fields = drift.drift_event(report, "mnist-cnn", "12")
    event = Event(
        event=fields["event"],
        resource=Resource(root=fields["resource"]),
        payload=fields["payload"],
    )
    assert event.event in trigger.expect
    assert trigger.match.matches(event.resource)
    assert not trigger.match.matches(Resource(root={"prefect.resource.id": "other.1"}))


def test_the_command_needs_a_prefect_server(monkeypatch, no_prefect_server):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(
        app, ["drift-automation", "--webhook-url", "https://hooks.example.com/x"]
    )
    assert result.exit_code == 1
    assert "needs a Prefect server" in result.output
