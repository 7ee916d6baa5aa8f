"""The ``mnist-pipeline`` command line: build a config, run a flow, report.

Heavy imports (Prefect, TensorFlow, MLflow) happen inside commands, after the
process environment is configured, so ``--help`` is instant.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from mnist_pipeline.config import (
    PredictConfig,
    PruneConfig,
    RegistryConfig,
    ServeConfig,
    SweepConfig,
    TrainConfig,
)
from mnist_pipeline.data import check_source
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.files import database_lock, sqlite_file
from mnist_pipeline.predict import check_input
from mnist_pipeline.runtime import configure_environment
from mnist_pipeline.sweep import check_scheduler, format_table, load_grid, trial_rows

app = typer.Typer(
    help="Train, track and register a LeNet-style MNIST CNN with Prefect and MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_DEFAULTS = TrainConfig()


@app.callback()
def _group() -> None:
    """Train, track and register a LeNet-style MNIST CNN with Prefect and MLflow."""


@app.command()
def train(
    data: Annotated[
        str,
        typer.Option(
            help="auto (full MNIST if cached or downloadable, else the bundled "
            "sample), mnist, sample, a .npz in Keras layout, or a folder of MNIST "
            "IDX files."
        ),
    ] = _DEFAULTS.data,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = _DEFAULTS.epochs,
    batch_size: Annotated[
        int, typer.Option(help="Images per training step.")
    ] = _DEFAULTS.batch_size,
    learning_rate: Annotated[
        float, typer.Option(help="Adam learning rate.")
    ] = _DEFAULTS.learning_rate,
    validation_split: Annotated[
        float, typer.Option(help="Share of training images held out, stratified.")
    ] = _DEFAULTS.validation_split,
    seed: Annotated[
        int, typer.Option(help="Seed for the split, initial weights and dropout.")
    ] = _DEFAULTS.seed,
    augment: Annotated[
        bool,
        typer.Option(
            help="Train on randomly rotated, shifted and zoomed copies of the "
            "images (training only: the saved model never augments)."
        ),
    ] = _DEFAULTS.augment,
    augment_rotation: Annotated[
        float, typer.Option(help="Augmentation: largest rotation either way, degrees.")
    ] = _DEFAULTS.augment_rotation,
    augment_shift: Annotated[
        float,
        typer.Option(help="Augmentation: largest shift either way, share of the side."),
    ] = _DEFAULTS.augment_shift,
    augment_zoom: Annotated[
        float, typer.Option(help="Augmentation: largest zoom in or out, share.")
    ] = _DEFAULTS.augment_zoom,
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment name.")
    ] = _DEFAULTS.experiment,
    model_name: Annotated[
        str, typer.Option(help="MLflow registered model name.")
    ] = _DEFAULTS.model_name,
    train_limit: Annotated[
        int | None, typer.Option(help="Train on a stratified subset of N images.")
    ] = None,
    test_limit: Annotated[
        int | None, typer.Option(help="Evaluate on a stratified subset of N images.")
    ] = None,
    min_class_share: Annotated[
        float, typer.Option(help="Fail validation when a class is rarer than this.")
    ] = _DEFAULTS.min_class_share,
    workdir: Annotated[
        str, typer.Option(help="Folder for cached datasets, plots and models.")
    ] = _DEFAULTS.workdir,
    min_accuracy: Annotated[
        float | None,
        typer.Option(
            help="Gate: test accuracy floor [default: 0.98 MNIST, 0.94 sample]"
        ),
    ] = None,
    min_accuracy_gain: Annotated[
        float,
        typer.Option(
            help="Gate: test accuracy must beat @champion's on the same images by "
            "more than this (0: at least one more image right)."
        ),
    ] = _DEFAULTS.min_accuracy_gain,
    max_recall_drop: Annotated[
        float, typer.Option(help="Gate: allowed drop of the worst per-class recall.")
    ] = _DEFAULTS.max_recall_drop,
    min_robust_accuracy: Annotated[
        float, typer.Option(help="Gate: floor on shifted and noisy test accuracy.")
    ] = _DEFAULTS.min_robust_accuracy,
    retrain: Annotated[
        bool,
        typer.Option(
            help="Train and register even when a registered version already holds "
            "this training (same data, settings and code version)."
        ),
    ] = _DEFAULTS.retrain,
) -> None:
    """Train the CNN, log it to MLflow and register a new model version."""
    config = _build(
        TrainConfig,
        data=data,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        validation_split=validation_split,
        seed=seed,
        augment=augment,
        augment_rotation=augment_rotation,
        augment_shift=augment_shift,
        augment_zoom=augment_zoom,
        experiment=experiment,
        model_name=model_name,
        train_limit=train_limit,
        test_limit=test_limit,
        min_class_share=min_class_share,
        workdir=workdir,
        min_accuracy=min_accuracy,
        min_accuracy_gain=min_accuracy_gain,
        max_recall_drop=max_recall_drop,
        min_robust_accuracy=min_robust_accuracy,
        retrain=retrain,
    )
    _check(check_source, data)
    launch = _Launch()
    from flows.training import mnist_training

    result = launch.run(mnist_training, config=config)
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


@app.command()
def sweep(
    grid: Annotated[
        Path,
        typer.Option(
            help="YAML file listing the values to try for learning_rate, "
            "batch_size, dropout, conv_filters (pairs), epochs and augment "
            "(true/false); one trial per combination."
        ),
    ],
    data: Annotated[
        str,
        typer.Option(
            help="auto, mnist, sample, a .npz in Keras layout, or a folder of "
            "MNIST IDX files."
        ),
    ] = _DEFAULTS.data,
    validation_split: Annotated[
        float,
        typer.Option(help="Share of training images held out; picks the best."),
    ] = _DEFAULTS.validation_split,
    seed: Annotated[
        int, typer.Option(help="Seed for the split, initial weights and dropout.")
    ] = _DEFAULTS.seed,
    augment_rotation: Annotated[
        float, typer.Option(help="Augmentation: largest rotation either way, degrees.")
    ] = _DEFAULTS.augment_rotation,
    augment_shift: Annotated[
        float,
        typer.Option(help="Augmentation: largest shift either way, share of the side."),
    ] = _DEFAULTS.augment_shift,
    augment_zoom: Annotated[
        float, typer.Option(help="Augmentation: largest zoom in or out, share.")
    ] = _DEFAULTS.augment_zoom,
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment name.")
    ] = _DEFAULTS.experiment,
    model_name: Annotated[
        str, typer.Option(help="MLflow registered model name.")
    ] = _DEFAULTS.model_name,
    train_limit: Annotated[
        int | None, typer.Option(help="Train on a stratified subset of N images.")
    ] = None,
    test_limit: Annotated[
        int | None, typer.Option(help="Evaluate on a stratified subset of N images.")
    ] = None,
    workdir: Annotated[
        str,
        typer.Option(
            help="Folder for datasets and models; with --dask-address it must be "
            "shared by every worker at the same path."
        ),
    ] = _DEFAULTS.workdir,
    min_accuracy: Annotated[
        float | None,
        typer.Option(
            help="Gate: test accuracy floor [default: 0.98 MNIST, 0.94 sample]"
        ),
    ] = None,
    min_accuracy_gain: Annotated[
        float,
        typer.Option(
            help="Gate: test accuracy must beat @champion's on the same images by "
            "more than this (0: at least one more image right)."
        ),
    ] = _DEFAULTS.min_accuracy_gain,
    max_recall_drop: Annotated[
        float, typer.Option(help="Gate: allowed drop of the worst per-class recall.")
    ] = _DEFAULTS.max_recall_drop,
    min_robust_accuracy: Annotated[
        float, typer.Option(help="Gate: floor on shifted and noisy test accuracy.")
    ] = _DEFAULTS.min_robust_accuracy,
    min_class_share: Annotated[
        float, typer.Option(help="Fail validation when a class is rarer than this.")
    ] = _DEFAULTS.min_class_share,
    dask_address: Annotated[
        str | None,
        typer.Option(
            help="Scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786 "
            "[default: a local cluster for this run]"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes of the local cluster [default: cores]"),
    ] = None,
    retrain: Annotated[
        bool,
        typer.Option(
            help="Run even when the same sweep (grid, settings, data, code "
            "version) registered its best trial before."
        ),
    ] = _DEFAULTS.retrain,
) -> None:
    """Train one model per grid combination in parallel on Dask; gate the best."""
    values = _load_grid(grid)
    training = _build(
        TrainConfig,
        data=data,
        validation_split=validation_split,
        seed=seed,
        augment_rotation=augment_rotation,
        augment_shift=augment_shift,
        augment_zoom=augment_zoom,
        experiment=experiment,
        model_name=model_name,
        train_limit=train_limit,
        test_limit=test_limit,
        workdir=workdir,
        min_accuracy=min_accuracy,
        min_accuracy_gain=min_accuracy_gain,
        max_recall_drop=max_recall_drop,
        min_robust_accuracy=min_robust_accuracy,
        min_class_share=min_class_share,
        retrain=retrain,
    )
    config = _build(
        SweepConfig,
        grid=values,
        training=training,
        dask_address=dask_address,
        workers=workers,
    )
    _check(check_source, data)
    if dask_address:
        _check(check_scheduler, dask_address)
    launch = _Launch()
    from flows.sweep import mnist_sweep

    result = launch.run(mnist_sweep, config=config)
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


_PREDICT = PredictConfig.model_fields


@app.command()
def predict(
    input_path: Annotated[
        str,
        typer.Option(
            "--input",
            help="A .npz (array 'images', 'x_test', 'x' or its only array), an IDX "
            "image file, or a folder of PNG/JPEG images of any size and colour.",
        ),
    ],
    output: Annotated[str, typer.Option(help="CSV file to write.")],
    model: Annotated[str, typer.Option(help="MLflow model URI.")] = _PREDICT[
        "model_uri"
    ].default,
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment of the inference run.")
    ] = _PREDICT["experiment"].default,
    chunk_size: Annotated[
        int,
        typer.Option(
            help="Images read, predicted and written at a time; memory grows with "
            "it, not with the input."
        ),
    ] = _PREDICT["chunk_size"].default,
) -> None:
    """Predict a batch of images with a registered model and write a CSV."""
    config = _build(
        PredictConfig,
        model_uri=model,
        input=input_path,
        output=output,
        experiment=experiment,
        chunk_size=chunk_size,
    )
    _check(check_input, input_path)
    launch = _Launch()
    from flows.predict import mnist_predict

    result = launch.run(mnist_predict, config=config)
    version = result.model_version or "unregistered"
    skipped = (
        [f"Unreadable, skipped: {result.failed} file(s), listed in {result.errors}"]
        if result.failed
        else []
    )
    launch.report(
        f"Predicted {result.images} image(s) with {result.model_uri} (v{version})",
        *skipped,
        f"MLflow run id: {result.run_id}",
        f"Predictions: {result.output}",
    )


_SERVE = ServeConfig()


@app.command("serve-model")
def serve_model(
    model: Annotated[
        str, typer.Option(help="MLflow model URI; an alias is resolved once, at start.")
    ] = _SERVE.model_uri,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = _SERVE.host,
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = _SERVE.port,
    workers: Annotated[
        int, typer.Option(help="Server processes, each with its own copy of the model.")
    ] = _SERVE.workers,
    max_images_per_request: Annotated[
        int,
        typer.Option(help="More images in one request are refused with HTTP 400."),
    ] = _SERVE.max_images_per_request,
    max_body_bytes: Annotated[
        int | None,
        typer.Option(
            help="Larger request bodies are refused with HTTP 413 before parsing "
            "(default: 8 KiB per allowed image)."
        ),
    ] = None,
    request_timeout: Annotated[
        int,
        typer.Option(help="Seconds before a request is answered 504."),
    ] = _SERVE.request_timeout,
    limit_concurrency: Annotated[
        int | None,
        typer.Option(help="Per worker: connections beyond this many get HTTP 503."),
    ] = None,
    keep_alive_timeout: Annotated[
        int, typer.Option(help="Seconds an idle keep-alive connection stays open.")
    ] = _SERVE.keep_alive_timeout,
    access_log: Annotated[
        bool, typer.Option(help="Log one line per request.")
    ] = _SERVE.access_log,
) -> None:
    """Serve a registered model over HTTP (MLflow's scoring protocol), bounded."""
    config = _build(
        ServeConfig,
        model_uri=model,
        host=host,
        port=port,
        workers=workers,
        max_images_per_request=max_images_per_request,
        max_body_bytes=max_body_bytes,
        request_timeout=request_timeout,
        limit_concurrency=limit_concurrency,
        keep_alive_timeout=keep_alive_timeout,
        access_log=access_log,
    )
    configure_environment()
    from mnist_pipeline.model_server import serve

    _check(serve, config, typer.echo)


@app.command()
def promote(
    version: Annotated[int, typer.Option(help="Registered version to make @champion.")],
    model_name: Annotated[
        str, typer.Option(help="Registered model name.")
    ] = "mnist-cnn",
    reason: Annotated[
        str, typer.Option(help="Why; recorded in the registry tags.")
    ] = "operator request",
) -> None:
    """Make a registered version the @champion, bypassing the gate."""
    config = _build(
        RegistryConfig, model_name=model_name, version=version, reason=reason
    )
    launch = _Launch()
    from flows.registry import promote_model

    previous = launch.run(promote_model, config=config)
    launch.report(f"{model_name} @champion: version {previous} -> version {version}")


@app.command()
def rollback(
    model_name: Annotated[
        str, typer.Option(help="Registered model name.")
    ] = "mnist-cnn",
) -> None:
    """Move @champion back to the version the current champion replaced."""
    config = _build(RegistryConfig, model_name=model_name)
    launch = _Launch()
    from flows.registry import rollback_model

    current, previous = launch.run(rollback_model, config=config)
    launch.report(f"{model_name} @champion: version {current} -> version {previous}")


_PRUNE = PruneConfig()


@app.command()
def prune(
    workdir: Annotated[str, typer.Option(help="Work folder.")] = _PRUNE.workdir,
    model_name: Annotated[
        str, typer.Option(help="Registered model whose versions decide what stays.")
    ] = _PRUNE.model_name,
    keep_versions: Annotated[
        int,
        typer.Option(
            help="The last N versions keep their local models (as do @champion "
            "and @challenger)."
        ),
    ] = _PRUNE.keep_versions,
    older_than_days: Annotated[
        float, typer.Option(help="Only files older than this many days go.")
    ] = _PRUNE.older_than_days,
    apply: Annotated[
        bool, typer.Option(help="Remove what the plan lists (default: only list it).")
    ] = _PRUNE.apply,
) -> None:
    """List what old runs left in the work folder; remove it with --apply."""
    config = _build(
        PruneConfig,
        workdir=workdir,
        model_name=model_name,
        keep_versions=keep_versions,
        older_than_days=older_than_days,
        apply=apply,
    )
    launch = _Launch()
    from flows.maintenance import prune_outputs

    result = launch.run(prune_outputs, config=config)
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


class _Launch:
    """A flow run's process set-up: the final-lines printer and the flow call.

    Create it before importing a flow: the environment defaults must be set
    before Prefect and TensorFlow load.
    """

    def __init__(self) -> None:
        configure_environment()
        _exit_cleanly_on_sigterm()
        self.report = _final_report()
        self._server = _start_temporary_server()

    def run(self, flow, **parameters):
        """Run a flow; turn input and environment errors into one paragraph."""
        if self._server is not None:
            self._server.join()
        try:
            return flow(**parameters)
        except PipelineError as exc:
            _fail(str(exc))


def _exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a container stop) exit through the exit hooks.

    Python's default SIGTERM action ends the process at once, skipping them, and
    so left Prefect's temporary server running after the command was gone.
    Prefect's flow engine turns SIGTERM into a crash of the flow run, then
    re-sends the signal to the handler found here: the process then exits with
    the conventional code 143, after stopping the server.
    """

    def exit_143(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_143)


def _start_temporary_server() -> threading.Thread | None:
    """Start Prefect's temporary server while the flow's modules import.

    Without ``PREFECT_API_URL`` Prefect starts a temporary server at the flow's
    first API call, after the flow's modules (TensorFlow, MLflow) have imported:
    on 2 cores the two took about 15 s and 10 s one after the other. Started
    here, the server boots in its own process meanwhile. The same instance
    serves the flow (Prefect keeps one per process); if this start fails, the
    flow's first API call starts it again and reports why.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.server.api.server import SubprocessASGIServer

    ensure_logging_setup()  # its "Starting temporary server" line is logged
    server = SubprocessASGIServer()
    url = settings.server.database.connection_url
    database = sqlite_file(url.get_secret_value() if url else "")

    # Each temporary server migrates a SQLite database as it starts: two runs
    # starting together on a new one (two schedules firing at once) raced, and
    # the loser's server died with "index … already exists" and a traceback.
    lock = database_lock(database) if database else contextlib.nullcontext()

    def start() -> None:
        try:
            with lock:
                server.start()
        except Exception:  # noqa: BLE001 - the flow's own start reports it
            pass

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    thread.start()
    return thread


def _final_report() -> Callable[..., None]:
    """A printer for the lines that must close the command's output.

    Without ``PREFECT_API_URL`` Prefect runs a temporary server that logs its
    shutdown at interpreter exit; printing from an exit hook registered before
    that server starts (hooks run last-in, first-out) keeps the result lines last.
    """
    from prefect.settings import get_current_settings

    def echo(lines: list[str]) -> None:
        for line in lines:
            typer.echo(line)

    if get_current_settings().api.url:
        return lambda *lines: echo(list(lines))
    pending: list[str] = []
    atexit.register(echo, pending)
    return lambda *lines: pending.extend(lines)


def _build(model: type, **values: object):
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
            for e in exc.errors()
        )
        _fail(f"Invalid option(s): {problems}.")


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
