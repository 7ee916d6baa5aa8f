"""The gate against the registry: read the champion, decide, move ``@champion``.

:mod:`mnist_pipeline.gate` decides on figures; this module reads the champion's
figures from the registry (or has them re-scored), retries the decision when
``@champion`` moves under it, and says what the registry records of it. The
tasks in ``tasks/gate.py`` hold the promotion lock, load the models and publish
the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace

from mlflow import MlflowClient

from mnist_pipeline import gate, registry, runs
from mnist_pipeline.approval import Approval
from mnist_pipeline.data import DatasetRef
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.redact import redact_text
from mnist_pipeline.report import code_aliases, dataset_line, gate_sentence

#: How often the comparison is redone when ``@champion`` moves under it.
MAX_COMPARISONS = 3
#: Scores a registered version on the candidate's test split.
Rescore = Callable[[str], gate.Scores]


@dataclass(frozen=True)
class GateOutcome:
    """The gate's decision, the champion it compared with, and on what data."""

    decision: gate.Decision
    compared_with: str | None
    lineage: str
    #: A person's decision, where the gate asked for one.
    approval: Approval | None = None

    @property
    def verdict(self) -> str:
        """One line for the CLI and the run summary."""
        return gate_sentence(self.decision, self.compared_with)

    def with_approval(self, approval: Approval) -> GateOutcome:
        """This outcome with the person's decision as one more check."""
        decision = self.decision
        checks = [*decision.checks, approval.check()]
        return replace(
            self,
            decision=replace(
                decision, promote=decision.promote and approval.approved, checks=checks
            ),
            approval=approval,
        )


@dataclass(frozen=True)
class Champion:
    """The champion to compare with: its version, scores and where they came from."""

    version: str | None
    scores: gate.Scores | None
    lineage: str


@dataclass(frozen=True)
class GateRecord:
    """What the registry and the run keep of a verdict."""

    tags: dict[str, str]
    metrics: dict[str, float]
    record: dict[str, object]
    description: str


def read_champion(
    client: MlflowClient,
    model_name: str,
    version: str,
    ref: DatasetRef,
    rescore: Rescore,
) -> Champion:
    """The current champion's scores on the candidate's test images.

    Recorded scores count when they were measured on the same test split;
    otherwise ``rescore`` scores the champion again.
    """
    test_digest = ref.split_digests["test"]
    current = registry.alias_version(client, model_name, registry.CHAMPION)
    if current is None:
        return Champion(None, None, "no champion yet")
    if current == version:  # a retried run whose alias move had gone through
        return Champion(current, None, f"v{current} is this version already")
    found = client.get_model_version(model_name, current)
    recorded = version_scores(client, found.tags, found.run_id, test_digest)
    if recorded is not None:
        return Champion(
            current, recorded, f"same test split as v{current} ({test_digest})"
        )
    return Champion(
        current, rescore(current), rescored_lineage(current, found.tags, ref)
    )


def version_scores(
    client: MlflowClient,
    tags: Mapping[str, str],
    run_id: str | None,
    test_digest: str,
) -> gate.Scores | None:
    """A version's recorded scores on ``test_digest`` with which images it got
    right (its run's :data:`~mnist_pipeline.gate.PREDICTIONS_ARTIFACT`).

    None when it was tested on other images, or its run kept no answers per
    image (versions from before the paired test): it must be scored again.
    """
    counts = gate.recorded_scores(tags, test_digest)
    if counts is None or not run_id:
        return None
    record = runs.load_json_artifact(client, run_id, gate.PREDICTIONS_ARTIFACT)
    right = None if record is None else gate.recorded_right(record, test_digest)
    if right is None or right.size != counts.total or right.sum() != counts.correct:
        return None
    return replace(counts, right=right)


def rescored_lineage(current: str, tags: Mapping[str, str], ref: DatasetRef) -> str:
    """Where a re-scored champion's figures come from, in one sentence."""
    return (
        f"v{current} was tested on {tags.get('test_digest', 'unrecorded data')} and "
        f"trained on {tags.get('dataset', '?')} ({tags.get('dataset_digest', '?')}); "
        f"re-scored on this run's test split {ref.split_digests['test']} "
        f"({ref.name}, dataset {ref.digest})"
    )


def compare_and_promote(
    client: MlflowClient,
    *,
    run_id: str,
    model_name: str,
    version: str,
    candidate: gate.Scores,
    checks: gate.CandidateChecks,
    ref: DatasetRef,
    thresholds: gate.Thresholds,
    rescore: Rescore,
    logger: logging.Logger | logging.LoggerAdapter,
    prefect_flow_run: str | None = None,
    release_reason: str = "",
    approval: Approval | None = None,
) -> GateOutcome:
    """Compare with the champion read now; promote when the gate says so.

    The move is recorded in the alias's history with the verdict as its reason,
    this MLflow run, ``prefect_flow_run`` and the ``approval`` (a person's
    decision, counted as one more check). The move checks that ``@champion`` is
    still the version compared with; when it moved meanwhile (a writer outside
    the lock), the comparison is redone against the new one, up to
    :data:`MAX_COMPARISONS` times.

    Raises:
        RegistryError: the champion kept moving.
    """
    for _ in range(MAX_COMPARISONS):
        outcome = compare(
            client,
            model_name=model_name,
            version=version,
            candidate=candidate,
            checks=checks,
            ref=ref,
            thresholds=thresholds,
            rescore=rescore,
            release_reason=release_reason,
        )
        if approval is not None:
            outcome = outcome.with_approval(approval)
        if not outcome.decision.promote or outcome.compared_with == version:
            return outcome
        try:
            registry.move_champion(
                client,
                model_name,
                version,
                by="gate",
                reason=outcome.verdict,
                who="promotion gate",
                mlflow_run=run_id,
                prefect_flow_run=prefect_flow_run,
                expected=outcome.compared_with,
                check_expected=True,
                extra_tags=approval.tags() if approval else None,
            )
        except registry.ChampionMovedError as moved:
            logger.warning("%s Comparing again.", moved)
            continue
        return outcome
    raise RegistryError(
        f"@champion of '{model_name}' moved {MAX_COMPARISONS} times during "
        "the comparison; nothing was promoted."
    )


