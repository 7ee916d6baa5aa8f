"""The gate inside the training flow: first model promoted, a worse one kept out,
a clearly better one promoted on the paired test's evidence."""

from __future__ import annotations

import asyncio

import mlflow
import numpy as np
import pytest
from prefect.client.orchestration import get_client
from scipy.stats import binomtest

from flows.training import mnist_training
from mnist_pipeline import gate, registry, tracking_store

from .test_flow import small_config

#: The clearly better candidate's epochs against a 1-epoch champion on the same
#: 400 training images (measured: 162/200 right against 31/200, c=138, b=7,
#: p = 5e-33; the training is a second of the test's minute, the rest is two
#: flow runs).
EPOCHS = 8


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
    # The re-scoring says which of the 100 images v1 gets right: the paired
    # test ran on them and its figures are on the version.
    paired = decision["paired_test"]
    assert paired is not None and paired["c"] + paired["b"] <= 100
    assert version.tags["gate.p_value"] == f"{paired['p_value']:.4g}"
    assert version.tags["gate.only_champion_right"] == str(paired["b"])


def test_a_clearly_better_candidate_is_promoted_with_its_p_value(
    prefect_api_url, mlflow_store, tmp_path
):
    lenient = {"min_accuracy": 0.0, "min_robust_accuracy": 0.0}
    weak = mnist_training(small_config(tmp_path, **lenient))
    strong = mnist_training(small_config(tmp_path, epochs=EPOCHS, **lenient))
    max_p = small_config(tmp_path).max_p_value
    assert max_p == 0.05, "the paired test is on by default"
    assert weak.promoted and strong.promoted and strong.version == "2"
    client = tracking_store.connect()
    assert registry.alias_version(client, "mnist-cnn", registry.CHAMPION) == "2"

    version = client.get_model_version("mnist-cnn", "2")
    tags = version.tags
    c = int(tags["gate.only_candidate_right"])
    b = int(tags["gate.only_champion_right"])
    # The counts are the two runs' answers on the same 200 test images.
    answers = [
        mlflow.artifacts.load_dict(f"runs:/{r.run_id}/{gate.PREDICTIONS_ARTIFACT}")
        for r in (strong, weak)
    ]
    assert answers[0]["labels"] == answers[1]["labels"]
    right = [np.equal(a["predicted"], a["labels"]) for a in answers]
    assert (c, b) == ((right[0] & ~right[1]).sum(), (right[1] & ~right[0]).sum())
    correct = {
        v: client.get_model_version("mnist-cnn", v).tags["test_correct"]
        for v in ("1", "2")
    }
    correct = {v: int(n.split("/")[0]) for v, n in correct.items()}
    assert c - b == correct["2"] - correct["1"] > 0
    p_value = binomtest(c, b + c, 0.5, alternative="greater").pvalue
    assert float(tags["gate.p_value"]) == pytest.approx(p_value, rel=1e-3)
    assert p_value <= max_p

    decision = mlflow.artifacts.load_dict(f"runs:/{strong.run_id}/gate/decision.json")
    paired = {"c": c, "b": b, "p_value": pytest.approx(p_value), "total": 200}
    assert decision["paired_test"] == paired
    (check,) = [x for x in decision["checks"] if x["name"] == "significant_improvement"]
    assert check["passed"] and check["threshold"] == max_p
    evidence = (
        f"better by {c - b} images of 200 (c={c}, b={b}), "
        f"p = {p_value:.2g} <= 0.05: a significant improvement"
    )
    assert strong.verdict == f"promoted to @champion over v1: {evidence}"
    assert tags["gate.reason"] == strong.verdict
    assert f"Gate: promoted to `@champion` over v1: {evidence}." in version.description
    markdown = asyncio.run(
        _gate_artifact(client.get_run(strong.run_id).data.tags["prefect.flow_run_id"])
    )
    assert f"only this version right **c = {c}**" in markdown
    assert f"**b = {b}**, **p = {p_value:.2g}**" in markdown
    assert "| significant_improvement | pass |" in markdown


def test_a_release_reason_gates_a_kept_training_again_by_the_release_rule(
    prefect_api_url, mlflow_store, tmp_path
):
    """The nightly kept the fix's training; the release command does not train it
    again but gates the same version by the release rule."""
    # Three epochs of small batches: two seeds land within a few images.
    lenient = {
        "min_accuracy": 0.0,
        "min_robust_accuracy": 0.0,
        "max_recall_drop": 1.0,
        "epochs": 3,
        "batch_size": 32,
    }
    champion = mnist_training(small_config(tmp_path, **lenient))
    assert champion.promoted
    same = small_config(tmp_path, **lenient)  # the same training: its key
    kept = mnist_training(same.model_copy(update={"seed": 1}))
    if kept.promoted:
        pytest.skip(f"seed 1 beat seed 0 significantly here: {kept.verdict}")
    release = same.model_copy(update={"seed": 1, "release_reason": "serving fix #12"})
    released = mnist_training(release)
    assert released.skipped and released.version == kept.version
    assert released.verdict.startswith("nothing trained; v2 holds this training; ")
    assert "gated by this run: " in released.verdict
    client = tracking_store.connect()
    tags = client.get_model_version("mnist-cnn", "2").tags
    assert tags["gate.reason"] in released.verdict
    paired = tags["gate.only_candidate_right"], tags["gate.only_champion_right"]
    if released.promoted:
        assert tags["gate.reason"].startswith(
            "released to @champion over v1 as a release that need not be better "
            "(serving fix #12): "
        )
        assert f"(c={paired[0]}, b={paired[1]})" in tags["gate.reason"]
        assert registry.alias_version(client, "mnist-cnn", registry.CHAMPION) == "2"
    else:
        assert "significantly worse (p of a loss this large = " in tags["gate.reason"]
