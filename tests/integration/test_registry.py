"""Registry aliases: champion moves, rollback, and the operator commands."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from mnist_pipeline import packaging, registry, runs, tracking_store
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.model import build_model

from .conftest import run_cli


@pytest.fixture
def three_versions(mlflow_store, tmp_path):
    """``mnist-cnn`` versions 1..3 (untrained models: aliases are what is tested)."""
    client = tracking_store.connect()
    experiment = tracking_store.ensure_experiment(client, "registry")
    path = tmp_path / "model.keras"
    build_model().save(path)
    example = __import__("numpy").zeros((1, 28, 28), "uint8")
    for _ in range(3):
        with runs.tracked_run(client, experiment, None, {}) as run_id:
            packaging.log_model(run_id, path, "mnist-cnn", example, {})
    return client


def champion(client) -> str | None:
    return registry.alias_version(client, "mnist-cnn", registry.CHAMPION)


def test_champion_moves_and_rolls_back_with_audit_tags(three_versions):
    client = three_versions
    assert champion(client) is None
    assert (
        registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="r1") is None
    )
    assert (
        registry.move_champion(client, "mnist-cnn", "3", by="gate", reason="r3") == "1"
    )
    assert champion(client) == "3"
    tags = client.get_model_version("mnist-cnn", "3").tags
    assert tags["champion.previous"] == "1"
    assert tags["champion.promoted_by"] == "gate"

    assert registry.rollback_champion(client, "mnist-cnn", by="operator") == ("3", "1")
    assert champion(client) == "1"
    assert client.get_model_version("mnist-cnn", "3").tags["champion.rolled_back_by"]
    change = client.get_registered_model("mnist-cnn").tags["champion.last_change"]
    assert "rollback v3 -> v1" in change

    with pytest.raises(RegistryError, match="replaced no earlier champion"):
        registry.rollback_champion(client, "mnist-cnn", by="operator")
    assert champion(client) == "1"  # a refused rollback leaves the champion


def test_only_an_unset_alias_means_no_version(three_versions):
    client = three_versions
    assert registry.alias_version(client, "mnist-cnn", "champion") is None
    with pytest.raises(MlflowException) as missing:
        registry.alias_version(client, "no-such-model", "champion")
    assert registry.is_not_found(missing.value)


def test_rollback_to_a_deleted_version_is_refused_and_changes_nothing(three_versions):
    client = three_versions
    registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="first")
    registry.move_champion(client, "mnist-cnn", "2", by="gate", reason="second")
    client.delete_model_version("mnist-cnn", "1")
    with pytest.raises(RegistryError, match="v1, which no longer exists"):
        registry.rollback_champion(client, "mnist-cnn", by="operator")
    assert champion(client) == "2"


def test_challenger_alias_and_missing_versions(three_versions):
    client = three_versions
    registry.set_challenger(client, "mnist-cnn", "2")
    assert registry.alias_version(client, "mnist-cnn", registry.CHALLENGER) == "2"
    with pytest.raises(RegistryError, match="no version 9"):
        registry.check_version(client, "mnist-cnn", "9")
    assert registry.resolve_model_uri(client, "models:/mnist-cnn@challenger") == (
        "mnist-cnn",
        "2",
    )
    with pytest.raises(RegistryError, match="no alias @champion"):
        registry.resolve_model_uri(client, "models:/mnist-cnn@champion")
    for latest in ("models:/mnist-cnn/latest", "models:/mnist-cnn/Latest"):
        assert registry.resolve_model_uri(client, latest) == ("mnist-cnn", "3")
    with pytest.raises(RegistryError, match="'other' has no registered version"):
        registry.resolve_model_uri(client, "models:/other/latest")


class _RacedClient:
    """A real client whose first alias write loses a race to ``rival``.

    The rival's write is real; the refusal is the one MLflow's SQLite store
    raised in the overlap test (tests/integration/test_nights.py) when two
    runs inserted @challenger at once.
    """

    def __init__(self, client, rival: str) -> None:
        self._client, self._rival, self.calls = client, rival, 0

    def set_registered_model_alias(self, name, alias, version):
        self.calls += 1
        if self.calls == 1:
            self._client.set_registered_model_alias(name, alias, self._rival)
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: "
                "registered_model_aliases.workspace, registered_model_aliases.name, "
                "registered_model_aliases.alias",
                error_code=BAD_REQUEST,
            )
        self._client.set_registered_model_alias(name, alias, version)

    def __getattr__(self, name):
        return getattr(self._client, name)


@pytest.mark.parametrize(("rival", "expected"), [("3", "3"), ("1", "2")])
def test_two_candidates_setting_challenger_at_once_leave_the_newer(
    three_versions, rival, expected
):
    raced = _RacedClient(three_versions, rival)
    registry.set_challenger(raced, "mnist-cnn", "2")
    assert registry.alias_version(three_versions, "mnist-cnn", "challenger") == expected
    assert raced.calls == (1 if expected == rival else 2)


def test_an_older_candidate_leaves_challenger_on_the_newer(three_versions):
    registry.set_challenger(three_versions, "mnist-cnn", "3")
    writes = _CountingClient(three_versions)
    registry.set_challenger(writes, "mnist-cnn", "2")
    assert registry.alias_version(three_versions, "mnist-cnn", "challenger") == "3"
    assert writes.alias_writes == 0


def test_other_registry_errors_on_the_challenger_are_not_retried(three_versions):
    writes = _CountingClient(three_versions)
    with pytest.raises(MlflowException) as refused:
        registry.set_challenger(writes, "mnist-cnn", "99")  # no such version
    assert refused.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert writes.alias_writes == 1
    assert registry.alias_version(three_versions, "mnist-cnn", "challenger") is None


class _CountingClient:
    """A real client that counts its alias writes."""

    def __init__(self, client) -> None:
        self._client, self.alias_writes = client, 0

    def set_registered_model_alias(self, *args):
        self.alias_writes += 1
        return self._client.set_registered_model_alias(*args)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_operator_commands_promote_and_roll_back(
    three_versions, mlflow_store, tmp_path, prefect_api_url
):
    env = {"MLFLOW_TRACKING_URI": mlflow_store, "PREFECT_API_URL": prefect_api_url}
    client = three_versions
    registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="first")

    promoted = run_cli(
        "promote", "--version", "2", "--reason", "hotfix", cwd=tmp_path, env=env
    )
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip().endswith(
        "mnist-cnn @champion: version 1 -> version 2"
    )
    assert champion(client) == "2"
    tags = client.get_model_version("mnist-cnn", "2").tags
    assert tags["champion.promoted_by"] == "operator"
    change = client.get_registered_model("mnist-cnn").tags["champion.last_change"]
    assert "(hotfix)" in change

    rolled = run_cli("rollback", cwd=tmp_path, env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout.strip().endswith("mnist-cnn @champion: version 2 -> version 1")
    assert champion(client) == "1"

    missing = run_cli("promote", "--version", "7", cwd=tmp_path, env=env)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stdout + missing.stderr
    assert "Error: Model 'mnist-cnn' has no version 7." in missing.stderr
    assert champion(client) == "1"
