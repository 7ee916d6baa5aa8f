"""Tasks: the promotion gate on a registered candidate, and the alias move.

``run_gate`` is the gate as the flows call it: the candidate's own checks
(robustness, the served model against the in-memory one), then, holding the
model's promotion lock, the comparison with the champion read right then and
the alias move. Any error after the retries leaves ``@champion`` untouched and
the version ``@challenger`` with ``gate.decision=error`` and the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from mnist_pipeline import gate, packaging, registry, runs, tracking_store
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import DatasetRef, open_dataset
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.preprocess import scale_images
from mnist_pipeline.redact import redact_text
from mnist_pipeline.report import gate_markdown, gate_sentence
from mnist_pipeline.serving import as_model_input, predict_probabilities
from tasks.locking import promotion_lock
from tasks.report import publish_existing
from tasks.track import MLFLOW_RETRY, ExistingVersion

#: How often the comparison is redone when ``@champion`` moves under it.
MAX_COMPARISONS = 3
#: Loading two models and predicting a test split; generous for full MNIST.
GATE_TIMEOUT = 900


@dataclass(frozen=True)
class GateOutcome:
    """The gate's decision, the champion it compared with, and on what data."""

    decision: gate.Decision
    compared_with: str | None
    lineage: str

    @property
    def verdict(self) -> str:
        """One line for the CLI and the run summary."""
        return gate_sentence(self.decision, self.compared_with)


def run_gate(
    *,
    run_id: str,
    model_name: str,
    version: str,
    keras_path: str,
    ref: DatasetRef,
    candidate: gate.Scores,
    thresholds: gate.Thresholds,
    seed: int,
    timeout: float,
) -> GateOutcome:
    """Check the candidate, compare it with the champion under the lock, promote."""
    try:
        checks = check_candidate(model_name, version, keras_path, ref, seed)
        # The task's own time limit leaves room for waiting on the lock.
        promote = promote_if_better.with_options(timeout_seconds=GATE_TIMEOUT + timeout)
        return promote(
            run_id, model_name, version, candidate, checks, ref, thresholds, timeout
        )
    except Exception as exc:
        _record_error(run_id, model_name, version, exc)
        raise


def settle_existing(
    existing: ExistingVersion,
    *,
    config: TrainConfig,
    ref: DatasetRef,
    key: str,
    experiment_id: str,
    keras_path: Callable[[], str],
) -> tuple[str, bool, str | None]:
    """Report a version that already holds this training; gate it if it never was.

    A run that registered its version and stopped before the gate decided (a
    crash, a registry error) left it without a verdict: the gate runs on it
    now. The Prefect summary and the log say which version holds the training.

    Returns:
        The verdict line, whether the version is (now) the champion, and the
        link to the MLflow run that trained it.
    """
    decision = existing.tags.get("gate.decision")
    if decision in ("promoted", "rejected"):
        verdict = existing.tags.get("gate.reason", decision)
        promoted = decision == "promoted"
    else:
        verdict, promoted = _gate_existing(existing, config, ref, keras_path)
    url = runs.run_url(tracking_store.client(), experiment_id, existing.run_id)
    publish_existing(
        existing.tags,
        model_name=config.model_name,
        version=existing.version,
        version_url=existing.url,
        run_id=existing.run_id,
        run_url=url,
        training_key=key,
        gate=verdict,
    )
    get_run_logger().info(
        "Nothing to train: %s version %s already holds this training (key %s).",
        config.model_name,
        existing.version,
        key,
    )
    return verdict, promoted, url


def _gate_existing(
    existing: ExistingVersion,
    config: TrainConfig,
    ref: DatasetRef,
    keras_path: Callable[[], str],
) -> tuple[str, bool]:
    get_run_logger().info(
        "v%s has no gate verdict (%s): running its gate now",
        existing.version,
        existing.tags.get("gate.decision", "none"),
    )
    candidate = gate.recorded_scores(existing.tags, ref.split_digests["test"])
    if candidate is None or existing.run_id is None:
        raise RegistryError(
            f"{config.model_name} v{existing.version} holds this training but has "
            "no recorded test scores to gate; run again with --retrain."
        )
    outcome = run_gate(
        run_id=existing.run_id,
        model_name=config.model_name,
        version=existing.version,
        keras_path=keras_path(),
        ref=ref,
        candidate=candidate,
        thresholds=gate.thresholds_for(config, ref.name),
        seed=config.seed,
        timeout=config.promotion_timeout,
    )
    return outcome.verdict, outcome.decision.promote


