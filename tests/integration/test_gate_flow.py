"""The gate inside the training flow: first model promoted, a worse one kept out."""

from __future__ import annotations

import asyncio

from prefect.client.orchestration import get_client

from flows.training import mnist_training
from mnist_pipeline import tracking

from .test_flow import small_config


async def _gate_artifact(flow_run_id: str) -> str:
    async with get_client() as client:
        artifacts = await client.read_artifacts()
    (artifact,) = [
        a
        for a in artifacts
        if str(a.flow_run_id) == flow_run_id and a.key == "promotion-gate"
    ]
    return artifact.data


def test_first_passing_model_is_promoted_then_a_failing_one_is_not(
    prefect_api_url, mlflow_store, tmp_path
):
    lenient = small_config(tmp_path, min_accuracy=0.0, min_robust_accuracy=0.0)
    first = mnist_training(lenient)
    assert first.promoted
    client = tracking.connect()
    assert tracking.alias_version(client, "mnist-cnn", tracking.CHAMPION) == "1"
    tags = client.get_model_version("mnist-cnn", "1").tags
    assert tags["gate.decision"] == "promoted"
    assert tags["gate.compared_with"] == "none"
    assert float(tags["gate.figure.serving_agreement"]) == 1.0
    assert tags["gate.serving_smoke_test"].startswith("pass")

    strict = small_config(tmp_path, min_accuracy=1.0, min_robust_accuracy=0.0)
    second = mnist_training(strict)
    assert not second.promoted
    assert tracking.alias_version(client, "mnist-cnn", tracking.CHAMPION) == "1"
    assert tracking.alias_version(client, "mnist-cnn", tracking.CHALLENGER) == "2"
    tags = client.get_model_version("mnist-cnn", "2").tags
    assert tags["gate.decision"] == "rejected"
    assert tags["gate.compared_with"] == "v1"
    assert "required 1.0000" in tags["gate.reasons"]
    # The champion was scored on this run's test split, the same one.
    assert "gate.figure.champion_accuracy" in tags
    run = client.get_run(second.run_id)
    assert run.data.tags["gate.decision"] == "rejected"
    assert "gate_champion_accuracy" in run.data.metrics

    markdown = asyncio.run(_gate_artifact(run.data.tags["prefect.flow_run_id"]))
    assert "**rejected**" in markdown and "| accuracy_floor | **FAIL**" in markdown
