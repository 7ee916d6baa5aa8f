"""prefect.yaml and ``mnist-pipeline serve`` describe one and the same deployment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from deployments import nightly
from mnist_pipeline.cli import app
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.runtime import ENVIRONMENT_DEFAULTS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


@pytest.fixture(scope="module")
def deployment(project) -> dict:
    (found,) = [d for d in project["deployments"] if d["name"] == nightly.NAME]
    return found


def test_nightly_runs_the_training_flow_daily_at_two_utc(deployment):
    from flows.training import mnist_training

    path, function = deployment["entrypoint"].split(":")
    assert (REPO / path).is_file()
    assert function == mnist_training.fn.__name__
    assert mnist_training.name == "mnist-training"
    assert deployment["schedules"] == [
        {"cron": "0 2 * * *", "timezone": "UTC", "active": True}
    ]


def test_serve_registers_the_same_deployment(deployment):
    assert nightly.DEFAULT_CRON == deployment["schedules"][0]["cron"]
    assert nightly.TIMEZONE == deployment["schedules"][0]["timezone"]
    assert nightly.TAGS == deployment["tags"]
    assert nightly.DESCRIPTION == " ".join(deployment["description"].split())
    assert nightly.PARAMETERS == deployment["parameters"]
    assert deployment["concurrency_limit"] == {
        "limit": nightly.CONCURRENCY_LIMIT,
        "collision_strategy": nightly.COLLISION_STRATEGY,
    }
    serve = get_command(app).commands["serve"]
    (cron,) = [p for p in serve.params if p.name == "cron"]
    assert cron.default == nightly.DEFAULT_CRON


def test_scheduled_runs_never_fall_back_to_the_sample(deployment):
    config = TrainConfig(**deployment["parameters"]["config"])
    assert config.data == "mnist"  # a failed download fails the run


def test_process_pool_runs_from_the_project_folder(project, deployment):
    assert deployment["work_pool"]["name"] == "mnist-process"
    assert project["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}
    ]


def test_flow_runs_get_the_cli_environment_defaults(deployment):
    # Worker-started runs never pass through the CLI's configure_environment().
    # The server settings only matter for the CLI's temporary server.
    expected = {
        k: v
        for k, v in ENVIRONMENT_DEFAULTS.items()
        if not k.startswith("PREFECT_SERVER")
    }
    assert deployment["work_pool"]["job_variables"]["env"] == expected


def test_the_commands_a_flow_module_documents_exist():
    """A command in a flow's docstring runs something: no dead instructions."""
    commands = set(get_command(app).commands)
    for path in sorted((REPO / "flows").glob("*.py")):
        source = path.read_text()
        for name in re.findall(r"python -m flows\.(\w+)", source):
            assert name == path.stem and 'if __name__ == "__main__":' in source, (
                f"{path.name} documents `python -m flows.{name}`, which runs nothing"
            )
        for command in re.findall(r"``mnist-pipeline ([a-z-]+)", source):
            assert command in commands, f"{path.name}: mnist-pipeline {command}"
