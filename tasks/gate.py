"""Tasks: the promotion gate on a registered candidate, and the alias move.

``run_gate`` is the gate as the flows call it: the candidate's own checks
(robustness, the served model against the in-memory one), then, holding the
model's promotion lock, the comparison with the champion read right then and
the alias move. With ``approval: required`` a candidate that passes every
check first waits, paused and holding no promotion lock, for a person's decision in the
Prefect UI; approved, it is compared again under the lock. Any error after the
retries leaves ``@champion`` untouched and the version ``@challenger`` with
``gate.decision=error`` and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from mnist_pipeline import (
    alias_history,
    gate,
    packaging,
    promotion,
    registry,
    runs,
    tracking_store,
)
from mnist_pipeline.approval import (
    APPROVAL_TAG,
    NOT_ANSWERED,
    PENDING,
    Approval,
)
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import DatasetRef, open_dataset
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.preprocess import scale_images
from mnist_pipeline.promotion import GateOutcome
from mnist_pipeline.report import (
    approval_markdown,
    gate_markdown,
    held_verdict,
    nothing_trained,
)
from mnist_pipeline.serving import as_model_input, predict_probabilities
from tasks.approval import ask_approval
from tasks.lineage import flow_run_label
from tasks.locking import promotion_lock
from tasks.report import publish_existing
from tasks.track import MLFLOW_RETRY, ExistingVersion

#: Loading two models and predicting a test split; generous for full MNIST.
GATE_TIMEOUT = 900


@dataclass(frozen=True)
class GateSettings:
    """How the gate judges a candidate, from its training's config.

    Attributes:
        thresholds: the floors, margins and the paired test's ``max_p_value``.
        seed: seeds the noise perturbation of the robustness check.
        timeout: seconds to wait for the promotion lock.
        release_reason: set, the candidate need not be better than the
            champion, only not significantly worse.
        approval_timeout: set, a person must approve in the Prefect UI within
            this many seconds (``approval: required``).
    """

    thresholds: gate.Thresholds
    seed: int
    timeout: float
    release_reason: str = ""
    approval_timeout: float | None = None

    @classmethod
    def of(cls, config: TrainConfig, ref: DatasetRef) -> GateSettings:
        """The settings of a training config, the floor by ``ref``'s dataset."""
        required = config.approval == "required"
        return cls(
            thresholds=gate.thresholds_for(config, ref.name),
            seed=config.seed,
            timeout=config.promotion_timeout,
            release_reason=config.release_reason,
            approval_timeout=config.approval_timeout if required else None,
        )


def run_gate(
    *,
    run_id: str,
    model_name: str,
    version: str,
    keras_path: str,
    ref: DatasetRef,
    candidate: gate.Scores,
    settings: GateSettings,
) -> GateOutcome:
    """Check the candidate, compare it with the champion under the lock, promote."""
    thresholds, timeout = settings.thresholds, settings.timeout
    release_reason = settings.release_reason
    approval_timeout = settings.approval_timeout
    approval, pending = None, False
    try:
        checks = check_candidate(model_name, version, keras_path, ref, settings.seed)
        if approval_timeout is not None:
            preview = preview_gate(
                run_id, model_name, version, candidate, checks, ref, thresholds,
                release_reason,
            )  # fmt: skip
            pending = preview.decision.promote  # the version says "pending" now
            approval = _approval(run_id, model_name, version, preview, approval_timeout)
            if approval is None or not approval.approved:
                kept = preview.with_approval(approval) if approval else preview
                return record_verdict(run_id, model_name, version, kept, candidate, ref)
        # The task's own time limit leaves room for waiting on the lock.
        promote = promote_if_better.with_options(timeout_seconds=GATE_TIMEOUT + timeout)
        return promote(
            run_id, model_name, version, candidate, checks, ref, thresholds, timeout,
            release_reason, approval,
        )  # fmt: skip
    except Exception as exc:
        # A version marked pending says what became of the person's answer.
        asked = {APPROVAL_TAG: NOT_ANSWERED} if pending else {}
        decided = approval.tags() if approval else asked
        _record_error(run_id, model_name, version, promotion.error_tags(exc) | decided)
        raise


def _approval(
    run_id: str, model_name: str, version: str, preview: GateOutcome, timeout: float
) -> Approval | None:
    """A person's decision on a candidate the gate would promote; None (nobody
    asked) for one it keeps anyway."""
    if not preview.decision.promote:
        return None
    request = _approval_request(run_id, model_name, version, preview, timeout)
    return ask_approval(model_name, version, request, timeout)


