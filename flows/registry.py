"""Operator flows on the registered model: promote a version, roll back.

Both hold the model's promotion lock, like the gate, so an operator's change
never interleaves with a run's promotion.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from mnist_pipeline import registry, tracking_store
from mnist_pipeline.config import RegistryConfig
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.runtime import configure_flow_logs
from tasks.locking import promotion_lock


@flow(name="mnist-promote")
def promote_model(config: RegistryConfig) -> str | None:
    """Make ``config.version`` the ``@champion``; return the version it replaced."""
    configure_flow_logs()
    if config.version is None:
        raise RegistryError("Promote needs a version (--version N).")
    client = tracking_store.connect()
    version = str(config.version)
    registry.check_version(client, config.model_name, version)
    with promotion_lock(
        config.model_name, client.tracking_uri, config.promotion_timeout
    ):
        previous = registry.move_champion(
            client, config.model_name, version, by="operator", reason=config.reason
        )
    get_run_logger().info(
        "%s @champion: v%s -> v%s", config.model_name, previous, version
    )
    return previous


@flow(name="mnist-rollback")
def rollback_model(config: RegistryConfig) -> tuple[str, str]:
    """Move ``@champion`` back to the version the current champion replaced."""
    configure_flow_logs()
    client = tracking_store.connect()
    with promotion_lock(
        config.model_name, client.tracking_uri, config.promotion_timeout
    ):
        current, previous = registry.rollback_champion(
            client, config.model_name, by="operator"
        )
    get_run_logger().info(
        "%s @champion rolled back: v%s -> v%s", config.model_name, current, previous
    )
    return current, previous
