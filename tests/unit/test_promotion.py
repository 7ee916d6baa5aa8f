"""The gate against the registry, on a real SQLite MLflow registry (versions with a
dummy source: no Prefect, no models).

One store serves the module (creating its tables takes seconds); each test
registers a model of its own name, so the tests share nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from mlflow import MlflowClient

from mnist_pipeline import promotion, registry
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.gate import (
    PREDICTIONS_ARTIFACT,
    CandidateChecks,
    Scores,
    Thresholds,
    predictions_record,
    score_tags,
)
from mnist_pipeline.report import code_aliases

from ..conftest import SAMPLE_REF

#: The count rule (paired test off), as the registry mechanics below need.
THRESHOLDS = Thresholds(
    min_accuracy=0.9,
    min_accuracy_gain=0.0,
    max_recall_drop=0.02,
    min_robust_accuracy=0.8,
    max_p_value=1.0,
)
CHECKS = CandidateChecks(
    robust_accuracy={"noise": 0.95}, serving_difference=0.0, serving_agreement=1.0
)
LOG = logging.getLogger("test")


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[MlflowClient]:
    """A client of one SQLite tracking store and registry for the module."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # artifact folders of any run land here
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture
def model(client, request) -> str:
    """A registered model of this test's own, with no version yet."""
    name = request.node.name
    client.create_registered_model(name)
    return name


@pytest.fixture
def run_id(client, model) -> str:
    """The MLflow run of the candidate (the gate's run)."""
    experiment_id = client.create_experiment(f"{model}-runs")
    return client.create_run(experiment_id).info.run_id


def right(correct: int, total: int = 100, offset: int = 0) -> np.ndarray:
    """``correct`` images right of ``total``, starting at ``offset`` (cyclic)."""
    return np.roll(np.arange(total) < correct, offset)


def register(
    client: MlflowClient,
    model: str,
    scores: Scores | None = None,
    keep_answers: bool = True,
    **tags: str,
) -> str:
    """A new version; with ``scores``, recorded as measured on SAMPLE_REF's split,
    its run keeping which images it got right (its first ``correct``, unless
    ``scores.right`` says)."""
    if scores is None:
        version = client.create_model_version(model, source="dummy", tags=tags)
        return str(version.version)
    recorded = {"test_digest": "t3st", **score_tags(scores)}
    experiment = client.get_experiment_by_name(f"{model}-versions")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(f"{model}-versions")
    )
    run = client.create_run(experiment_id).info.run_id
    got = right(scores.correct, scores.total) if scores.right is None else scores.right
    labels = np.zeros(scores.total, int)
    record = predictions_record(tags.get("test_digest", "t3st"), labels, ~got * 1)
    if keep_answers:
        client.log_dict(run, record, PREDICTIONS_ARTIFACT)
    version = client.create_model_version(
        model, source="dummy", run_id=run, tags=recorded | tags
    )
    return str(version.version)


def make_champion(client: MlflowClient, model: str, version: str) -> None:
    """Another writer's move (a promotion earlier, or outside the lock)."""
    client.set_registered_model_alias(model, registry.CHAMPION, version)


def champion(client: MlflowClient, model: str) -> str | None:
    """``@champion`` as MLflow reads it."""
    aliases = client.get_registered_model(model).aliases
    return str(aliases[registry.CHAMPION]) if registry.CHAMPION in aliases else None


def no_rescore(version: str) -> Scores:
    raise AssertionError(f"v{version} has recorded scores on this split")


def promote(
    client,
    model,
    run_id,
    version,
    candidate,
    rescore=no_rescore,
    thresholds=THRESHOLDS,
    approval=None,
):
    return promotion.compare_and_promote(
        client,
        run_id=run_id,
        model_name=model,
        version=version,
        candidate=candidate,
        checks=CHECKS,
        ref=SAMPLE_REF,
        thresholds=thresholds,
        rescore=rescore,
        logger=LOG,
        approval=approval,
    )


