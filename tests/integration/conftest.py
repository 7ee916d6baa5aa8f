"""Integration fixtures: a real Prefect server for the session, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_api_url() -> str:
    """A temporary Prefect server and database for the whole session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout=600):
    """Run ``mnist-pipeline`` as a user would, in its own process."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))
    }
    environment.update(env or {})
    command = [sys.executable, "-m", "mnist_pipeline.cli", *args]
    return subprocess.run(
        command,
        check=False,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
