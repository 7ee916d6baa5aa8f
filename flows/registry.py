"""Operator flows on the registered model: promote a version, roll back, read the
history of ``@champion``.

Promote and rollback hold the model's promotion lock, like the gate, so an
operator's change never interleaves with a run's promotion, and each move is
recorded in the alias's history (:mod:`mnist_pipeline.alias_history`) together
with the move. All three are deployments in ``prefect.yaml``: the Prefect UI's
Run button shows their config as a form. Each leaves a markdown artifact of
what it did.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from mlflow import MlflowClient
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel

from mnist_pipeline import alias_history, promotion, registry, tracking_store
from mnist_pipeline.config import (
    HistoryConfig,
    PromoteConfig,
    RegistryConfig,
    RollbackConfig,
)
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.runtime import configure_flow_logs
from tasks.lineage import flow_run_label, operator_label
from tasks.locking import promotion_lock


class AliasChange(BaseModel):
    """What an operator's promote or rollback did to ``@champion``."""

    model_name: str
    previous: str | None
    champion: str
    moved: bool

    def sentence(self) -> str:
        """One line for the console and the artifact."""
        if not self.moved:
            return (
                f"{self.model_name} @champion is version {self.champion} already; "
                "nothing changed."
            )
        return (
            f"{self.model_name} @champion: version {self.previous or 'none'} -> "
            f"version {self.champion}"
        )


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _config(key: str = "config") -> dict:
    return dict(flow_run.get_parameters().get(key) or {})


def _promote_name() -> str:
    config = _config()
    name = config.get("model_name", "mnist-cnn")
    return f"promote-{name}-v{config.get('version')}-{_stamp()}"


def _rollback_name() -> str:
    config = _config()
    to = config.get("to")
    target = f"to-v{to}" if to else "one-step"
    return f"rollback-{config.get('model_name', 'mnist-cnn')}-{target}-{_stamp()}"


def _history_name() -> str:
    return f"history-{_config().get('model_name', 'mnist-cnn')}-{_stamp()}"


@flow(name="mnist-promote", flow_run_name=_promote_name)
def promote_model(config: PromoteConfig) -> AliasChange:
    """Make ``config.version`` the ``@champion`` (recorded in the alias history)."""
    configure_flow_logs()
    client = tracking_store.connect()
    version = str(config.version)
    registry.check_version(client, config.model_name, version)
    failed = promotion.failed_release_checks(client, config.model_name, version)
    if failed:
        raise RegistryError(
            f"{config.model_name} v{version} failed checks no release skips: "
            f"{'; '.join(failed)}. promote moves @champion past the comparison "
            "with the champion, never past the floor, robustness or serving checks."
        )
    return _move(client, config, "promote", lambda: (None, version))


@flow(name="mnist-rollback", flow_run_name=_rollback_name)
def rollback_model(config: RollbackConfig) -> AliasChange:
    """Move ``@champion`` back one step, or to ``config.to`` (an earlier champion)."""
    configure_flow_logs()
    client = tracking_store.connect()
    to = str(config.to) if config.to else None
    return _move(
        client,
        config,
        "rollback",
        lambda: registry.rollback_target(client, config.model_name, to),
    )


def _move(
    client: MlflowClient,
    config: RegistryConfig,
    by: str,
    choose: Callable[[], tuple[str | None, str]],
) -> AliasChange:
    """Under the promotion lock: choose the target, move and record; report.

    ``choose`` returns the champion it expects (None: any) and the target; it
    runs inside the lock, so a rollback reads the history no other move changes
    meanwhile.
    """
    with promotion_lock(
        config.model_name, client.tracking_uri, config.promotion_timeout
    ):
        expected, target = choose()
        previous = registry.move_champion(
            client,
            config.model_name,
            target,
            by=by,
            reason=config.reason,
            who=operator_label(config.operator),
            prefect_flow_run=flow_run_label(),
            expected=expected,
            check_expected=expected is not None,
        )
    change = AliasChange(
        model_name=config.model_name,
        previous=previous,
        champion=target,
        moved=previous != target,
    )
    return _report(change, config.reason)


@flow(name="mnist-champion-history", flow_run_name=_history_name)
def champion_history(config: HistoryConfig) -> alias_history.History:
    """Every recorded move of ``@champion`` and every refused or expired
    approval, oldest first (the newest N of each with a limit)."""
    configure_flow_logs()
    client = tracking_store.connect()
    history = alias_history.read_history(client, config.model_name, config.limit)
    create_markdown_artifact(
        alias_history.history_markdown(
            config.model_name, history.moves, history.decisions
        ),
        key="champion-history",
        description=f"Moves of {config.model_name} @champion, newest first",
    )
    return history


def _report(change: AliasChange, reason: str) -> AliasChange:
    get_run_logger().info("%s (%s)", change.sentence(), reason)
    create_markdown_artifact(
        f"# `{change.model_name}` `@champion`\n\n{change.sentence()}\n\n"
        f"Reason: {reason}\n\n"
        f"Every move: `mnist-pipeline history`, the `mnist-champion-history` "
        f"deployment, or MLflow experiment "
        f"`{alias_history.experiment_name(change.model_name)}`.",
        key="champion-move",
        description=change.sentence(),
    )
    return change
