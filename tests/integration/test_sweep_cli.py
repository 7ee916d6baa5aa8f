"""``mnist-pipeline sweep`` refuses bad input in one paragraph, before any run."""

from __future__ import annotations

import socket

import pytest

from .conftest import run_cli


def _error(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr.strip()
    assert error.startswith("Error: ") and "\n" not in error
    return error


def test_invalid_grid_file_names_the_file_and_the_value(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("learning_rate: [0.01, 0]\nconv_filters: [[30, 15], [8]]\n")
    error = _error(run_cli("sweep", "--grid", str(grid), cwd=tmp_path))
    assert f"The grid file {grid} is invalid" in error
    assert "learning_rate.1: Input should be greater than 0" in error
    assert "conv_filters.1" in error
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--workers", "0"], "--workers: Input should be greater than or equal to 1"),
        (
            ["--workers", "2", "--dask-address", "tcp://127.0.0.1:8786"],
            "--workers: Value error, sizes the local cluster",
        ),
        (["--train-limit", "5"], "--train-limit: Input should be greater"),
    ],
)
def test_invalid_options_are_one_paragraph(tmp_path, options, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text("epochs: [1]\n")
    error = _error(run_cli("sweep", "--grid", str(grid), *options, cwd=tmp_path))
    assert message in error


def test_unreachable_dask_scheduler_is_reported_before_anything_runs(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("epochs: [1]\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        result = run_cli(
            "sweep", "--grid", str(grid), "--dask-address", address, cwd=tmp_path
        )
    error = _error(result)
    assert f"No Dask scheduler answers at {address}" in error
    assert "leave out --dask-address" in error
    assert not (tmp_path / "mlflow.db").exists()