def test_the_first_candidate_becomes_champion(client, model, run_id):
    candidate = register(client, model)
    outcome = promote(client, model, run_id, candidate, Scores(95, 100, 0.9))
    assert outcome.decision.promote and outcome.compared_with is None
    assert outcome.lineage == "no champion yet"
    assert champion(client, model) == candidate


def test_a_better_candidate_replaces_the_champion_scored_on_the_same_split(
    client, model, run_id
):
    old = register(client, model, Scores(94, 100, 0.9))
    make_champion(client, model, old)
    candidate = register(client, model)
    outcome = promote(client, model, run_id, candidate, Scores(95, 100, 0.9))
    assert outcome.decision.promote and outcome.compared_with == old
    assert outcome.lineage == f"same test split as v{old} (t3st)"
    assert champion(client, model) == candidate


def test_an_equal_candidate_leaves_the_champion(client, model, run_id):
    old = register(client, model, Scores(95, 100, 0.9))
    make_champion(client, model, old)
    candidate = register(client, model)
    outcome = promote(client, model, run_id, candidate, Scores(95, 100, 0.9))
    assert not outcome.decision.promote and outcome.compared_with == old
    assert champion(client, model) == old


def test_a_champion_tested_on_other_images_is_rescored(client, model, run_id):
    old = register(
        client, model, Scores(99, 100, 0.99), test_digest="0ther", dataset="mnist"
    )
    make_champion(client, model, old)
    candidate = register(client, model)
    rescored = []

    def rescore(version: str) -> Scores:
        rescored.append(version)
        return Scores(90, 100, 0.9)

    outcome = promote(client, model, run_id, candidate, Scores(95, 100, 0.9), rescore)
    assert rescored == [old] and outcome.decision.promote
    assert outcome.lineage.startswith(
        f"v{old} was tested on 0ther and trained on mnist"
    )
    assert "re-scored on this run's test split t3st" in outcome.lineage
    assert champion(client, model) == candidate


def test_a_champion_moved_during_the_comparison_is_compared_again(
    client, model, run_id, caplog
):
    first = register(client, model, Scores(90, 100, 0.9), test_digest="0ther")
    make_champion(client, model, first)
    candidate = register(client, model)
    newer = register(client, model, Scores(94, 100, 0.9))

    def rescore(version: str) -> Scores:
        # While the old champion is re-scored, another writer promotes ``newer``.
        make_champion(client, model, newer)
        return Scores(90, 100, 0.9)

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        outcome = promote(
            client, model, run_id, candidate, Scores(95, 100, 0.9), rescore
        )
    assert f"moved from v{first} to v{newer}" in caplog.text
    assert outcome.compared_with == newer and outcome.decision.promote
    assert outcome.lineage == f"same test split as v{newer} (t3st)"
    assert champion(client, model) == candidate


def test_a_champion_that_keeps_moving_fails_the_gate(client, model, run_id):
    first = register(client, model, Scores(90, 100, 0.9), test_digest="0ther")
    make_champion(client, model, first)
    candidate = register(client, model)
    other = register(client, model, Scores(90, 100, 0.9), test_digest="0ther")
    rescored = []

    def rescore(version: str) -> Scores:
        # Every re-scoring, another writer swaps the champion.
        rescored.append(version)
        make_champion(client, model, other if version == first else first)
        return Scores(90, 100, 0.9)

    with pytest.raises(RegistryError, match="moved 3 times"):
        promote(client, model, run_id, candidate, Scores(95, 100, 0.9), rescore)
    assert rescored == [first, other, first]
    assert champion(client, model) == other  # the other writer's last move


def test_a_retried_run_whose_move_went_through_is_not_compared_with_itself(
    client, model, run_id
):
    candidate = register(client, model)
    make_champion(client, model, candidate)  # the first try's move
    tags = client.get_model_version(model, candidate).tags
    outcome = promote(client, model, run_id, candidate, Scores(95, 100, 0.9))
    assert outcome.compared_with == candidate and outcome.decision.promote
    assert outcome.lineage == f"v{candidate} is this version already"
    assert champion(client, model) == candidate
    assert client.get_model_version(model, candidate).tags == tags