def settle_existing(
    existing: ExistingVersion,
    *,
    config: TrainConfig,
    ref: DatasetRef,
    key: str,
    experiment_id: str,
) -> tuple[str, bool, str | None]:
    """Report a version that already holds this training; gate it if it never was.

    A run that registered its version and stopped before the gate decided (a
    crash, a registry error) left it without a verdict: the gate runs on it
    now. The Prefect summary and the log say which version holds the training.

    Returns:
        The gate line (whose verdict it is: the holding version's, or this
        run's when it gated it now), whether the version is (now) the champion,
        and the link to the MLflow run that trained it.
    """
    recorded = promotion.recorded_verdict(existing.tags)
    if recorded is not None and config.release_reason and not recorded[1]:
        # Kept before (say, for lack of evidence): released now, by the release
        # rule, if it passes it.
        recorded = None
    if recorded is not None:
        verdict, promoted = recorded
        gate_line = held_verdict(
            existing.version, existing.run_id, existing.registered_on, verdict
        )
    else:
        verdict, promoted = _gate_existing(existing, config, ref)
        gate_line = f"gated by this run: {verdict}"
    url = runs.run_url(tracking_store.client(), experiment_id, existing.run_id)
    publish_existing(
        existing.tags,
        model_name=config.model_name,
        version=existing.version,
        version_url=existing.url,
        run_id=existing.run_id,
        run_url=url,
        training_key=key,
        gate=gate_line,
    )
    get_run_logger().info(
        "Nothing to train: %s version %s already holds this training (key %s).",
        config.model_name,
        existing.version,
        key,
    )
    return nothing_trained(existing.version, gate_line), promoted, url


def _gate_existing(
    existing: ExistingVersion,
    config: TrainConfig,
    ref: DatasetRef,
) -> tuple[str, bool]:
    get_run_logger().info(
        "v%s has no gate verdict (%s): running its gate now",
        existing.version,
        existing.tags.get("gate.decision", "none"),
    )
    candidate = promotion.version_scores(
        tracking_store.client(),
        existing.tags,
        existing.run_id,
        ref.split_digests["test"],
    )
    if candidate is None or existing.run_id is None:
        raise RegistryError(
            f"{config.model_name} v{existing.version} holds this training but has "
            "no recorded test scores to gate; run again with --retrain."
        )
    outcome = run_gate(
        run_id=existing.run_id,
        model_name=config.model_name,
        version=existing.version,
        keras_path=_keras_file(config, existing),
        ref=ref,
        candidate=candidate,
        settings=GateSettings.of(config, ref),
    )
    return outcome.verdict, outcome.decision.promote


def _keras_file(config: TrainConfig, existing: ExistingVersion) -> str:
    """The version's Keras file: its run's local copy, else downloaded."""
    local = Path(config.workdir) / "models" / str(existing.run_id) / "model.keras"
    if local.is_file():
        return str(local)
    return str(packaging.download_keras_model(config.model_name, existing.version))


@task(name="gate", **MLFLOW_RETRY | {"timeout_seconds": GATE_TIMEOUT})
def check_candidate(
    model_name: str, version: str, keras_path: str, ref: DatasetRef, seed: int
) -> gate.CandidateChecks:
    """Robustness of the trained model; the registered version must match it.

    The version is loaded as a server loads it: by a fresh process, running the
    code shipped with it (this process's wrapper is already imported).
    """
    import keras

    images, labels = _test_split(ref)
    model = keras.saving.load_model(keras_path)
    uri = f"models:/{model_name}/{version}"
    return gate.measure_candidate(
        in_memory=lambda x: predict_probabilities(model, scale_images(x)),
        served=lambda x: packaging.predict_in_fresh_process(uri, as_model_input(x)),
        images=images,
        labels=labels,
        seed=seed,
    )


@task(name="promote", **MLFLOW_RETRY | {"timeout_seconds": GATE_TIMEOUT})
def promote_if_better(
    run_id: str,
    model_name: str,
    version: str,
    candidate: gate.Scores,
    checks: gate.CandidateChecks,
    ref: DatasetRef,
    thresholds: gate.Thresholds,
    timeout: float,
    release_reason: str = "",
    approval: Approval | None = None,
) -> GateOutcome:
    """Under the model's promotion lock: compare with the champion, move the alias.

    The champion is read inside the lock and again right before the move; when
    it moved meanwhile (a writer outside the lock), the comparison is redone
    against the new one. A person's ``approval`` counts as one more check and
    is recorded with the move.
    """
    logger = get_run_logger()
    client = tracking_store.client()
    with promotion_lock(model_name, client.tracking_uri, timeout) as held:
        logger.info("Holding %s", " and ".join(held) or "no promotion lock")
        outcome = promotion.compare_and_promote(
            client,
            run_id=run_id,
            model_name=model_name,
            version=version,
            candidate=candidate,
            checks=checks,
            ref=ref,
            thresholds=thresholds,
            rescore=lambda current: _rescore(model_name, current, ref),
            logger=logger,
            prefect_flow_run=flow_run_label(),
            release_reason=release_reason,
            approval=approval,
        )
        _record(client, run_id, model_name, version, outcome, candidate, ref)
    _publish(model_name, version, outcome)
    return outcome