@task(name="gate", **MLFLOW_RETRY | {"timeout_seconds": GATE_TIMEOUT})
def check_candidate(
    model_name: str, version: str, keras_path: str, ref: DatasetRef, seed: int
) -> gate.CandidateChecks:
    """Robustness of the trained model; the registered version must match it."""
    import keras

    images, labels = _test_split(ref)
    model = keras.saving.load_model(keras_path)
    served = packaging.load_pyfunc(f"models:/{model_name}/{version}")
    return gate.check_candidate(
        in_memory=lambda x: predict_probabilities(model, scale_images(x)),
        served=lambda x: served.predict(as_model_input(x)),
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
) -> GateOutcome:
    """Under the model's promotion lock: compare with the champion, move the alias.

    The champion is read inside the lock and again right before the move; when
    it moved meanwhile (a writer outside the lock), the comparison is redone
    against the new one.
    """
    logger = get_run_logger()
    client = tracking_store.client()
    with promotion_lock(model_name, client.tracking_uri, timeout) as held:
        logger.info("Holding %s", " and ".join(held) or "no promotion lock")
        for _ in range(MAX_COMPARISONS):
            found = _champion(client, model_name, version, ref)
            outcome = GateOutcome(
                gate.decide(candidate, checks, found.scores, thresholds),
                found.version,
                found.lineage,
            )
            if outcome.decision.promote and outcome.compared_with != version:
                try:
                    registry.move_champion(
                        client,
                        model_name,
                        version,
                        by="gate",
                        reason=f"run {run_id}",
                        expected=outcome.compared_with,
                        check_expected=True,
                    )
                except registry.ChampionMovedError as moved:
                    logger.warning("%s Comparing again.", moved)
                    continue
            break
        else:
            raise RegistryError(
                f"@champion of '{model_name}' moved {MAX_COMPARISONS} times during "
                "the comparison; nothing was promoted."
            )
        _record(client, run_id, model_name, version, outcome, candidate, ref)
    logger.info("Gate, %s v%s: %s", model_name, version, outcome.verdict)
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
    return outcome


@dataclass(frozen=True)
class _Champion:
    version: str | None
    scores: gate.Scores | None
    lineage: str


def _champion(
    client: MlflowClient, model_name: str, version: str, ref: DatasetRef
) -> _Champion:
    """The current champion's scores on the candidate's test images."""
    test_digest = ref.split_digests["test"]
    current = registry.alias_version(client, model_name, registry.CHAMPION)
    if current is None:
        return _Champion(None, None, "no champion yet")
    if current == version:  # a retried run whose alias move had gone through
        return _Champion(current, None, f"v{current} is this version already")
    tags = client.get_model_version(model_name, current).tags
    recorded = gate.recorded_scores(tags, test_digest)
    if recorded is not None:
        return _Champion(
            current, recorded, f"same test split as v{current} ({test_digest})"
        )
    images, labels = _test_split(ref)
    model = packaging.load_pyfunc(f"models:/{model_name}/{current}")
    scores = gate.scores(model.predict(as_model_input(images)), labels)
    lineage = (
        f"v{current} was tested on {tags.get('test_digest', 'unrecorded data')} and "
        f"trained on {tags.get('dataset', '?')} ({tags.get('dataset_digest', '?')}); "
        f"re-scored on this run's test split {test_digest} "
        f"({ref.name}, dataset {ref.digest})"
    )
    return _Champion(current, scores, lineage)


def _record(
    client: MlflowClient,
    run_id: str,
    model_name: str,
    version: str,
    outcome: GateOutcome,
    candidate: gate.Scores,
    ref: DatasetRef,
) -> None:
    decision = outcome.decision
    tags = {
        "gate.decision": "promoted" if decision.promote else "rejected",
        "gate.compared_with": _label(outcome.compared_with),
        "gate.reason": outcome.verdict,
        "gate.test_split": outcome.lineage,
    }
    metrics = {f"gate_{name}": value for name, value in decision.figures.items()}
    record = decision.as_dict() | {
        "compared_with": outcome.compared_with,
        "lineage": outcome.lineage,
    }
    description = (
        f"Trained on {ref.name} (dataset {ref.digest}); test accuracy "
        f"{candidate.describe()}. Gate: {outcome.verdict}."
    )
    registry.record_gate(
        client, run_id, model_name, version, tags, metrics, record, description
    )


def _record_error(run_id: str, model_name: str, version: str, exc: Exception) -> None:
    """Best effort: the registry may be what failed."""
    reason = redact_text(f"{type(exc).__name__}: {exc}")[:2000]
    try:
        registry.record_gate(
            tracking_store.client(),
            run_id,
            model_name,
            version,
            {"gate.decision": "error", "gate.reason": reason},
            {},
        )
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


def _label(version: str | None) -> str:
    return f"v{version}" if version else "none"
