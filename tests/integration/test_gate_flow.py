"""The gate inside the training flow: first model promoted, a worse one kept out."""

from __future__ import annotations

import asyncio

import mlflow
from prefect.client.orchestration import get_client

from flows.training import mnist_training
from mnist_pipeline import registry, tracking_store

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
    assert first.verdict == "promoted to @champion (first champion; every check passed)"
    client = tracking_store.connect()
    assert registry.alias_version(client, "mnist-cnn", registry.CHAMPION) == "1"
    version = client.get_model_version("mnist-cnn", "1")
    tags = version.tags
    assert tags["gate.decision"] == "promoted"
    assert tags["gate.compared_with"] == "none"
    assert tags["test_correct"].endswith("/200")
    assert version.description.startswith(f"Test accuracy {first.test_accuracy:.4f} (")
    assert (
        "Gate: promoted to `@champion` (first champion; every check passed)."
        in version.description
    )
    assert "Trained on mnist-sample-subset400+200: dataset digest" in (
        version.description
    )
    decision = mlflow.artifacts.load_dict(f"runs:/{first.run_id}/gate/decision.json")
    assert decision["promote"] and decision["compared_with"] is None
    assert {c["name"] for c in decision["checks"]} == {
        "accuracy_floor",
        "robustness",
        "serving_smoke_test",
    }
    assert decision["figures"]["serving_max_difference"] <= 1e-4
    # The figures live in decision.json, not as one-bar charts before the curves.
    run = client.get_run(first.run_id)
    assert not [m for m in run.data.metrics if m.startswith("gate_")]

    # Another seed (another training), held to an impossible floor.
    strict = small_config(tmp_path, seed=1, min_accuracy=1.0, min_robust_accuracy=0.0)
    second = mnist_training(strict)
    assert not second.promoted and not second.skipped
    assert registry.alias_version(client, "mnist-cnn", registry.CHAMPION) == "1"
    assert registry.alias_version(client, "mnist-cnn", registry.CHALLENGER) == "2"
    tags = client.get_model_version("mnist-cnn", "2").tags
    assert tags["gate.decision"] == "rejected"
    assert tags["gate.compared_with"] == "v1"
    assert "required 1.0000" in tags["gate.reason"]
    # Same data: the champion's recorded scores on the same test split were used.
    description = client.get_model_version("mnist-cnn", "2").description
    assert "Compared with v1: same test split as v1" in description
    assert "Gate: kept as `@challenger`: " in description
    run = client.get_run(second.run_id)
    assert run.data.tags["gate.decision"] == "rejected"
    second_decision = mlflow.artifacts.load_dict(
        f"runs:/{second.run_id}/gate/decision.json"
    )
    assert "champion_accuracy" in second_decision["figures"]

    markdown = asyncio.run(_gate_artifact(run.data.tags["prefect.flow_run_id"]))
    assert "**rejected**" in markdown and "| accuracy_floor | **FAIL**" in markdown
    assert "Test split: same test split as v1" in markdown


def test_a_champion_tested_on_other_images_is_scored_again(
    prefect_api_url, mlflow_store, tmp_path
):
    lenient = {"min_accuracy": 0.0, "min_robust_accuracy": 0.0}
    mnist_training(small_config(tmp_path, **lenient))
    other = mnist_training(small_config(tmp_path, test_limit=100, **lenient))
    client = tracking_store.connect()
    version = client.get_model_version("mnist-cnn", other.version)
    assert version.tags["gate.compared_with"] == "v1"
    assert "Compared with v1: v1 was tested on " in version.description
    assert "re-scored on this run's test split" in version.description
    decision = mlflow.artifacts.load_dict(f"runs:/{other.run_id}/gate/decision.json")
    assert decision["lineage"].startswith("v1 was tested on ")
    figures = {f"gate_{k}": v for k, v in decision["figures"].items()}
    # Scored again on 100 images: a multiple of 1/100, not v1's /200 figure.
    assert round(figures["gate_champion_accuracy"] * 100, 6).is_integer()
