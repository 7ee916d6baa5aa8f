"""The ``mnist-pipeline`` command line: build a config, run a flow, report.

The options of every command are generated from its config model
(:mod:`mnist_pipeline.options`); the process set-up around a flow run lives in
:mod:`mnist_pipeline.launch`. Heavy imports (Prefect, TensorFlow, MLflow) happen
inside commands, after the process environment is configured, so ``--help`` is
instant.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

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
from mnist_pipeline.data import check_source
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.launch import Launch
from mnist_pipeline.options import (
    CONFIG_FILE,
    build,
    config_options,
    read_config_file,
    with_options,
)
from mnist_pipeline.options import given as options_given
from mnist_pipeline.predict import check_input
from mnist_pipeline.runtime import configure_environment
from mnist_pipeline.sweep import check_scheduler, format_table, load_grid, trial_rows

app = typer.Typer(
    help="Train, track and register a LeNet-style MNIST CNN with Prefect and MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
#: The model-URI options also answer to their earlier, shorter name.
_MODEL_ALIAS = {"model_uri": "--model"}


@app.callback()
def _group() -> None:
    """Train, track and register a LeNet-style MNIST CNN with Prefect and MLflow."""


_TRAIN = config_options(TrainConfig)


@app.command()
@with_options([CONFIG_FILE], _TRAIN)
def train(ctx: typer.Context, **options: object) -> None:
    """Train the CNN, log it to MLflow and register a new model version.

    Every option is a field of the training config (a deployment's
    parameters.config); --config FILE.yaml sets several at once.
    """
    config = _config(ctx, TrainConfig, options)
    _check(check_source, config.data)
    launch = _launch()
    from flows.training import mnist_training

    result = _run(launch, mnist_training, config=config)
    if result.skipped:
        launch.report(
            f"Already trained: {result.model_name} version {result.version} holds "
            f"this training (key {result.training_key}: same data, settings and "
            "code version); nothing trained or registered (--retrain trains again).",
            f"Promotion gate: {result.verdict}",
        )
        return
    launch.report(
        f"Test accuracy: {result.test_accuracy:.4f}",
        f"Promotion gate: {result.verdict}",
        f"MLflow run id: {result.run_id}",
        f"Registered model: {result.model_name} version {result.version}",
    )


#: A sweep's shared training settings: every training field the grid does not decide.
_SWEEP_TRAINING = config_options(
    TrainConfig, exclude=[f for f in SWEPT_FIELDS if f in TrainConfig.model_fields]
)
_SWEEP = config_options(SweepConfig, exclude=["grid", "training"])
_GRID_FILE = inspect.Parameter(
    "grid",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Path | None,
        typer.Option(
            help="YAML file listing the values to try for "
            f"{', '.join(SWEPT_FIELDS)}; one trial per combination "
            "[required unless --config holds a grid]",
            dir_okay=False,
        ),
    ],
)


@app.command()
@with_options([_GRID_FILE, CONFIG_FILE], _SWEEP_TRAINING, _SWEEP)
def sweep(ctx: typer.Context, **options: object) -> None:
    """Train one model per grid combination in parallel on Dask; gate the best.

    The options are the sweep config's fields and its shared training
    settings; --config FILE.yaml takes a sweep config (grid, training,
    dask_address, workers) as a deployment's parameters.config.
    """
    grid_file = options.pop("grid")
    values = _read(options.pop("config_file"))
    training = values.pop("training", None) or {}
    if not isinstance(training, dict):
        _fail("--config: 'training' must map training settings to values.")
    names = {p.name for p in _SWEEP_TRAINING}
    chosen = options_given(ctx, options)
    training = _build(
        TrainConfig,
        training | {k: v for k, v in chosen.items() if k in names},
        prefix="training",
    )
    values |= {k: v for k, v in chosen.items() if k not in names}
    if grid_file is not None:
        values["grid"] = _load_grid(grid_file)
    elif "grid" not in values:
        _fail("--grid FILE is required (or a 'grid' in the --config file).")
    config = _build(SweepConfig, values | {"training": training})
    _check(check_source, training.data)
    if config.dask_address:
        _check(check_scheduler, config.dask_address)
    launch = _launch()
    from flows.sweep import mnist_sweep

    result = _run(launch, mnist_sweep, config=config)
    if result.skipped:
        launch.report(
            f"Already swept: {result.model_name} version {result.version} holds "
            "this sweep's best trial (same grid, settings, data and code version); "
            "no trial ran (--retrain runs it again).",
            f"Promotion gate: {result.verdict}",
        )
        return
    failed = sum(t.status == "FAILED" for t in result.trials)
    best = next(t for t in result.trials if t.index == result.best_trial)
    verdict = result.verdict
    launch.report(
        format_table(trial_rows(result.trials, result.best_trial), TABLE_COLUMNS),
        f"Trials: {len(result.trials) - failed} finished, {failed} failed; "
        f"at most {result.max_concurrent_trials} ran at once",
        f"Best trial: {best.index} ({best.params.label()}), validation accuracy "
        f"{best.val_accuracy:.4f}, test accuracy {result.test_accuracy:.4f}",
        f"Promotion gate: {verdict}",
        f"MLflow parent run id: {result.run_id}",
        f"Best trial run id: {result.best_run_id}",
        f"Registered model: {result.model_name} version {result.version}",
    )


#: The trials table as ``mnist-pipeline sweep`` prints it.
TABLE_COLUMNS = (
    "trial",
    "best",
    "status",
    "learning_rate",
    "batch_size",
    "dropout",
    "conv_filters",
    "epochs",
    "augmentation",
    "val_accuracy",
    "seconds",
    "error",
)


def _load_grid(path: Path):
    try:
        return load_grid(path)
    except PipelineError as exc:
        _fail(str(exc))


@app.command()
def serve(
    cron: Annotated[
        str,
        typer.Option(help="When scheduled runs start: a cron expression in UTC."),
    ] = "0 2 * * *",
) -> None:
    """Serve the nightly deployment on its schedule until stopped (Ctrl+C).

    Needs a Prefect server (PREFECT_API_URL). Runs the flow in subprocesses, so
    it is `prefect deploy` plus a worker in one process, without a work pool.
    """
    configure_environment()
    from prefect.schedules import validate_cron_string
    from prefect.settings import get_current_settings

    from deployments.nightly import serve as serve_nightly

    try:
        validate_cron_string(cron)
    except ValueError as exc:
        _fail(f"Invalid option(s): --cron: {exc} (e.g. '0 2 * * *', 02:00 daily).")
    if not get_current_settings().api.url:
        _fail(
            "serve needs a Prefect server for its schedule: start one with "
            "`prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api."
        )
    serve_nightly(cron)


@app.command("drift-automation")
def drift_automation(
    webhook_url: Annotated[
        str,
        typer.Option(
            help="Where the automation POSTs its JSON message when a batch drifts "
            "(e.g. a Slack incoming webhook)."
        ),
    ],
    allow_private_url: Annotated[
        bool,
        typer.Option(
            help="Let the Prefect server call a private or loopback address "
            "(refused by default)."
        ),
    ] = False,
) -> None:
    """Create the drift automation and its webhook on the Prefect server.

    Needs a Prefect server (PREFECT_API_URL). Running it again replaces both.
    """
    configure_environment()
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        _fail(
            "drift-automation needs a Prefect server to hold the automation: "
            "start one with `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api."
        )
    from deployments.drift_automation import create_drift_automation

    automation_id = create_drift_automation(
        webhook_url, allow_private_urls=allow_private_url
    )
    typer.echo(f"Automation mnist-drift-alert: {automation_id}")


@app.command()
@with_options(
    [CONFIG_FILE],
    config_options(PredictConfig, exclude=["drift"], aliases=_MODEL_ALIAS),
)
def predict(ctx: typer.Context, **options: object) -> None:
    """Predict a batch of images with a registered model and write a CSV."""
    config = _config(ctx, PredictConfig, options)
    _check(check_input, config.input)
    launch = _launch()
    from flows.predict import mnist_predict

    result = _run(launch, mnist_predict, config=config)
    version = result.model_version or "unregistered"
    skipped = (
        [
            f"Unreadable or not one digit, skipped: {result.failed} file(s), "
            f"listed in {result.errors}"
        ]
        if result.failed
        else []
    )
    drift = {None: [], True: ["Input drift: detected"], False: ["Input drift: none"]}
    launch.report(
        f"Predicted {result.images} image(s) with {result.model_uri} (v{version})",
        *skipped,
        *drift[result.drift_detected],
        f"MLflow run id: {result.run_id}",
        f"Predictions: {result.output}",
    )


@app.command("serve-model")
@with_options([CONFIG_FILE], config_options(ServeConfig, aliases=_MODEL_ALIAS))
def serve_model(ctx: typer.Context, **options: object) -> None:
    """Serve a registered model over HTTP (MLflow's scoring protocol), bounded."""
    config = _config(ctx, ServeConfig, options)
    configure_environment()
    from mnist_pipeline.model_server import serve

    _check(serve, config, typer.echo)


@app.command()
@with_options([CONFIG_FILE], config_options(PromoteConfig))
def promote(ctx: typer.Context, **options: object) -> None:
    """Make a registered version the @champion without comparing it with the
    champion (recorded; a version below the gate's floors is refused)."""
    config = _config(ctx, PromoteConfig, options)
    launch = _launch()
    from flows.registry import promote_model

    launch.report(_run(launch, promote_model, config=config).sentence())


@app.command()
@with_options([CONFIG_FILE], config_options(RollbackConfig))
def rollback(ctx: typer.Context, **options: object) -> None:
    """Move @champion back one step, or --to an earlier champion (recorded)."""
    config = _config(ctx, RollbackConfig, options)
    launch = _launch()
    from flows.registry import rollback_model

    launch.report(_run(launch, rollback_model, config=config).sentence())


@app.command()
@with_options([CONFIG_FILE], config_options(HistoryConfig))
def history(ctx: typer.Context, **options: object) -> None:
    """Print every move of @champion (when, from, to, by, who, why), newest first."""
    config = _config(ctx, HistoryConfig, options)
    launch = _launch()
    from flows.registry import champion_history
    from mnist_pipeline.alias_history import experiment_name, format_table

    history = _run(launch, champion_history, config=config)
    refused = [f"- {decision.sentence}" for decision in reversed(history.decisions)]
    if refused:
        refused = ["", "Approvals refused or expired (nothing moved):", *refused, ""]
    if not history.moves:
        launch.report(f"{config.model_name} @champion has never moved.", *refused)
        return
    launch.report(
        *format_table(history.moves),
        *refused,
        f"{len(history.moves)} move(s); in the MLflow UI: experiment "
        f"{experiment_name(config.model_name)}.",
    )


@app.command()
@with_options([CONFIG_FILE], config_options(PruneConfig))
def prune(ctx: typer.Context, **options: object) -> None:
    """List what old runs left in the work folder; remove it with --apply."""
    config = _config(ctx, PruneConfig, options)
    launch = _launch()
    from flows.maintenance import prune_outputs

    result = _run(launch, prune_outputs, config=config)
    verb = "removed" if result.applied else "would remove"
    lines = [
        f"{verb} {path} ({reason}, {size / 1e6:.1f} MB)"
        for path, reason, size in result.removals
    ]
    total = f"{len(result.removals)} item(s), {result.size / 1e6:.1f} MB"
    if result.applied:
        lines.append(f"Removed {total}.")
    else:
        lines.append(f"Would remove {total}; nothing removed (--apply removes them).")
    launch.report(*lines)


def _launch() -> Launch:
    return Launch(typer.echo)


def _run(launch: Launch, flow, **parameters):
    """Run a flow; turn input and environment errors into one paragraph."""
    try:
        return launch.run(flow, **parameters)
    except PipelineError as exc:
        _fail(str(exc))


def _read(path: Path | None) -> dict:
    try:
        return read_config_file(path)
    except PipelineError as exc:
        _fail(str(exc))


def _build(model: type, values: dict, prefix: str = ""):
    try:
        return build(model, values, prefix=prefix)
    except PipelineError as exc:
        _fail(str(exc))


def _config(ctx: typer.Context, model: type, options: dict):
    """``model`` from the --config file with the options given on top."""
    values = _read(options.pop("config_file"))
    return _build(model, values | options_given(ctx, options))


def _check(check: Callable[..., None], *args: object) -> None:
    try:
        check(*args)
    except PipelineError as exc:
        _fail(str(exc))


def _fail(message: str) -> None:
    typer.secho(f"Error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mnist-pipeline`` script."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="mnist-pipeline")


if __name__ == "__main__":
    main()
