"""The tf.distribute strategy follows the devices and cluster present."""

from __future__ import annotations

import json

import pytest

from mnist_pipeline.distribute import (
    choose_strategy,
    cluster_size,
    make_strategy,
    strategy_kind,
)
from mnist_pipeline.errors import DistributeConfigError

TWO_WORKERS = json.dumps(
    {
        "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
        "task": {"type": "worker", "index": 0},
    }
)


@pytest.mark.parametrize(
    ("gpus", "tf_config", "kind"),
    [
        (0, None, "default"),
        (1, None, "default"),
        (1, "", "default"),
        (2, None, "mirrored"),
        (8, None, "mirrored"),
        (0, TWO_WORKERS, "multi_worker"),
        (4, TWO_WORKERS, "multi_worker"),
        (2, json.dumps({"cluster": {}}), "mirrored"),
    ],
)
def test_strategy_kind_follows_devices_and_cluster(gpus, tf_config, kind):
    assert strategy_kind(gpus, tf_config) == kind


def test_cluster_size_counts_chief_and_workers_only():
    config = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"], "ps": ["d:1"]}}
    assert cluster_size(json.dumps(config)) == 3


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '{"cluster": 3}'])
def test_bad_tf_config_is_an_actionable_error(bad):
    with pytest.raises(DistributeConfigError, match="TF_CONFIG is not a cluster"):
        strategy_kind(0, bad)


def test_one_cpu_trains_with_the_default_strategy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = choose_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert strategy is make_strategy("default")


def test_a_cluster_of_several_workers_is_refused_before_training(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", TWO_WORKERS)
    with pytest.raises(DistributeConfigError, match="keras-team/keras#20585"):
        choose_strategy()
