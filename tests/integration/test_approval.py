"""A person's sign-off on a real Prefect server: the training flow pauses for it.

The candidate's flow run (``approval: required``) runs in a thread of this
process; the test answers its form through Prefect's API, as the UI's Resume
button does, and meanwhile runs other trainings of the same model.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
import uuid

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from flows.training import TrainingResult, mnist_training
from mnist_pipeline import alias_history, registry, tracking_store
from mnist_pipeline.config import TrainConfig

from .test_flow import small_config

#: Long enough for the test to answer (the run looks every timeout/20 s).
ANSWER_TIMEOUT = 120.0


def lenient(tmp_path, **overrides) -> TrainConfig:
    """A small training every floor lets through: the tests are about the person."""
    return small_config(
        tmp_path, min_accuracy=0.0, min_robust_accuracy=0.0, **overrides
    )


def good(tmp_path, **overrides) -> TrainConfig:
    """Three epochs of small batches: clearly better than :func:`weak`'s one step."""
    return lenient(tmp_path, epochs=3, batch_size=32, **overrides)


def weak(tmp_path) -> TrainConfig:
    """One epoch of one batch: a single gradient step."""
    return lenient(tmp_path, epochs=1, batch_size=400, seed=1)


class Background:
    """A training flow run in a thread, named so the test can find it."""

    def __init__(self, config: TrainConfig) -> None:
        self.name = f"approval-{uuid.uuid4().hex[:8]}"
        self.result: TrainingResult | None = None
        self.error: BaseException | None = None
        run = mnist_training.with_options(flow_run_name=self.name)
        # This thread's settings (the session's Prefect server), as a flow run
        # started here sees them, whatever another test left as the global ones.
        context = contextvars.copy_context()
        self.thread = threading.Thread(
            target=context.run, args=(self._run, run, config)
        )
        self.thread.start()

    def _run(self, run, config: TrainConfig) -> None:
        try:
            self.result = run(config)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def paused(self, timeout: float = 300):
        """The flow run once it is Paused, waiting for the form's answer."""
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                assert self.thread.is_alive(), f"ended before pausing: {self.error}"
                (run,) = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        name=FlowRunFilterName(any_=[self.name])
                    )
                ) or [None]
                if run is not None and run.state.is_paused():
                    return run
                time.sleep(0.5)
        raise AssertionError(f"{self.name} did not pause in {timeout} s")

    def finish(self, timeout: float = 300) -> TrainingResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.name} still runs"
        assert self.error is None, repr(self.error)
        return self.result

    def state(self):
        with get_client(sync_client=True) as client:
            (run,) = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[self.name]))
            )
        return run.state


def answer(flow_run, **run_input) -> None:
    """Resume the paused run with the form's fields, as the UI does."""
    with get_client(sync_client=True) as client:
        client.resume_flow_run(flow_run.id, run_input=run_input)


def form_description(flow_run) -> str:
    """The markdown the Prefect UI shows above the form."""
    key = flow_run.state.state_details.run_input_keyset["description"]
    with get_client(sync_client=True) as client:
        return json.loads(client.read_flow_run_input(flow_run.id, key))


def version_tags(client, version: str) -> dict[str, str]:
    return client.get_model_version("mnist-cnn", version).tags


def champion(client) -> str | None:
    return registry.alias_version(client, "mnist-cnn", registry.CHAMPION)


def test_an_approved_candidate_is_compared_again_then_promoted_with_the_decision(
    prefect_api_url, mlflow_store, tmp_path
):
    candidate = Background(good(tmp_path, approval="required", approval_timeout=600))
    paused = candidate.paused()
    client = tracking_store.connect()
    assert version_tags(client, "1")["approval.decision"] == "pending"
    assert champion(client) is None
    asked = form_description(paused)
    assert asked.startswith("# Approve `mnist-cnn` v1 as `@champion`?")
    assert "the gate's verdict, if approved: promoted to `@champion` (first" in asked
    assert "| accuracy_floor | pass |" in asked

    # While it waits it holds no lock: another run trains, gates and promotes.
    other = mnist_training(weak(tmp_path))
    assert other.promoted and champion(client) == other.version == "2"

    answer(paused, approve=True, comment="ship it", approver="alice")
    result = candidate.finish()
    # The champion was read again: v1 beat v2, which was not there when asked.
    assert result.promoted and champion(client) == "1"
    assert result.verdict.startswith("promoted to @champion over v2: better by ")
    assert "<= 0.05: a significant improvement; approved by alice on " in (
        result.verdict
    )
    assert result.verdict.endswith(': "ship it"')
    tags = version_tags(client, "1")
    assert tags["approval.decision"] == "approved"
    assert (tags["approval.comment"], tags["approval.by"]) == ("ship it", "alice")
    assert float(tags["gate.p_value"]) <= 0.05
    description = client.get_model_version("mnist-cnn", "1").description
    assert "approved by alice on " in description
    last = alias_history.read_moves(client, "mnist-cnn")[-1]
    assert (last.from_version, last.to_version, last.by) == ("2", "1", "gate")
    assert client.get_run(last.record_id).data.tags["approval.by"] == "alice"
    assert candidate.state().is_completed()


def test_a_rejected_candidate_stays_challenger_and_the_champion_is_untouched(
    prefect_api_url, mlflow_store, tmp_path
):
    first = mnist_training(weak(tmp_path))
    assert first.promoted
    client = tracking_store.connect()
    candidate = Background(good(tmp_path, approval="required", approval_timeout=600))
    paused = candidate.paused()
    assert "promoted to `@champion` over v1: better by" in form_description(paused)
    answer(paused, approve=False, comment="wait for the audit")
    result = candidate.finish()
    assert not result.promoted and champion(client) == "1"
    assert result.verdict.startswith("kept as @challenger: rejected by an unnamed ")
    assert ': "wait for the audit"; against the champion: better by ' in (
        result.verdict
    )
    assert registry.alias_version(client, "mnist-cnn", registry.CHALLENGER) == "2"
    tags = version_tags(client, "2")
    assert (tags["gate.decision"], tags["approval.decision"]) == (
        "rejected",
        "rejected",
    )
    assert tags["approval.comment"] == "wait for the audit"
    assert len(alias_history.read_moves(client, "mnist-cnn")) == 1
    (refused,) = alias_history.read_decisions(client, "mnist-cnn")
    assert (refused.version, refused.champion) == ("2", "1")
    assert "rejected by an unnamed person" in refused.sentence
    assert candidate.state().is_completed()


def test_an_unanswered_request_expires_and_the_run_completes(
    prefect_api_url, mlflow_store, tmp_path
):
    candidate = Background(good(tmp_path, approval="required", approval_timeout=3))
    candidate.paused()
    result = candidate.finish()
    client = tracking_store.connect()
    assert not result.promoted and champion(client) is None
    assert result.verdict.startswith("kept as @challenger: approval expired on ")
    assert version_tags(client, "1")["approval.decision"] == "expired"
    (late,) = alias_history.read_decisions(client, "mnist-cnn")
    assert "approval expired on" in late.sentence and late.champion is None
    # An expired pause would fail the run; it recorded the expiry and completed.
    assert candidate.state().is_completed()