@task(name="compare", **MLFLOW_RETRY | {"timeout_seconds": GATE_TIMEOUT})
def preview_gate(
    run_id: str,
    model_name: str,
    version: str,
    candidate: gate.Scores,
    checks: gate.CandidateChecks,
    ref: DatasetRef,
    thresholds: gate.Thresholds,
    release_reason: str,
) -> GateOutcome:
    """The verdict against the champion now, before asking a person; no move,
    no promotion lock (the comparison is repeated under it after an approval)."""
    client = tracking_store.client()
    outcome = promotion.compare(
        client,
        model_name=model_name,
        version=version,
        candidate=candidate,
        checks=checks,
        ref=ref,
        thresholds=thresholds,
        rescore=lambda current: _rescore(model_name, current, ref),
        release_reason=release_reason,
    )
    if outcome.decision.promote:
        registry.set_version_tags(client, model_name, version, {APPROVAL_TAG: PENDING})
    return outcome


@task(name="record-verdict", **MLFLOW_RETRY)
def record_verdict(
    run_id: str,
    model_name: str,
    version: str,
    outcome: GateOutcome,
    candidate: gate.Scores,
    ref: DatasetRef,
) -> GateOutcome:
    """Record a verdict that moves nothing (kept before or by the approval); a
    person's refusal or an expiry also goes into the alias's history."""
    client = tracking_store.client()
    _record(client, run_id, model_name, version, outcome, candidate, ref)
    _publish(model_name, version, outcome)
    return outcome


def _record_unmoved_decision(
    client: MlflowClient,
    run_id: str,
    model_name: str,
    version: str,
    outcome: GateOutcome,
) -> None:
    """A person's answer that moved nothing, in the alias's history."""
    if outcome.approval is None or outcome.decision.promote:
        return
    alias_history.record_decision(
        client,
        model_name,
        version,
        # Read now: the champion may have moved during a long wait.
        registry.alias_version(client, model_name, registry.CHAMPION),
        outcome.approval.tags(),
        outcome.verdict,
        mlflow_run=run_id,
        prefect_flow_run=flow_run_label(),
    )


def _approval_request(
    run_id: str, model_name: str, version: str, preview: GateOutcome, timeout: float
) -> str:
    client = tracking_store.client()
    experiment_id = client.get_run(run_id).info.experiment_id
    url = runs.run_url(client, experiment_id, run_id)
    return approval_markdown(
        model_name,
        version,
        verdict=preview.verdict,
        decision=preview.decision,
        run=f"[run {run_id[:8]}]({url})" if url else f"run `{run_id}`",
        version_url=registry.version_url(client, model_name, version),
        timeout=timeout,
    )


def _publish(model_name: str, version: str, outcome: GateOutcome) -> None:
    get_run_logger().info("Gate, %s v%s: %s", model_name, version, outcome.verdict)
    create_markdown_artifact(
        gate_markdown(
            model_name,
            version,
            outcome.decision,
            outcome.compared_with,
            outcome.lineage,
        ),
        key="promotion-gate",
        description="Promotion gate decision",
    )


def _rescore(model_name: str, version: str, ref: DatasetRef) -> gate.Scores:
    """A registered version's scores on this run's test split, with its own code."""
    images, labels = _test_split(ref)
    uri = f"models:/{model_name}/{version}"
    return gate.scores(
        packaging.predict_in_fresh_process(uri, as_model_input(images)), labels
    )


def _record(
    client: MlflowClient,
    run_id: str,
    model_name: str,
    version: str,
    outcome: GateOutcome,
    candidate: gate.Scores,
    ref: DatasetRef,
) -> None:
    """The verdict on the run and the version; a person's answer that moved
    nothing also in the alias's history."""
    verdict = promotion.gate_record(outcome, candidate, ref)
    registry.record_gate(
        client,
        run_id,
        model_name,
        version,
        verdict.tags,
        verdict.metrics,
        verdict.record,
        verdict.description,
    )
    _record_unmoved_decision(client, run_id, model_name, version, outcome)


def _record_error(
    run_id: str, model_name: str, version: str, tags: dict[str, str]
) -> None:
    """Best effort: the registry may be what failed."""
    try:
        client = tracking_store.client()
        registry.record_gate(client, run_id, model_name, version, tags, {})
    except Exception as again:  # noqa: BLE001 - the original error is raised
        get_run_logger().error(
            "Could not record the gate error on %s v%s either: %s",
            model_name,
            version,
            again,
        )


def _test_split(ref: DatasetRef) -> tuple[np.ndarray, np.ndarray]:
    data = open_dataset(ref)
    return data.x_test.reshape(-1, 28, 28), data.y_test.astype(np.int64)
