"""The gate against the registry, on a real SQLite MLflow registry (versions with a
dummy source: no Prefect, no models).

One store serves the module (creating its tables takes seconds); each test
registers a model of its own name, so the tests share nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from mlflow import MlflowClient

from mnist_pipeline import promotion, registry
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.gate import CandidateChecks, Scores, Thresholds, score_tags
from mnist_pipeline.report import code_aliases

from ..conftest import SAMPLE_REF

THRESHOLDS = Thresholds(
    min_accuracy=0.9,
    min_accuracy_gain=0.0,
    max_recall_drop=0.02,
    min_robust_accuracy=0.8,
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


def register(
    client: MlflowClient, model: str, scores: Scores | None = None, **tags: str
) -> str:
    """A new version; with ``scores``, recorded as measured on SAMPLE_REF's split."""
    recorded = {"test_digest": "t3st", **score_tags(scores)} if scores else {}
    version = client.create_model_version(model, source="dummy", tags=recorded | tags)
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


def promote(client, model, run_id, version, candidate, rescore=no_rescore):
    return promotion.compare_and_promote(
        client,
        run_id=run_id,
        model_name=model,
        version=version,
        candidate=candidate,
        checks=CHECKS,
        ref=SAMPLE_REF,
        thresholds=THRESHOLDS,
        rescore=rescore,
        logger=LOG,
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