def compare(
    client: MlflowClient,
    *,
    model_name: str,
    version: str,
    candidate: gate.Scores,
    checks: gate.CandidateChecks,
    ref: DatasetRef,
    thresholds: gate.Thresholds,
    rescore: Rescore,
    release_reason: str = "",
) -> GateOutcome:
    """The gate's verdict against the champion read now; nothing moves."""
    found = read_champion(client, model_name, version, ref, rescore)
    return GateOutcome(
        gate.decide(candidate, checks, found.scores, thresholds, release_reason),
        found.version,
        found.lineage,
    )


def gate_record(
    outcome: GateOutcome, candidate: gate.Scores, ref: DatasetRef
) -> GateRecord:
    """The verdict's tags, full record and the version's description.

    The version keeps as tags only what is filtered on and read back (decision,
    reason, the champion compared with); the test-split sentence is in the
    description and, with every check's figures, in ``gate/decision.json``.
    No metrics: a one-bar chart per figure buried the training curves.
    """
    decision = outcome.decision
    tags = {
        "gate.decision": "promoted" if decision.promote else "rejected",
        "gate.compared_with": _label(outcome.compared_with),
        "gate.reason": outcome.verdict,
    }
    if decision.paired is not None:
        tags |= {
            "gate.p_value": f"{decision.paired.p_value:.4g}",
            "gate.only_candidate_right": str(decision.paired.c),
            "gate.only_champion_right": str(decision.paired.b),
        }
    if outcome.approval is not None:
        tags |= outcome.approval.tags()
    return GateRecord(
        tags=tags,
        metrics={},
        record=decision.as_dict()
        | {
            "compared_with": outcome.compared_with,
            "lineage": outcome.lineage,
            "approval": asdict(outcome.approval) if outcome.approval else None,
        },
        description=version_description(outcome, candidate, ref),
    )


def version_description(
    outcome: GateOutcome, candidate: gate.Scores, ref: DatasetRef
) -> str:
    """What a version is and the gate's verdict, as the version page shows it."""
    compared = (
        f"Compared with v{outcome.compared_with}: {outcome.lineage}."
        if outcome.compared_with
        else "No champion to compare with."
    )
    # Plain words first: the versions list shows the description's start raw.
    return code_aliases(
        f"Test accuracy {candidate.describe()}. Gate: {outcome.verdict}. "
        f"{compared}\n\n"
        f"Trained on {dataset_line(ref.name, ref.digest, ref.split_digests)}. "
        "Every check's figures: the source run's `gate/decision.json`; its code "
        "(git commit, package, lock file) and Prefect flow run: the source run's "
        "tags."
    )


#: The checks no release skips: ``promote`` refuses a version that failed one.
RELEASE_CHECKS = ("accuracy_floor", "robustness", "serving_smoke_test")


def failed_release_checks(client: MlflowClient, name: str, version: str) -> list[str]:
    """What the gate found wrong with ``version`` alone (floor, robustness, the
    served copy), from its run's ``gate/decision.json``, or that its gate failed
    before it could tell; empty when it passed them or was never gated
    (registered outside the pipeline)."""
    found = client.get_model_version(name, version)
    if found.tags.get("gate.decision") == "error":
        return [
            f"its gate failed before a verdict ({found.tags.get('gate.reason', '?')}); "
            "the same training run again gates it again"
        ]
    run_id = found.run_id
    if not run_id:
        return []
    record = runs.load_json_artifact(client, run_id, registry.GATE_RECORD) or {}
    checks = record.get("checks", [])
    return [
        str(check.get("detail", check.get("name")))
        for check in checks
        if check.get("name") in RELEASE_CHECKS and not check.get("passed")
    ]


def error_tags(exc: BaseException) -> dict[str, str]:
    """The tags of a gate that failed with ``exc`` (credentials masked)."""
    reason = redact_text(f"{type(exc).__name__}: {exc}")[:2000]
    return {"gate.decision": "error", "gate.reason": reason}


def recorded_verdict(tags: Mapping[str, str]) -> tuple[str, bool] | None:
    """A version's recorded verdict and whether it was promoted; None if undecided.

    A run that registered its version and stopped before the gate decided (a
    crash, a registry error) left it without a verdict.
    """
    decision = tags.get("gate.decision")
    if decision not in ("promoted", "rejected"):
        return None
    return tags.get("gate.reason", decision), decision == "promoted"


def _label(version: str | None) -> str:
    return f"v{version}" if version else "none"
