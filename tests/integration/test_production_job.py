"""The Kubernetes job a production flow run gets, rendered as the worker does.

No cluster runs here; prefect-kubernetes renders the work pool's base job
template (``deployments/kubernetes-job-template.json``) with each deployment's
job variables, the way its worker does before creating the job.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import yaml
from prefect.client.schemas.objects import FlowRun

from deployments import kubernetes
from mnist_pipeline.config import SweepConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"nightly": TrainConfig, "weekly-sweep": SweepConfig}


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load((REPO / "deployments/production.prefect.yaml").read_text())


def test_the_shipped_template_is_prefects_own_plus_the_volume():
    shipped = json.loads(kubernetes.TEMPLATE_FILE.read_text())
    assert shipped == kubernetes.job_template(), (
        "stale: run python -m deployments.kubernetes"
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_flow_run_gets_the_work_volume_it_writes_to(prefect_api_url, project, name):
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    (deployment,) = [d for d in project["deployments"] if d["name"] == name]
    values = dict(deployment["work_pool"]["job_variables"])
    values["image"] = "registry.example.com/mlops/mnist-pipeline:test"  # the build
    template = json.loads(kubernetes.TEMPLATE_FILE.read_text())
    assert set(values) <= set(template["variables"]["properties"])
    job = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(template, values)
    )
    job.prepare_for_flow_run(
        FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="nightly-run")
    )
    pod = job.job_manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = mounts[kubernetes.MOUNT_PATH]
    (claim,) = [v for v in pod["volumes"] if v["name"] == volume]
    assert claim["persistentVolumeClaim"]["claimName"] == values["work_volume_claim"]

    # Everything the run keeps lands on that volume.
    env = {e["name"]: e["value"] for e in container["env"]}
    config = CONFIGS[name](**deployment["parameters"]["config"])
    training = config if isinstance(config, TrainConfig) else config.training
    for path in (env["KERAS_HOME"], training.workdir):
        assert Path(path).is_relative_to(kubernetes.MOUNT_PATH), path
    assert job.namespace == "mlops"
    assert container["image"] == values["image"]
