"""A trained model's way into the registry: record its evaluation, register it,
gate it, then summarise the run in Prefect.

One sequence for both commands that train: ``mnist-training`` calls it with its
model, ``mnist-sweep`` with its best trial's. Plain functions that call tasks,
like :func:`tasks.gate.run_gate`: each step stays a task run of the calling flow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mnist_pipeline import gate, registry, runs, tracking_store
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import DatasetRef
from mnist_pipeline.lineage import code_version
from mnist_pipeline.promotion import GateOutcome
from tasks.evaluate import EvaluationSummary
from tasks.gate import GateSettings, run_gate
from tasks.report import publish_summary
from tasks.track import log_results, register_model
from tasks.train import TrainedModel


@dataclass(frozen=True)
class Candidate:
    """A trained model registered and gated: its run, version, scores and verdict."""

    run_id: str
    model_name: str
    version: str
    evaluation: EvaluationSummary
    scores: gate.Scores
    outcome: GateOutcome


def register_and_gate(
    trained: TrainedModel,
    evaluation: EvaluationSummary,
    ref: DatasetRef,
    *,
    run_id: str,
    config: TrainConfig,
    data_plots: list[str],
    tags: Mapping[str, str],
) -> Candidate:
    """Log the evaluation in ``run_id``, register the model, put it through the gate.

    Args:
        trained: the model, trained in ``run_id``.
        evaluation: its evaluation on ``ref``'s test split.
        config: the model name, the gate's thresholds, seed and lock timeout.
        data_plots: the data plots to log beside the evaluation's.
        tags: what the new version carries beside its data and scores.
    """
    log_results(run_id, evaluation, data_plots, ref.split_digests["test"])
    scores = evaluation.scores()
    version = register_model(run_id, trained, ref, config.model_name, scores, tags)
    outcome = run_gate(
        run_id=run_id,
        model_name=config.model_name,
        version=version,
        keras_path=trained.path,
        ref=ref,
        candidate=scores,
        settings=GateSettings.of(config, ref),
    )
    return Candidate(run_id, config.model_name, version, evaluation, scores, outcome)


def publish_candidate(
    candidate: Candidate, ref: DatasetRef, *, experiment_id: str, training_key: str
) -> str | None:
    """The run's summary and per-class table in Prefect; the MLflow run's link."""
    client = tracking_store.client()
    url = runs.run_url(client, experiment_id, candidate.run_id)
    publish_summary(
        metrics=candidate.evaluation.metrics,
        per_class=candidate.evaluation.per_class,
        dataset=ref.name,
        digest=ref.digest,
        split_digests=ref.split_digests,
        model_name=candidate.model_name,
        version=candidate.version,
        version_url=registry.version_url(
            client, candidate.model_name, candidate.version
        ),
        run_id=candidate.run_id,
        run_url=url,
        gate=candidate.outcome.verdict,
        training_key=training_key,
        code_version=code_version(),
    )
    return url
