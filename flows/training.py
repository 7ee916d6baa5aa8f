"""The training flow: the reference notebook as a Prefect + MLflow recipe.

Run it with ``mnist-pipeline train``; deploy it from its entrypoint
``flows/training.py:mnist_training``.
"""

# No ``from __future__ import annotations`` here: ``flow.serve`` pickles the flow
# function by value for its subprocess, without the module's globals, so its
# parameter annotations must be classes, not names to resolve later.
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel

from mnist_pipeline import gate, packaging, registry, runs, tracking_store
from mnist_pipeline.checkpoint import training_claim
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import DatasetRef
from mnist_pipeline.lineage import TRAINING_KEY_TAG, code_version, training_key
from mnist_pipeline.runtime import configure_flow_logs
from tasks.caching import cache_storage, cached
from tasks.evaluate import evaluate
from tasks.gate import run_gate, settle_existing
from tasks.lineage import flow_run_tags, run_name, version_tags
from tasks.load import load_data
from tasks.plot import plot_data
from tasks.preprocess import preprocess_data
from tasks.report import publish_summary
from tasks.track import (
    ExistingVersion,
    find_training,
    log_dataset,
    log_params,
    log_results,
    register_model,
)
from tasks.train import train
from tasks.validate import validate_data

ENTRYPOINT = "flows/training.py:mnist_training"


class TrainingResult(BaseModel):
    """What a run produced, or found already registered (``skipped``)."""

    run_id: str
    experiment_id: str
    model_name: str
    version: str
    test_accuracy: float
    promoted: bool
    verdict: str
    gate_reasons: list[str] = []
    run_url: str | None = None
    training_key: str
    skipped: bool = False


def _run_name() -> str:
    config = TrainConfig.model_validate(flow_run.get_parameters().get("config", {}))
    details = f"{config.epochs}ep-seed{config.seed}"
    return run_name("train", config.data, details)


@flow(name="mnist-training", flow_run_name=_run_name, log_prints=True)
def mnist_training(config: TrainConfig = TrainConfig()) -> TrainingResult:
    """Train the LeNet-style CNN on MNIST, track it in MLflow, register the model.

    A run whose training (data, settings, code version) a registered version
    already holds trains and registers nothing, unless ``config.retrain``.
    """
    configure_flow_logs()
    client = tracking_store.connect()
    experiment_id = tracking_store.ensure_experiment(client, config.experiment)
    lineage = flow_run_tags(ENTRYPOINT)
    # The data stages persist their results in the workdir's stage cache: a
    # re-run on the same data skips them.
    cache = cache_storage(config.workdir)
    with runs.recorded_run(client, experiment_id, flow_run.get_name(), lineage) as run:
        data = cached(load_data, cache)(
            config.data,
            config.workdir,
            origin=config.mnist_origin,
            sha256=config.mnist_sha256,
            timeout=config.download_timeout,
            train_limit=config.train_limit,
            test_limit=config.test_limit,
            seed=config.seed,
        )
        key = training_key(config.training_params(), data.digest)
        # An identical run started meanwhile waits here, then finds the version.
        with training_claim(config.workdir, key):
            existing = None if config.retrain else find_training(config.model_name, key)
            if existing is not None:
                return _already_trained(config, data, existing, key, experiment_id)

            run_id = run.open()
            applied = gate.threshold_params(config, data.name)
            log_params(run_id, config.model_dump() | applied | {TRAINING_KEY_TAG: key})
            log_dataset(run_id, data)
            cached(validate_data, cache)(data, config.min_class_share)
            data_plots = cached(plot_data, cache)(data, config.workdir, config.seed)
            prepared = cached(preprocess_data, cache)(
                data, config.validation_split, config.seed, config.workdir
            )

            trained = train(
                prepared,
                epochs=config.epochs,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                seed=config.seed,
                run_id=run_id,
                workdir=config.workdir,
                checkpoint_key=key,
                augmentation=config.augmentation(),
            )
            evaluation = evaluate(trained, prepared)
            log_results(run_id, evaluation, data_plots)
            scores = evaluation.scores()
            version = register_model(
                run_id,
                trained,
                data,
                config.model_name,
                scores,
                {TRAINING_KEY_TAG: key} | version_tags(lineage),
            )

            outcome = run_gate(
                run_id=run_id,
                model_name=config.model_name,
                version=version,
                keras_path=trained.path,
                ref=data,
                candidate=scores,
                thresholds=gate.thresholds_for(config, data.name),
                seed=config.seed,
                timeout=config.promotion_timeout,
            )
        url = runs.run_url(client, experiment_id, run_id)
        publish_summary(
            metrics=evaluation.metrics,
            per_class=evaluation.per_class,
            dataset=data.name,
            digest=data.digest,
            model_name=config.model_name,
            version=version,
            version_url=registry.version_url(client, config.model_name, version),
            run_id=run_id,
            run_url=url,
            gate=outcome.verdict,
            training_key=key,
            code_version=code_version(),
        )
    return TrainingResult(
        run_id=run_id,
        experiment_id=experiment_id,
        model_name=config.model_name,
        version=version,
        test_accuracy=scores.accuracy,
        promoted=outcome.decision.promote,
        verdict=outcome.verdict,
        gate_reasons=outcome.decision.reasons,
        run_url=url,
        training_key=key,
    )


def _already_trained(
    config: TrainConfig,
    data: DatasetRef,
    existing: ExistingVersion,
    key: str,
    experiment_id: str,
) -> TrainingResult:
    """Report the version holding this training; finish its gate if it never did."""
    verdict, promoted, url = settle_existing(
        existing,
        config=config,
        ref=data,
        key=key,
        experiment_id=experiment_id,
        keras_path=lambda: _keras_model(config, existing),
    )
    return TrainingResult(
        run_id=existing.run_id or "",
        experiment_id=experiment_id,
        model_name=config.model_name,
        version=existing.version,
        test_accuracy=float(existing.tags.get("test_accuracy", "nan")),
        promoted=promoted,
        verdict=verdict,
        run_url=url,
        training_key=key,
        skipped=True,
    )


def _keras_model(config: TrainConfig, existing: ExistingVersion) -> str:
    """The version's Keras file: the local copy, else downloaded from the registry."""
    local = Path(config.workdir) / "models" / str(existing.run_id) / "model.keras"
    if local.is_file():
        return str(local)
    return str(packaging.download_keras_model(config.model_name, existing.version))
