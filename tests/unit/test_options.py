"""The commands' options are the config models' fields, and --config feeds them."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.main import get_command

# The flows the commands import, imported here first: importing them inside a
# command after tests/unit/test_serving.py in one process closed pytest's
# captured stderr (every later test then errored).
import flows.sweep  # noqa: F401
import flows.training  # noqa: F401
from mnist_pipeline import cli
from mnist_pipeline.config import (
    SWEPT_FIELDS,
    HistoryConfig,
    PredictConfig,
    PromoteConfig,
    PruneConfig,
    RollbackConfig,
    ServeConfig,
    SweepConfig,
    TrainConfig,
)

COMMANDS = get_command(cli.app).commands


def _options(command: str) -> dict[str, object]:
    """The command's options by parameter name (its --config and --help aside)."""
    params = COMMANDS[command].params
    return {p.name: p for p in params if p.name not in ("config_file", "help")}


@pytest.mark.parametrize(
    ("command", "models", "exclude"),
    [
        ("train", [TrainConfig], ()),
        ("predict", [PredictConfig], ("drift",)),
        ("serve-model", [ServeConfig], ()),
        ("prune", [PruneConfig], ()),
        ("promote", [PromoteConfig], ()),
        ("rollback", [RollbackConfig], ()),
        ("history", [HistoryConfig], ()),
        ("sweep", [TrainConfig, SweepConfig], (*SWEPT_FIELDS, "grid", "training")),
    ],
)
def test_every_config_field_is_an_option_with_its_default_and_help(
    command, models, exclude
):
    options = _options(command)
    fields = {
        name: field
        for model in models
        for name, field in model.model_fields.items()
        if name not in exclude
    }
    extra = {"grid"} if command == "sweep" else set()  # the grid file
    assert set(options) == set(fields) | extra
    for name, field in fields.items():
        option = options[name]
        assert f"--{name.replace('_', '-')}" in option.opts
        assert option.help.startswith(field.description or "")
        if not field.is_required():
            assert option.default == field.get_default(call_default_factory=True)


def test_bounds_and_the_older_model_flag_reach_the_help():
    train, predict = _options("train"), _options("predict")
    assert "[>=1, <=1000]" in train["epochs"].help
    assert "--model" in predict["model_uri"].opts
    assert "(required)" in predict["input"].help
    assert train["retrain"].secondary_opts == ["--no-retrain"]


@pytest.fixture
def flow_call(monkeypatch):
    """What the command would run: the flow's name and its config (no run)."""
    called = {}

    def run(launch, flow, config):
        called.update(flow=flow.name, config=config)
        raise typer.Exit(0)

    monkeypatch.setattr(cli, "_launch", lambda: None)
    monkeypatch.setattr(cli, "_run", run)
    return called


@dataclass
class _Result:
    exit_code: int
    output: str


@pytest.fixture
def invoke():
    """Run ``mnist-pipeline ARGS`` in this process; its exit code and output.

    Through click's own entry, its output into a buffer of this test (typer's
    CliRunner and pytest's own capture both swap the process's streams; after
    the serving tests in one process, one of them closed the other's).
    """

    def run(*args: str) -> _Result:
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            code = get_command(cli.app).main(
                list(args), prog_name="mnist-pipeline", standalone_mode=False
            )
        return _Result(code or 0, output.getvalue())

    return run


def test_a_config_file_sets_fields_and_the_command_line_overrides_it(
    tmp_path: Path, flow_call, invoke
):
    config = tmp_path / "night.yaml"
    config.write_text("data: sample\nepochs: 3\nseed: 7\nmnist_origin: http://m/x\n")
    result = invoke("train", "--config", str(config), "--seed", "3", "--retrain")
    assert result.exit_code == 0, result.output
    assert flow_call["flow"] == "mnist-training"
    built = flow_call["config"]
    assert (built.data, built.epochs, built.seed, built.retrain) == (
        "sample",
        3,
        3,
        True,
    )
    assert built.mnist_origin == "http://m/x"
    # Fields neither file nor command line set keep the model's defaults.
    assert built.batch_size == TrainConfig().batch_size


def test_a_sweep_config_file_is_a_deployments_sweep_parameters(
    tmp_path: Path, flow_call, invoke
):
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "grid:\n  epochs: [1, 2]\ntraining:\n  data: sample\n  seed: 4\nworkers: 1\n"
    )
    result = invoke("sweep", "--config", str(config), "--test-limit", "100")
    assert result.exit_code == 0, result.output
    built: SweepConfig = flow_call["config"]
    assert built.grid.epochs == (1, 2) and built.workers == 1
    assert (built.training.data, built.training.seed) == ("sample", 4)
    assert built.training.test_limit == 100


def test_invalid_options_are_one_line_each_naming_the_option(
    tmp_path, flow_call, invoke
):
    result = invoke("train", "--epochs", "0", "--seed", "-1")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: Invalid option(s): --epochs: ")
    assert "; --seed: " in line
    grid = tmp_path / "grid.yaml"
    grid.write_text("epochs: [1]\n")
    result = invoke("sweep", "--grid", str(grid), "--seed", "-1")
    assert "Invalid option(s): --seed: " in result.output  # not --training-seed
    result = invoke("sweep", "--data", "sample")
    assert "--grid FILE is required" in result.output


def test_a_broken_config_file_is_refused_in_one_line(tmp_path, flow_call, invoke):
    listed = tmp_path / "list.yaml"
    listed.write_text("- epochs\n")
    result = invoke("train", "--config", str(listed))
    assert result.exit_code == 1
    assert "expected a mapping of config fields, got list" in result.output
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epoch: 3\n")
    result = invoke("train", "--config", str(unknown))
    assert "--epoch: Extra inputs are not permitted" in result.output
