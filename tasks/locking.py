"""One promotion at a time per registered model, across processes and machines.

Runs that share a Prefect server (deployments, workers, ``PREFECT_API_URL``)
serialise on a Prefect global concurrency limit of one slot,
``mnist-promotion-<model>``, created on first use (or by an operator with
``prefect gcl create mnist-promotion-mnist-cnn --limit 1``). Its slot is leased:
when the holder dies, the server takes it back after the lease expires.
Runs on one machine that share an MLflow SQLite store (the CLI's default, with a
temporary Prefect server each) serialise on a lock file beside the store; the
kernel releases it when the holder dies. Both apply when both are present.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from mnist_pipeline.errors import RegistryError
from mnist_pipeline.files import exclusive_lock, sqlite_file
from mnist_pipeline.prefect_server import shared_api_url

log = logging.getLogger(__name__)
#: Seconds a held slot stays taken without renewal (the holder renews it).
LEASE_SECONDS = 300


def limit_name(model_name: str) -> str:
    """The global concurrency limit that serialises promotions of ``model_name``."""
    return "mnist-promotion-" + re.sub(r"[^A-Za-z0-9_-]", "-", model_name)


def lock_file(database: Path, model_name: str) -> Path:
    """The lock file beside an MLflow SQLite store for one model's promotions."""
    return database.with_name(f"{database.name}.{limit_name(model_name)}.lock")


@contextmanager
def promotion_lock(
    model_name: str, tracking_uri: str, timeout: float
) -> Iterator[list[str]]:
    """Hold every promotion lock that applies; yield what is held.

    Raises:
        RegistryError: another promotion held a lock for ``timeout`` seconds.
    """
    held: list[str] = []
    with ExitStack() as stack:
        try:
            if shared_api_url() is not None:  # not a temporary server
                stack.enter_context(_global_limit(model_name, timeout))
                held.append(
                    f"Prefect global concurrency limit {limit_name(model_name)}"
                )
            database = sqlite_file(tracking_uri)
            if database is not None:
                path = lock_file(database, model_name)
                stack.enter_context(exclusive_lock(path, timeout))
                held.append(f"lock file {path}")
        except TimeoutError as exc:
            raise RegistryError(
                f"Another promotion of '{model_name}' held its lock for more than "
                f"{timeout:g} s ({exc}); nothing was promoted."
            ) from exc
        if not held:
            log.warning(
                "Promotions of '%s' are not serialised: no Prefect server "
                "(PREFECT_API_URL) and no local MLflow store to lock. Overlapping "
                "runs on other machines could race.",
                model_name,
            )
        yield held


@contextmanager
def _global_limit(model_name: str, timeout: float) -> Iterator[None]:
    from prefect.concurrency.sync import concurrency

    name = limit_name(model_name)
    _ensure_single_slot(name)
    with concurrency(
        name,
        occupy=1,
        timeout_seconds=timeout,
        lease_duration=LEASE_SECONDS,
        strict=True,
    ):
        yield


def _ensure_single_slot(name: str) -> None:
    """Create the limit with one active slot, or set an existing one so."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
            except ObjectAlreadyExists:  # created by a concurrent run meanwhile
                pass
            return
        if limit.limit != 1 or not limit.active:
            log.warning(
                "Concurrency limit %s had %d slot(s), active=%s; set to 1, active.",
                name,
                limit.limit,
                limit.active,
            )
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=1, active=True)
            )
