"""The model registry: aliases and their audit trail, versions found by tag or
URI, and the gate's verdict on a version.

Decisions read the registry here, and every read fails closed: only "the alias is
not set" means "no champion". Any other error (a 5xx, a 403, a connection that
failed after MLflow's retries, a registered model that does not exist) is raised,
so it fails the decision instead of becoming one. The one exception is
:func:`first_tagged`: no registered model yet means nothing was trained yet.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)

from mnist_pipeline import alias_history, runs, tracking_store
from mnist_pipeline.data import DatasetRef
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.gate import Scores, score_tags
from mnist_pipeline.redact import redact_url

CHAMPION = "champion"
CHALLENGER = "challenger"
#: Where the gate's verdict with every check's figures lands in the run.
GATE_RECORD = "gate/decision.json"
_NOT_FOUND = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
_INVALID = ErrorCode.Name(INVALID_PARAMETER_VALUE)


class ChampionMovedError(RegistryError):
    """``@champion`` changed between the gate's comparison and the alias move."""

    def __init__(self, expected: str | None, found: str | None) -> None:
        self.expected, self.found = expected, found
        super().__init__(
            f"@champion moved from {_label(expected)} to {_label(found)} while "
            "the candidate was being compared."
        )


def is_not_found(exc: MlflowException) -> bool:
    """Whether MLflow answered "resource does not exist" (and nothing else)."""
    return exc.error_code == _NOT_FOUND


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version ``alias`` points to; None only when the alias is not set.

    Raises:
        MlflowException: the registry could not answer, or has no model ``name``.
    """
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if _alias_not_set(exc, alias):
            return None
        raise


def _alias_not_set(exc: MlflowException, alias: str) -> bool:
    # MLflow's one answer for an unset alias, from its SQL store and over REST:
    # 400 INVALID_PARAMETER_VALUE "Registered model alias <alias> not found."
    # tests/integration/test_registry.py pins it against a real store.
    return exc.error_code == _INVALID and f"alias {alias} not found" in exc.message


def set_challenger(
    client: MlflowClient, name: str, version: str, attempts: int = 3
) -> None:
    """Point ``@challenger`` at the newest candidate.

    The alias is read before every write, and the write is skipped when a newer
    version holds it (a run that registered later and got there first). Two runs
    registering at once can both find the alias unset and both insert it:
    MLflow's SQL store then refuses the second insert with a unique-key
    violation (seen in the overlap test: SQLite's "UNIQUE constraint failed"),
    and the write is tried again.
    """

    def write() -> None:
        current = alias_version(client, name, CHALLENGER)
        if current is None or int(current) < int(version):
            client.set_registered_model_alias(name, CHALLENGER, version)

    tracking_store.write_past_concurrent_inserts(write, attempts)


def versions_tagged(
    client: MlflowClient, name: str, key: str, value: str
) -> list[ModelVersion]:
    """Versions of ``name`` whose tag ``key`` is ``value``, oldest first.

    ``value`` must be a digest or id (letters, digits, ``-``): it is not quoted.
    """
    if not value.replace("-", "").isalnum():
        raise ValueError(f"not a digest: {value!r}")
    found = client.search_model_versions(f"tags.`{key}` = '{value}'")
    return sorted((v for v in found if v.name == name), key=lambda v: int(v.version))


def first_tagged(
    client: MlflowClient, name: str, key: str, value: str
) -> ModelVersion | None:
    """The oldest version of ``name`` tagged ``key=value``; None when there is none,
    or no registered model ``name`` yet."""
    try:
        found = versions_tagged(client, name, key, value)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise
    return found[0] if found else None


def candidate_tags(
    ref: DatasetRef, scores: Scores, tags: Mapping[str, str]
) -> dict[str, str]:
    """A new version's tags: its data's digests and test scores, then ``tags``."""
    return {
        "dataset": ref.name,
        "dataset_digest": ref.digest,
        "test_digest": ref.split_digests["test"],
        **score_tags(scores),
        **tags,
    }


def set_version_tags(
    client: MlflowClient, name: str, version: str, tags: Mapping[str, str]
) -> None:
    """Write tags on a model version."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def registered_version(
    client: MlflowClient, model_name: str, run_id: str
) -> ModelVersion | None:
    """The version of ``model_name`` registered from ``run_id``, if any."""
    # run ids are hex; filtering names in Python spares quoting them.
    found = client.search_model_versions(f"run_id = '{run_id}'")
    mine = [v for v in found if v.name == model_name]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def record_gate(
    client: MlflowClient,
    run_id: str,
    name: str,
    version: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    record: Mapping[str, object] | None = None,
    description: str | None = None,
) -> None:
    """The gate's verdict as tags on the run and the version; figures as metrics.

    ``record`` (every check and figure) becomes ``gate/decision.json`` on the
    run; ``description`` the version's one-sentence description.
    """
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    set_version_tags(client, name, version, tags)
    runs.log_metrics(client, run_id, metrics)
    if record is not None:
        client.log_dict(run_id, dict(record), GATE_RECORD)
    if description is not None:
        client.update_model_version(name, version, description=description)


