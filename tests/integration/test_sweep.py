"""The sweep flow on real Dask clusters, against real Prefect and MLflow.

Trials overlap when they run at the same time: the test reads each trial's
MLflow run start and end, as recorded, never how fast anything went.
"""

from __future__ import annotations

import asyncio
import os
import re

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)

from flows.sweep import mnist_sweep
from mnist_pipeline import registry, sweep_runs, tracking_store
from mnist_pipeline.config import SweepConfig, SweepGrid, TrainConfig
from mnist_pipeline.errors import SweepError
from mnist_pipeline.sweep import max_concurrency

TRIAL_KEYS = {"learning_rate", "batch_size", "dropout", "conv_filters", "epochs"}


def sweep_config(tmp_path, grid: SweepGrid, **options) -> SweepConfig:
    """Tiny trials: 300 training images of the bundled sample (270 after the
    validation split), 100 test images."""
    gate = options.pop("gate", {})
    training = TrainConfig(
        data="sample",
        train_limit=300,
        test_limit=100,
        workdir=str(tmp_path / "outputs"),
        experiment="sweep",
        **gate,
    )
    return SweepConfig(grid=grid, training=training, **options)


async def _prefect_view(parent_id: str):
    async with get_client() as client:
        parent = await client.read_flow_run(parent_id)
        (subflow,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
            )
        )
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[subflow.id]))
        )
        artifacts = await client.read_artifacts()
    table = next(
        a for a in artifacts if a.key == "sweep-trials" and a.flow_run_id == parent.id
    )
    trials = {
        t.name: t.state.type.value
        for t in task_runs
        if re.fullmatch(r"trial-\d+", t.name)
    }
    return parent, subflow, trials, table


def _trials_table(client, run_id: str) -> pd.DataFrame:
    path = client.download_artifacts(run_id, "sweep/trials.json")
    return pd.read_json(path, orient="split")


def test_four_trials_run_in_parallel_and_only_the_best_is_registered(
    prefect_api_url, mlflow_store, tmp_path
):
    grid = SweepGrid(learning_rate=[0.01, 0.003], batch_size=[64, 100], epochs=[1])
    result = mnist_sweep(sweep_config(tmp_path, grid, workers=2))

    client = tracking_store.connect()
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    children = sweep_runs.child_runs(client, result.experiment_id, result.run_id)
    assert sorted(children) == [0, 1, 2, 3]
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert {r.data.params["batch_size"] for r in children.values()} == {"64", "100"}
    for run in children.values():
        assert TRIAL_KEYS <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1]

    # Parallel: trial runs overlapped in time, in two worker processes.
    assert max_concurrency(result.trials) >= 2
    spans = [(r.info.start_time, r.info.end_time) for r in children.values()]
    assert any(
        a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :]
    )
    workers = {r.data.tags["sweep.worker"] for r in children.values()}
    assert len(workers) == 2
    assert not any(w.endswith(f":{os.getpid()}") for w in workers)

    # The best on validation accuracy, and only it, was registered and gated.
    val = {i: r.data.metrics["val_accuracy"] for i, r in children.items()}
    assert val[result.best_trial] == max(val.values())
    (version,) = client.search_model_versions("name='mnist-cnn'")
    assert (
        version.run_id == result.best_run_id == children[result.best_trial].info.run_id
    )
    assert version.tags["gate.decision"] == (
        "promoted" if result.promoted else "rejected"
    )
    best_run = client.get_run(result.best_run_id)
    assert "test_accuracy" in best_run.data.metrics
    assert parent.data.tags["sweep.best_run_id"] == result.best_run_id
    assert parent.data.tags["sweep.registered_version"] == "1"
    assert parent.data.metrics["max_concurrent_trials"] >= 2
    table = _trials_table(client, result.run_id)
    assert list(table["status"]) == ["FINISHED"] * 4
    assert list(table["best"]) == [i == result.best_trial for i in range(4)]

    flow_run, subflow, trials, artifact = asyncio.run(
        _prefect_view(parent.data.tags["prefect.flow_run_id"])
    )
    assert flow_run.state.is_completed() and subflow.state.is_completed()
    assert subflow.flow_id != flow_run.flow_id
    assert trials == {f"trial-{i}": "COMPLETED" for i in range(4)}
    assert artifact.type == "table" and result.best_run_id in artifact.data


@pytest.fixture(scope="module")
def dask_cluster(prefect_api_url):
    """An existing two-worker cluster, reached by scheduler address only."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",
        env={"PREFECT_API_URL": prefect_api_url},
    ) as cluster:
        yield cluster.scheduler_address


def test_a_failing_trial_is_reported_and_the_others_go_on(
    prefect_api_url, mlflow_store, tmp_path, dask_cluster
):
    # 1,000 images per batch is a valid grid value, but trial 1 trains on 270.
    grid = SweepGrid(learning_rate=[0.01], batch_size=[100, 1000], epochs=[1])
    lenient = {"min_accuracy": 0.0, "min_robust_accuracy": 0.0}
    config = sweep_config(tmp_path, grid, dask_address=dask_cluster, gate=lenient)
    result = mnist_sweep(config)

    ok, failed = sorted(result.trials, key=lambda t: t.index)
    assert ok.status == "FINISHED" and failed.status == "FAILED"
    assert "Batch size 1000 is larger than the 270 training images" in failed.error
    client = tracking_store.connect()
    children = sweep_runs.child_runs(client, result.experiment_id, result.run_id)
    assert children[1].info.status == "FAILED"
    assert "Batch size 1000" in children[1].data.tags["failure_reason"]
    assert children[0].info.status == "FINISHED"

    assert result.best_trial == 0 and result.promoted
    (version,) = client.search_model_versions("name='mnist-cnn'")
    assert version.run_id == children[0].info.run_id
    assert registry.alias_version(client, "mnist-cnn", registry.CHAMPION) == "1"
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["failed_trials"] == 1
    table = _trials_table(client, result.run_id)
    assert list(table["status"]) == ["FINISHED", "FAILED"]
    assert "Batch size 1000" in table["error"][1]

    _, _, trials, _ = asyncio.run(
        _prefect_view(parent.data.tags["prefect.flow_run_id"])
    )
    assert trials == {"trial-0": "COMPLETED", "trial-1": "FAILED"}


def test_a_sweep_whose_trials_all_fail_fails_with_every_reason(
    prefect_api_url, mlflow_store, tmp_path, dask_cluster
):
    grid = SweepGrid(batch_size=[1000, 2000], epochs=[1])
    with pytest.raises(SweepError, match="All 2 trials failed: trial 0: SweepError"):
        mnist_sweep(sweep_config(tmp_path, grid, dask_address=dask_cluster))
    client = tracking_store.connect()
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("sweep").experiment_id],
        filter_string="tags.`sweep.parent` = 'true'",
    )
    assert parent.info.status == "FAILED"
    assert "All 2 trials failed" in parent.data.tags["failure_reason"]
    assert list(_trials_table(client, parent.info.run_id)["status"]) == ["FAILED"] * 2
    assert client.search_registered_models() == []
