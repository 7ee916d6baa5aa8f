"""deployments/production.prefect.yaml stays in step with the code it deploys.

No Docker daemon or Kubernetes cluster runs here; this checks everything the
file names that exists in the project: entrypoints, flow names, typed configs,
the Dockerfile, and the environment the flows read.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from mnist_pipeline.config import (
    HistoryConfig,
    PromoteConfig,
    RollbackConfig,
    SweepConfig,
    TrainConfig,
)
from mnist_pipeline.runtime import ENVIRONMENT_DEFAULTS

REPO = Path(__file__).resolve().parents[2]
FLOWS = {
    "nightly": ("mnist-training", TrainConfig),
    "weekly-sweep": ("mnist-sweep", SweepConfig),
    "rollback": ("mnist-rollback", RollbackConfig),
    "promote": ("mnist-promote", PromoteConfig),
    "history": ("mnist-champion-history", HistoryConfig),
}
#: Deployments whose every run must give its own config (no default).
NO_DEFAULT_CONFIG = {"promote"}
# The variables of the work pool's base job template (deployments/kubernetes.py).
KUBERNETES_VARIABLES = set(
    json.loads((REPO / "deployments/kubernetes-job-template.json").read_text())[
        "variables"
    ]["properties"]
)


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load((REPO / "deployments/production.prefect.yaml").read_text())


def _flow(entrypoint: str):
    path, name = entrypoint.split(":")
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_each_deployment_runs_its_flow_with_a_valid_config(project, name):
    (deployment,) = [d for d in project["deployments"] if d["name"] == name]
    flow_name, config_type = FLOWS[name]
    assert _flow(deployment["entrypoint"]).name == flow_name
    if name in NO_DEFAULT_CONFIG:
        assert "parameters" not in deployment
    else:
        config = config_type(**deployment["parameters"]["config"])
        assert config is not None
    assert deployment["work_pool"]["name"] == "mnist-k8s"


def test_sweep_runs_on_the_dask_cluster_with_a_shared_work_folder(project):
    (sweep,) = [d for d in project["deployments"] if d["name"] == "weekly-sweep"]
    config = SweepConfig(**sweep["parameters"]["config"])
    assert config.dask_address.startswith("tcp://")
    assert len(config.grid.trials()) == 12
    # The work folder lies on the volume every flow-run pod mounts (the
    # persistent claim of the job template), at the same path in each.
    template = json.loads(
        (REPO / "deployments/kubernetes-job-template.json").read_text()
    )
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "mnist-work"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "mnist-work"]
    assert "persistentVolumeClaim" in volume
    workdir = Path(config.training.workdir)
    assert workdir.is_relative_to(mount["mountPath"]), (workdir, mount)


def test_flow_runs_get_the_environment_the_cli_would_set(project):
    for deployment in project["deployments"]:
        variables = deployment["work_pool"]["job_variables"]
        assert set(variables) <= KUBERNETES_VARIABLES
        env = variables["env"]
        for key, value in ENVIRONMENT_DEFAULTS.items():
            if not key.startswith("PREFECT_SERVER"):  # the CLI's temporary server
                assert env[key] == value, key
        assert env["MLFLOW_TRACKING_URI"].startswith("http")


def test_the_image_holds_the_project_where_the_pull_step_looks(project):
    dockerfile = (REPO / "Dockerfile").read_text()
    (build,) = project["build"]
    assert (
        REPO
        / build["prefect_docker.deployments.steps.build_docker_image"]["dockerfile"]
    ).is_file()
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE)
    (pull,) = project["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"] == {
        "directory": workdir
    }
    copied = set(re.findall(r"^COPY (\S+) \1$", dockerfile, re.MULTILINE))
    assert {"mnist_pipeline", "flows", "tasks", "deployments"} <= copied
    assert "-c requirements.lock" in dockerfile