def move_champion(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    by: str,
    reason: str,
    who: str = "",
    mlflow_run: str | None = None,
    prefect_flow_run: str | None = None,
    expected: str | None = None,
    check_expected: bool = False,
    extra_tags: Mapping[str, str] | None = None,
) -> str | None:
    """Make ``version`` the champion, with its record in the alias's history;
    return the previous champion.

    ``extra_tags`` (a person's approval) go on the record beside the move's.

    Call it holding the promotion lock (``tasks.locking.promotion_lock``). The
    champion is read again right before the move; with ``check_expected`` a
    champion other than ``expected`` raises :class:`ChampionMovedError` instead
    of being replaced. When ``version`` is the champion already nothing is
    written (no record, no tag): the caller says so. Otherwise the record is
    opened first, the alias moves in a single call, and the record is closed,
    so a crash at any point leaves a champion and a record of every move.
    """
    previous = alias_version(client, name, CHAMPION)
    if check_expected and previous != expected:
        raise ChampionMovedError(expected, previous)
    if previous == version:
        return previous
    mover = alias_history.Mover(by, reason, who, mlflow_run, prefect_flow_run)
    alias_history.settle_open_records(client, name, previous)
    record = alias_history.open_record(
        client, name, previous, version, mover, extra_tags
    )
    try:
        client.set_registered_model_alias(name, CHAMPION, version)
    except MlflowException:
        # The write may have gone through before its answer was lost: the
        # record says what the alias says now. When the registry cannot tell,
        # the record stays open and the next move settles it; either way the
        # error that stopped this move is the one raised.
        with contextlib.suppress(MlflowException):
            moved = alias_version(client, name, CHAMPION) == version
            alias_history.close_record(client, record, moved=moved)
        raise
    alias_history.close_record(client, record, moved=True)
    _record_change(
        client,
        name,
        f"{_now()} {by}: {_label(previous)} -> v{version} ({reason}); every move: "
        f"experiment {alias_history.experiment_name(name)}",
    )
    return previous


def rollback_target(
    client: MlflowClient, name: str, to: str | None = None
) -> tuple[str, str]:
    """The champion now, and the version a rollback moves it to.

    Without ``to``: the champion before the current one (one step back through
    the history, as a stack: rolling back twice goes two champions back). With
    ``to``: that version, which must have been champion and still exist.

    Raises:
        RegistryError: no champion; nothing to roll back to; ``to`` was never
            champion or is gone.
    """
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"Model '{name}' has no @champion to roll back.")
    moves = alias_history.read_moves(client, name)
    if to is None:
        target = _previous_champion(client, name, moves, current)
    elif (
        to == current
        or alias_history.was_champion(moves, to)
        or _legacy_champion(client, name, to)
    ):
        target = to
    else:
        raise RegistryError(
            f"Model '{name}' version {to} was never @champion; roll back only to an "
            "earlier champion (`mnist-pipeline history` lists them), or promote it "
            "with `mnist-pipeline promote --version N`."
        )
    try:
        client.get_model_version(name, target)
    except MlflowException as exc:
        if not is_not_found(exc):
            raise
        raise RegistryError(
            f"Model '{name}' @champion v{current} would roll back to v{target}, which "
            "no longer exists (deleted); roll back to another with --to N "
            "(`mnist-pipeline history` lists them)."
        ) from exc
    return current, target