def test_read_champion_finds_none_recorded_or_rescored_scores(client, model):
    assert promotion.read_champion(client, model, "1", SAMPLE_REF, no_rescore) == (
        promotion.Champion(None, None, "no champion yet")
    )
    recorded = register(client, model, Scores(94, 100, 0.9))
    make_champion(client, model, recorded)
    found = promotion.read_champion(client, model, "9", SAMPLE_REF, no_rescore)
    assert (found.version, found.scores) == (recorded, Scores(94, 100, 0.9))
    unscored = register(client, model)  # an older version: no recorded scores
    make_champion(client, model, unscored)
    found = promotion.read_champion(
        client, model, "9", SAMPLE_REF, lambda version: Scores(80, 100, 0.7)
    )
    assert (found.version, found.scores) == (unscored, Scores(80, 100, 0.7))
    assert found.lineage.startswith(f"v{unscored} was tested on unrecorded data")


def test_the_record_holds_the_verdict_figures_and_a_description(client, model, run_id):
    old = register(client, model, Scores(94, 100, 0.9))
    make_champion(client, model, old)
    candidate = register(client, model)
    outcome = promote(client, model, run_id, candidate, Scores(95, 100, 0.9))
    record = promotion.gate_record(outcome, Scores(95, 100, 0.9), SAMPLE_REF)
    assert record.tags == {
        "gate.decision": "promoted",
        "gate.compared_with": f"v{old}",
        "gate.reason": outcome.verdict,
    }
    # The figures are in the record (gate/decision.json), not one-bar metrics.
    assert record.metrics == {}
    assert record.record["figures"]["candidate_accuracy"] == 0.95
    assert record.record["figures"]["champion_accuracy"] == 0.94
    assert record.record["compared_with"] == old and record.record["promote"]
    assert record.record["lineage"] == f"same test split as v{old} (t3st)"
    assert record.description.startswith(
        f"Test accuracy 0.9500 (95/100). Gate: {code_aliases(outcome.verdict)}. "
        f"Compared with v{old}: same test split as v{old} (t3st)."
    )


def test_an_error_is_recorded_with_credentials_masked():
    exc = ConnectionError("http://admin:s3cret@mlflow:5000 refused")
    tags = promotion.error_tags(exc)
    assert tags["gate.decision"] == "error"
    assert "s3cret" not in tags["gate.reason"]
    assert tags["gate.reason"].startswith("ConnectionError: http://")


def test_only_a_promoted_or_rejected_version_has_a_recorded_verdict():
    promoted = {"gate.decision": "promoted", "gate.reason": "promoted over v1"}
    assert promotion.recorded_verdict(promoted) == ("promoted over v1", True)
    assert promotion.recorded_verdict({"gate.decision": "rejected"}) == (
        "rejected",
        False,
    )
    assert promotion.recorded_verdict({"gate.decision": "error"}) is None
    assert promotion.recorded_verdict({}) is None


#: The default rule: a gain must be significant at 0.05.
PAIRED = replace(THRESHOLDS, max_p_value=0.05)


def test_a_significant_gain_is_promoted_with_its_evidence_on_the_version(
    client, model, run_id
):
    old = register(client, model, Scores(90, 100, 0.9))  # images 0-89 right
    make_champion(client, model, old)
    candidate = register(client, model)
    scores = Scores(100, 100, 0.95, right(100))
    outcome = promote(client, model, run_id, candidate, scores, thresholds=PAIRED)
    assert outcome.decision.promote and champion(client, model) == candidate
    record = promotion.gate_record(outcome, scores, SAMPLE_REF)
    assert record.tags["gate.p_value"] == "0.0009766"
    assert record.tags["gate.only_candidate_right"] == "10"
    assert record.tags["gate.only_champion_right"] == "0"
    assert record.record["paired_test"] == {
        "c": 10,
        "b": 0,
        "p_value": 0.5**10,
        "total": 100,
    }
    assert (
        "Gate: promoted to `@champion` over "
        f"v{old}: better by 10 images of 100 (c=10, b=0), p = 0.00098 <= 0.05: "
        "a significant improvement." in record.description
    )


