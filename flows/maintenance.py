"""Maintenance flow: clear what a year of nights leaves in the work folder."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from mnist_pipeline import registry, tracking_store
from mnist_pipeline.config import PruneConfig
from mnist_pipeline.prune import Removal, apply_prune, plan_prune
from mnist_pipeline.runtime import configure_flow_logs


class PruneResult(BaseModel):
    """What the plan listed, and whether it was applied."""

    removals: list[tuple[str, str, int]]
    applied: bool

    @property
    def size(self) -> int:
        """Bytes the plan frees."""
        return sum(size for _, _, size in self.removals)


@flow(name="mnist-prune")
def prune_outputs(config: PruneConfig) -> PruneResult:
    """List (and with ``apply``, remove) what the work folder no longer needs.

    ``@champion``, ``@challenger`` and the last ``keep_versions`` versions keep
    their local models, whatever their age.
    """
    configure_flow_logs()
    client = tracking_store.connect()
    keep, registered = registry.runs_to_keep(
        client, config.model_name, config.keep_versions
    )
    removals = plan_prune(
        Path(config.workdir),
        keep_runs=keep,
        registered_runs=registered,
        older_than_days=config.older_than_days,
    )
    if config.apply:
        freed = apply_prune(removals)
        get_run_logger().info("Removed %d item(s), %d bytes", len(removals), freed)
    return PruneResult(removals=[_row(r) for r in removals], applied=config.apply)


def _row(removal: Removal) -> tuple[str, str, int]:
    return str(removal.path), removal.reason, removal.size