def _previous_champion(
    client: MlflowClient, name: str, moves: list[alias_history.Move], current: str
) -> str:
    stack = alias_history.champion_stack(moves, current)
    if len(stack) >= 2:
        return stack[-2]
    # A registry from before the history: the version tag the old moves wrote.
    previous = client.get_model_version(name, current).tags.get("champion.previous")
    if previous and previous != current:
        return previous
    raise RegistryError(
        f"Model '{name}' @champion is version {current}, which replaced no earlier "
        "champion; promote a version explicitly with --version instead."
    )


def _legacy_champion(client: MlflowClient, name: str, version: str) -> bool:
    """Whether a move from before the history made ``version`` the champion."""
    try:
        tags = client.get_model_version(name, version).tags
    except MlflowException as exc:
        if not is_not_found(exc):
            raise
        return False
    return "champion.promoted_at" in tags


def runs_to_keep(
    client: MlflowClient, name: str, keep_last: int
) -> tuple[set[str], set[str]]:
    """Runs whose outputs stay (champion, challenger, last ``keep_last`` versions),
    and the runs of every version of ``name``."""
    versions = sorted(
        (v for v in client.search_model_versions(f"name = '{name}'") if v.run_id),
        key=lambda v: int(v.version),
    )
    by_version = {str(v.version): v.run_id for v in versions}
    keep = {v.run_id for v in versions[-keep_last:]} if keep_last else set()
    for alias in (CHAMPION, CHALLENGER):
        if versions:
            version = alias_version(client, name, alias)
            if version in by_version:
                keep.add(by_version[version])
    return keep, set(by_version.values())


def check_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """The version, or :class:`RegistryError` when ``name`` has no such version."""
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if not is_not_found(exc):
            raise
        raise RegistryError(f"Model '{name}' has no version {version}.") from exc


def resolve_model_uri(client: MlflowClient, uri: str) -> tuple[str | None, str | None]:
    """A registry model URI as (name, version); (None, None) outside the registry.

    ``models:/name/version``, ``models:/name@alias`` and ``models:/name/latest``
    are resolved to the version they name now.

    Raises:
        RegistryError: the URI names a registered model that lacks the version
            or alias, or has no version at all (``latest``).
    """
    if not uri.startswith("models:/"):
        return None, None
    ref = uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        try:
            version = alias_version(client, name, alias)
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
            raise RegistryError(f"No registered model '{name}' ({uri}).") from exc
        if version is None:
            raise RegistryError(f"Model '{name}' has no alias @{alias} ({uri}).")
        return name, version
    name, _, version = ref.partition("/")
    if version.isdigit():
        check_version(client, name, version)
        return name, version
    if version.lower() == "latest":  # case-insensitive, as MLflow reads it
        return name, latest_version(client, name, uri)
    return None, None


def latest_version(client: MlflowClient, name: str, uri: str) -> str:
    """The highest version of ``name``: what MLflow loads for ``models:/name/latest``.

    Raises:
        RegistryError: ``name`` has no version.
    """
    quote = '"' if "'" in name else "'"
    found = client.search_model_versions(
        f"name = {quote}{name}{quote}", max_results=1, order_by=["version_number DESC"]
    )
    if not found:
        raise RegistryError(f"Model '{name}' has no registered version ({uri}).")
    return str(found[0].version)


def version_url(client: MlflowClient, name: str, version: str) -> str | None:
    """Link to a model version in the MLflow UI when tracking goes to a server."""
    uri = client.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return None
    base = redact_url(uri.rstrip("/"))
    return f"{base}/#/models/{name}/versions/{version}?{runs.UI_MODE}"


def _record_change(client: MlflowClient, name: str, change: str) -> None:
    client.set_registered_model_tag(name, "champion.last_change", change)


def _label(version: str | None) -> str:
    return f"v{version}" if version else "none"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
