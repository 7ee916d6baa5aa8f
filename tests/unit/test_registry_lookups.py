"""Registry look-ups that decide whether to train: found, absent, or an error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

from mnist_pipeline import registry
from mnist_pipeline.gate import Scores

from ..conftest import SAMPLE_REF


class Versions:
    """``search_model_versions`` answering ``found``, or raising ``error``."""

    def __init__(self, found=(), error: MlflowException | None = None) -> None:
        self.found, self.error, self.filters = list(found), error, []

    def search_model_versions(self, filter_string):
        self.filters.append(filter_string)
        if self.error is not None:
            raise self.error
        return self.found


def _version(name: str, number: int) -> SimpleNamespace:
    return SimpleNamespace(name=name, version=str(number))


def test_the_oldest_version_of_the_model_holding_the_key_is_found():
    found = [_version("mnist-cnn", 4), _version("other", 1), _version("mnist-cnn", 2)]
    client = Versions(found)
    version = registry.first_tagged(client, "mnist-cnn", "training_key", "ab12-cd")
    assert version.version == "2"
    assert client.filters == ["tags.`training_key` = 'ab12-cd'"]


def test_no_version_or_no_model_yet_is_none():
    assert registry.first_tagged(Versions(), "mnist-cnn", "training_key", "k") is None
    missing = MlflowException("no model", error_code=RESOURCE_DOES_NOT_EXIST)
    client = Versions(error=missing)
    assert registry.first_tagged(client, "mnist-cnn", "training_key", "k") is None


def test_any_other_registry_error_fails_the_look_up():
    outage = MlflowException("database is down", error_code=INTERNAL_ERROR)
    with pytest.raises(MlflowException, match="database is down"):
        registry.first_tagged(Versions(error=outage), "mnist-cnn", "training_key", "k")


def test_a_key_that_is_not_a_digest_is_refused_before_the_query():
    client = Versions()
    with pytest.raises(ValueError, match="not a digest"):
        registry.first_tagged(client, "mnist-cnn", "training_key", "x' OR '1'='1")
    assert client.filters == []


def test_a_candidate_is_tagged_with_its_data_scores_and_lineage():
    ref = SAMPLE_REF
    tags = registry.candidate_tags(ref, Scores(95, 100, 0.9), {"training_key": "k"})
    assert tags == {
        "dataset": "mnist-sample",
        "dataset_digest": "d1g3st",
        "test_digest": "t3st",
        "test_accuracy": "0.9500",
        "test_correct": "95/100",
        "test_min_class_recall": "0.900000",
        "training_key": "k",
    }