def test_a_gain_within_noise_is_kept_as_challenger(client, model, run_id):
    old = register(client, model, Scores(94, 100, 0.9))  # images 0-93 right
    make_champion(client, model, old)
    candidate = register(client, model)
    # Right on 0-91 and 94-97: four only it gets right, two only the champion.
    answers = right(92) | (np.arange(100) >= 94) & (np.arange(100) < 98)
    scores = Scores(96, 100, 0.95, answers)
    outcome = promote(client, model, run_id, candidate, scores, thresholds=PAIRED)
    assert not outcome.decision.promote and champion(client, model) == old
    assert outcome.verdict == (
        "better by 2 images of 100 (c=4, b=2), p = 0.34 > 0.05: not a significant "
        "improvement, kept as @challenger"
    )
    record = promotion.gate_record(outcome, scores, SAMPLE_REF)
    assert record.tags["gate.decision"] == "rejected"
    assert (record.tags["gate.only_candidate_right"], record.tags["gate.p_value"]) == (
        "4",
        "0.3438",
    )


def test_a_champion_without_answers_per_image_is_rescored(client, model, run_id):
    old = register(client, model, Scores(90, 100, 0.9), keep_answers=False)
    make_champion(client, model, old)
    candidate = register(client, model)
    rescored = []

    def rescore(version: str) -> Scores:
        rescored.append(version)
        return Scores(90, 100, 0.9, right(90))

    scores = Scores(100, 100, 0.95, right(100))
    outcome = promote(client, model, run_id, candidate, scores, rescore, PAIRED)
    assert rescored == [old]
    assert outcome.decision.paired.c == 10 and outcome.decision.promote


def test_an_approval_is_a_check_kept_on_the_version_and_the_move(client, model, run_id):
    from mnist_pipeline import alias_history
    from mnist_pipeline.approval import answered

    old = register(client, model, Scores(90, 100, 0.9))
    make_champion(client, model, old)
    candidate = register(client, model)
    scores = Scores(100, 100, 0.95, right(100))
    yes = answered(True, " ship it ", "alice", "2026-12-06 23:40 UTC", "run-a (id)")
    outcome = promote(client, model, run_id, candidate, scores, no_rescore, PAIRED, yes)
    assert outcome.decision.promote and champion(client, model) == candidate
    assert outcome.verdict.endswith(
        '; approved by alice on 2026-12-06 23:40 UTC: "ship it"'
    )
    tags = promotion.gate_record(outcome, scores, SAMPLE_REF).tags
    assert tags["approval.decision"] == "approved"
    assert (tags["approval.comment"], tags["approval.by"]) == ("ship it", "alice")
    (move,) = alias_history.read_moves(client, model)
    record = client.get_run(move.record_id).data.tags
    assert record["approval.by"] == "alice" and "approved by alice" in move.reason


