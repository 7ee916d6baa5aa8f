"""The gate against the registry, on an in-memory registry (no Prefect, no models)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mnist_pipeline import promotion, registry
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.gate import CandidateChecks, Scores, Thresholds, score_tags

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


class Registry:
    """The few MlflowClient calls the promotion makes, over dictionaries.

    ``moves`` are versions another writer sets ``@champion`` to, one before
    each of the next alias reads.
    """

    def __init__(self, tags: dict[str, dict[str, str]], champion: str | None = None):
        self.tags, self.champion, self.moves = tags, champion, []

    def get_model_version_by_alias(self, name, alias):
        if self.moves:
            self.champion = self.moves.pop(0)
        if alias != registry.CHAMPION or self.champion is None:
            raise MlflowException(
                f"Registered model alias {alias} not found.",
                error_code=INVALID_PARAMETER_VALUE,
            )
        return SimpleNamespace(version=self.champion)

    def get_model_version(self, name, version):
        return SimpleNamespace(version=version, tags=self.tags[version])

    def set_model_version_tag(self, name, version, key, value):
        self.tags[version][key] = value

    def set_registered_model_alias(self, name, alias, version):
        self.champion = version

    def set_registered_model_tag(self, name, key, value):
        pass


def _tested(scores: Scores, test_digest: str = "t3st") -> dict[str, str]:
    return {"test_digest": test_digest, **score_tags(scores)}


def _promote(client, candidate: Scores, rescore=None):
    def no_rescore(version):
        raise AssertionError(f"v{version} has recorded scores on this split")

    return promotion.compare_and_promote(
        client,
        run_id="run-2",
        model_name="mnist-cnn",
        version="2",
        candidate=candidate,
        checks=CHECKS,
        ref=SAMPLE_REF,
        thresholds=THRESHOLDS,
        rescore=rescore or no_rescore,
        logger=LOG,
    )


def test_the_first_candidate_becomes_champion():
    client = Registry({"2": {}})
    outcome = _promote(client, Scores(95, 100, 0.9))
    assert outcome.decision.promote and outcome.compared_with is None
    assert outcome.lineage == "no champion yet"
    assert client.champion == "2"
    assert client.tags["2"]["champion.previous"] == ""


def test_a_better_candidate_replaces_the_champion_scored_on_the_same_split():
    client = Registry({"1": _tested(Scores(94, 100, 0.9)), "2": {}}, champion="1")
    outcome = _promote(client, Scores(95, 100, 0.9))
    assert outcome.decision.promote and outcome.compared_with == "1"
    assert outcome.lineage == "same test split as v1 (t3st)"
    assert client.champion == "2" and client.tags["2"]["champion.previous"] == "1"


def test_an_equal_candidate_leaves_the_champion():
    client = Registry({"1": _tested(Scores(95, 100, 0.9)), "2": {}}, champion="1")
    outcome = _promote(client, Scores(95, 100, 0.9))
    assert not outcome.decision.promote
    assert client.champion == "1" and "champion.previous" not in client.tags["2"]


def test_a_champion_tested_on_other_images_is_rescored():
    tags = {**_tested(Scores(99, 100, 0.99), "0ther"), "dataset": "mnist"}
    client = Registry({"1": tags, "2": {}}, champion="1")
    rescored = []

    def rescore(version):
        rescored.append(version)
        return Scores(90, 100, 0.9)

    outcome = _promote(client, Scores(95, 100, 0.9), rescore)
    assert rescored == ["1"] and outcome.decision.promote
    assert outcome.lineage.startswith("v1 was tested on 0ther and trained on mnist")
    assert "re-scored on this run's test split t3st" in outcome.lineage


def test_a_champion_moved_during_the_comparison_is_compared_again():
    scores = {"1": Scores(90, 100, 0.9), "3": Scores(94, 100, 0.9)}
    client = Registry({v: _tested(s) for v, s in scores.items()} | {"2": {}}, "1")
    client.moves = ["1", "3"]  # v3 is promoted between the read and the move
    outcome = _promote(client, Scores(95, 100, 0.9))
    assert outcome.compared_with == "3" and client.champion == "2"
    assert client.tags["2"]["champion.previous"] == "3"


def test_a_champion_that_keeps_moving_fails_the_gate():
    client = Registry({"1": _tested(Scores(90, 100, 0.9)), "2": {}}, champion="1")
    client.moves = ["1", "3"] * 3
    with pytest.raises(RegistryError, match="moved 3 times"):
        _promote(client, Scores(95, 100, 0.9))
    assert client.champion == "3"


def test_a_retried_run_whose_move_went_through_is_not_compared_with_itself():
    client = Registry({"2": {}}, champion="2")
    outcome = _promote(client, Scores(95, 100, 0.9))
    assert outcome.compared_with == "2" and outcome.decision.promote
    assert outcome.lineage == "v2 is this version already"
    assert "champion.previous" not in client.tags["2"]


def test_the_record_holds_the_verdict_figures_and_a_description():
    client = Registry({"1": _tested(Scores(94, 100, 0.9)), "2": {}}, champion="1")
    outcome = _promote(client, Scores(95, 100, 0.9))
    record = promotion.gate_record(outcome, Scores(95, 100, 0.9), SAMPLE_REF)
    assert record.tags == {
        "gate.decision": "promoted",
        "gate.compared_with": "v1",
        "gate.reason": outcome.verdict,
        "gate.test_split": "same test split as v1 (t3st)",
    }
    assert record.metrics["gate_candidate_accuracy"] == 0.95
    assert record.metrics["gate_champion_accuracy"] == 0.94
    assert record.record["compared_with"] == "1" and record.record["promote"]
    assert record.description == (
        "Trained on mnist-sample (dataset d1g3st); test accuracy 0.9500 (95/100). "
        f"Gate: {outcome.verdict}."
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
