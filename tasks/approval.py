"""A person's sign-off in the Prefect UI: pause the flow run with a typed form.

Called from the flow (a pause is the flow run's, not a task's). While the run
waits it holds no promotion lock: other runs train, gate and promote. Prefect's
open-source server does not record who resumes a run, so the form asks for a
name beside the decision and the comment.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Running
from pydantic import Field

from mnist_pipeline import approval
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.prefect_server import shared_api_url
from tasks.lineage import flow_run_label, flow_run_url

#: The longest wait between two looks at whether the run was resumed.
_MAX_POLL = 10.0


class ApprovalForm(RunInput):
    """Approve the candidate as ``@champion``, or reject it."""

    approve: bool = Field(
        False, description="Tick to make this version @champion; leave to reject"
    )
    comment: str = Field(
        "", max_length=2000, description="Why: kept on the version and in the history"
    )
    approver: str = Field(
        "",
        max_length=200,
        description="Your name: kept with the decision (Prefect's open-source "
        "server does not record who answers)",
    )


def require_reachable_server() -> None:
    """Fail before training when nobody could answer: a temporary Prefect server
    ends with the command, and its UI with it.

    Raises:
        PipelineError: approval required without a Prefect server.
    """
    if shared_api_url() is None:
        raise PipelineError(
            "approval: required needs a Prefect server the approver can open: "
            "start one (`prefect server start`) and set PREFECT_API_URL, or run "
            "the deployment; this command's temporary server ends with it."
        )


def ask_approval(
    model_name: str, version: str, description: str, timeout: float
) -> approval.Approval:
    """Pause this flow run until a person answers the form, at most ``timeout`` s.

    Args:
        description: the form's markdown: the gate's figures and links.
    """
    logger = get_run_logger()
    form = ApprovalForm.with_initial_data(description=description, approve=False)
    where = flow_run_url() or f"flow run {flow_run.get_name()}"
    logger.info(
        "%s v%s passed every check; waiting up to %.0f s for a person to approve "
        "it in the Prefect UI: %s",
        model_name,
        version,
        timeout,
        where,
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form,
            timeout=max(1, round(timeout)),
            poll_interval=min(_MAX_POLL, max(1.0, timeout / 20)),
        )
    except FlowPauseTimeout:
        if not _continue_after_expiry():
            raise  # cancelled meanwhile: the run ends as Prefect says
        logger.warning("Nobody approved %s v%s in time.", model_name, version)
        return approval.expired(_now(), flow_run_label())
    decided = approval.answered(
        answer.approve, answer.comment, answer.approver, _now(), flow_run_label()
    )
    logger.info("%s v%s: %s", model_name, version, decided.sentence())
    return decided


def _continue_after_expiry() -> bool:
    """An expired pause leaves the run Paused, and Prefect fails a run that ends
    so: a run still Paused goes on, to record the expiry and end Completed.
    False when it is no longer Paused (a cancellation came meanwhile)."""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.get_id()).state
        if state is None or not state.is_paused():
            return False
        client.set_flow_run_state(
            flow_run.get_id(),
            Running(message="approval expired; recording it"),
            force=True,
        )
    return True


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
