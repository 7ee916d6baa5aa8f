"""The ``mnist-pipeline`` command line: build a config, run a flow, report.

Heavy imports (Prefect, TensorFlow, MLflow) happen inside commands, after the
process environment is configured, so ``--help`` is instant.
"""

from __future__ import annotations

import atexit
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from pydantic import ValidationError

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import check_source
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.runtime import configure_environment

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
        experiment=experiment,
        model_name=model_name,
        train_limit=train_limit,
        test_limit=test_limit,
        min_class_share=min_class_share,
        workdir=workdir,
    )
    _check(check_source, data)
    configure_environment()
    report = _final_report()
    from flows.training import mnist_training

    result = _run(mnist_training, config=config)
    report(
        f"Test accuracy: {result.test_accuracy:.4f}",
        f"MLflow run id: {result.run_id}",
        f"Registered model: {result.model_name} version {result.version}",
    )


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


def _run(flow, **parameters):
    """Run a flow; turn input and environment errors into one paragraph."""
    try:
        return flow(**parameters)
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
