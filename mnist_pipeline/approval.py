"""A person's sign-off on a candidate before it becomes ``@champion``.

With ``approval: required`` the gate, once every automatic check passed, asks
for a decision (in the Prefect UI: ``tasks/approval.py`` pauses the flow run
with a typed form). The answer, or its absence within the timeout, is an
:class:`Approval`: the gate counts it as one more check, and the model version
and the alias's history keep it.

Plain data and words only: no Prefect here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mnist_pipeline.gate import Check

#: The version tag that says where a person's decision stands, and its values.
APPROVAL_TAG = "approval.decision"
APPROVED = "approved"
REJECTED = "rejected"
EXPIRED = "expired"
#: Asked, and waiting for the answer.
PENDING = "pending"
#: Asked, but the gate failed before an answer came.
NOT_ANSWERED = "none"
#: Who decided, when the answer did not say: Prefect's open-source server
#: records no user on a resumed run.
UNKNOWN_APPROVER = "an unnamed person"
#: The longest comment kept in a tag (MLflow's limit is larger; the version's
#: description has room for the rest).
_TAG_LIMIT = 500


@dataclass(frozen=True)
class Approval:
    """A decision on a candidate: approved, rejected or expired; by whom, when."""

    decision: str
    comment: str
    by: str
    at: str  # UTC, e.g. 2026-12-06 23:40 UTC
    #: The Prefect flow run that asked (name and id).
    flow_run: str | None = None

    @property
    def approved(self) -> bool:
        """Whether the person said yes."""
        return self.decision == APPROVED

    def sentence(self) -> str:
        """E.g. ``approved by alice on 2026-12-06 23:40 UTC: "looks good"``."""
        if self.decision == EXPIRED:
            return f"approval expired on {self.at}: nobody decided in time"
        said = f': "{self.comment}"' if self.comment else ""
        return f"{self.decision} by {self.by} on {self.at}{said}"

    def tags(self) -> dict[str, str]:
        """The tags the version (and the move's record) keep."""
        return {
            APPROVAL_TAG: self.decision,
            "approval.comment": self.comment[:_TAG_LIMIT],
            "approval.by": self.by,
        }

    def check(self) -> Check:
        """The decision as one of the gate's checks."""
        return Check(
            name="approval",
            passed=self.approved,
            value=1.0 if self.approved else 0.0,
            relation=">=",
            threshold=1.0,
            detail=self.sentence(),
        )


def answered(
    approve: bool, comment: str, by: str, at: str, flow_run: str | None
) -> Approval:
    """The Approval of a person's answer (``by`` empty: not recorded)."""
    return Approval(
        decision=APPROVED if approve else REJECTED,
        comment=comment.strip(),
        by=by.strip() or UNKNOWN_APPROVER,
        at=at,
        flow_run=flow_run,
    )


def expired(at: str, flow_run: str | None) -> Approval:
    """The Approval of a request nobody answered in time."""
    return Approval(EXPIRED, "", "nobody", at, flow_run)