def test_a_rejection_keeps_the_champion_and_says_who_and_why(client, model, run_id):
    from mnist_pipeline.approval import answered, expired

    old = register(client, model, Scores(90, 100, 0.9))
    make_champion(client, model, old)
    candidate = register(client, model)
    scores = Scores(100, 100, 0.95, right(100))
    preview = promotion.compare(
        client,
        model_name=model,
        version=candidate,
        candidate=scores,
        checks=CHECKS,
        ref=SAMPLE_REF,
        thresholds=PAIRED,
        rescore=no_rescore,
    )
    assert preview.decision.promote and champion(client, model) == old
    no = answered(False, "wait for the audit", "", "2026-12-06 23:41 UTC", None)
    kept = preview.with_approval(no)
    assert not kept.decision.promote
    assert kept.verdict == (
        "kept as @challenger: rejected by an unnamed person on 2026-12-06 23:41 UTC: "
        '"wait for the audit"; against the champion: better by 10 images of 100 '
        "(c=10, b=0), p = 0.00098"
    )
    tags = promotion.gate_record(kept, scores, SAMPLE_REF).tags
    assert (tags["gate.decision"], tags["approval.decision"]) == (
        "rejected",
        "rejected",
    )
    late = preview.with_approval(expired("2026-12-07 23:41 UTC", None))
    assert late.verdict.startswith(
        "kept as @challenger: approval expired on 2026-12-07 23:41 UTC: nobody "
        "decided in time; against the champion: better by 10 images"
    )
    assert champion(client, model) == old


def test_a_refusal_is_on_record_once_beside_the_moves_not_as_one(client, model):
    from mnist_pipeline import alias_history
    from mnist_pipeline.approval import answered

    first = register(client, model)
    registry.move_champion(client, model, first, by="promote", reason="x")
    no = answered(False, "not yet", "bob", "2026-12-06 23:50 UTC", None)
    for _ in range(2):  # a retried task
        alias_history.record_decision(
            client, model, "2", "1", no.tags(), no.sentence(), mlflow_run="r1"
        )
    (decision,) = alias_history.read_decisions(client, model)
    assert (decision.version, decision.champion) == ("2", "1")
    assert decision.mlflow_run == "r1"
    assert decision.sentence.startswith(
        f"v2 of `{model}` was not made `@champion`: rejected by bob on "
        '2026-12-06 23:50 UTC: "not yet". `@champion` stayed v1.'
    )
    (move,) = alias_history.read_moves(client, model)
    assert move.to_version == "1"
    assert "Approvals refused or expired" in alias_history.history_markdown(
        model, [move], [decision]
    )


def test_an_approval_kept_on_the_second_comparison_says_so(client, model, run_id):
    """Approved, but a better champion arrived while the person decided."""
    from mnist_pipeline.approval import answered

    asked_against = register(client, model, Scores(90, 100, 0.9))
    make_champion(client, model, asked_against)
    candidate = register(client, model)
    scores = Scores(100, 100, 0.95, right(100))
    preview = promotion.compare(
        client,
        model_name=model,
        version=candidate,
        candidate=scores,
        checks=CHECKS,
        ref=SAMPLE_REF,
        thresholds=PAIRED,
        rescore=no_rescore,
    )
    assert preview.decision.promote
    newer = register(client, model, Scores(99, 100, 0.95))
    make_champion(client, model, newer)  # while the request waited
    yes = answered(True, "ship it", "alice", "2026-12-06 23:40 UTC", None)
    outcome = promote(client, model, run_id, candidate, scores, no_rescore, PAIRED, yes)
    assert not outcome.decision.promote and champion(client, model) == newer
    assert outcome.compared_with == newer
    assert outcome.verdict == (
        "better by 1 image of 100 (c=1, b=0), p = 0.5 > 0.05: not a significant "
        "improvement, kept as @challenger; approved by alice on 2026-12-06 23:40 "
        'UTC: "ship it"'
    )
    tags = promotion.gate_record(outcome, scores, SAMPLE_REF).tags
    assert (tags["gate.decision"], tags["approval.decision"]) == (
        "rejected",
        "approved",
    )


def test_promote_refuses_a_version_whose_gate_failed_before_a_verdict(client, model):
    version = register(client, model, Scores(95, 100, 0.9))
    assert promotion.failed_release_checks(client, model, version) == []
    client.set_model_version_tag(model, version, "gate.decision", "error")
    client.set_model_version_tag(
        model, version, "gate.reason", "ServedModelError: fails as a fresh process"
    )
    (reason,) = promotion.failed_release_checks(client, model, version)
    assert reason.startswith(
        "its gate failed before a verdict (ServedModelError: fails as a fresh process)"
    )
