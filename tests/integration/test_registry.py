"""Registry aliases: champion moves, rollback, and the operator commands."""

from __future__ import annotations

import re

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from mnist_pipeline import alias_history, packaging, registry, runs, tracking_store
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


def _moves(client) -> list[tuple[str, str | None, str, str]]:
    """The history as (by, from, to, reason), oldest first, moves that happened."""
    return [
        (m.by, m.from_version, m.to_version, m.reason)
        for m in alias_history.read_moves(client, "mnist-cnn")
        if m.done
    ]


def _rollback(client, to: str | None = None) -> tuple[str, str]:
    """What ``mnist-pipeline rollback [--to N]`` does under the lock."""
    current, target = registry.rollback_target(client, "mnist-cnn", to)
    registry.move_champion(
        client,
        "mnist-cnn",
        target,
        by="rollback",
        reason="bad release",
        expected=current,
        check_expected=True,
    )
    return current, target


def test_every_move_is_recorded_and_rollback_steps_back_through_them(
    three_versions,
):
    client = three_versions
    assert champion(client) is None
    assert (
        registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="r1") is None
    )
    assert (
        registry.move_champion(client, "mnist-cnn", "3", by="gate", reason="r3") == "1"
    )
    assert champion(client) == "3"
    assert _rollback(client) == ("3", "1")
    assert champion(client) == "1"
    assert _moves(client) == [
        ("gate", None, "1", "r1"),
        ("gate", "1", "3", "r3"),
        ("rollback", "3", "1", "bad release"),
    ]
    change = client.get_registered_model("mnist-cnn").tags["champion.last_change"]
    assert "rollback: v3 -> v1 (bad release)" in change
    assert "vNone" not in change

    with pytest.raises(RegistryError, match="replaced no earlier champion"):
        registry.rollback_target(client, "mnist-cnn")
    assert champion(client) == "1"  # a refused rollback leaves the champion
    assert len(_moves(client)) == 3


def test_history_is_an_mlflow_experiment_readable_without_this_code(three_versions):
    client = three_versions
    registry.move_champion(
        client,
        "mnist-cnn",
        "2",
        by="gate",
        reason="promoted to @champion: more right",
        who="promotion gate",
        mlflow_run="abc123",
        prefect_flow_run="train-sample (f00)",
    )
    experiment = client.get_experiment_by_name("mnist-cnn-champion-history")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "#1 gate: none -> v2"
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["move.to"] == "2" and tags["move.from"] == "none"
    assert tags["mlflow.user"] == "promotion gate"  # "Created by" in the UI
    assert tags["move.who"] == "promotion gate"
    assert tags["move.mlflow_run"] == "abc123"
    assert tags["move.prefect_flow_run"] == "train-sample (f00)"
    # Its description in the run page; aliases in backticks (not github links).
    assert tags["mlflow.note.content"].startswith("Move #1 of `mnist-cnn` `@champion`")
    assert "Reason: promoted to `@champion`: more right" in tags["mlflow.note.content"]


def test_promoting_the_champion_changes_nothing(three_versions):
    client = three_versions
    registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="first")
    registry.move_champion(client, "mnist-cnn", "2", by="gate", reason="second")
    before = _moves(client)
    assert (
        registry.move_champion(client, "mnist-cnn", "2", by="promote", reason="again")
        == "2"
    )
    assert _moves(client) == before
    assert champion(client) == "2"
    # The rollback chain is as it was: back to v1, not "v2 -> v2".
    assert _rollback(client) == ("2", "1")
    assert champion(client) == "1"


def test_rollback_to_any_earlier_champion(three_versions):
    client = three_versions
    for version in ("1", "2", "3"):
        registry.move_champion(client, "mnist-cnn", version, by="gate", reason="g")
    assert _rollback(client, to="1") == ("3", "1")
    assert champion(client) == "1"
    # Back at the first champion: nothing earlier to step back to...
    with pytest.raises(RegistryError, match="replaced no earlier champion"):
        registry.rollback_target(client, "mnist-cnn")
    # ...but any version that was champion can be gone back to, and stepped
    # back from.
    assert _rollback(client, to="3") == ("1", "3")
    assert _rollback(client) == ("3", "1")
    assert [move[0] for move in _moves(client)] == ["gate"] * 3 + ["rollback"] * 3


def test_rollback_to_a_version_never_champion_is_refused(three_versions):
    client = three_versions
    registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="first")
    registry.move_champion(client, "mnist-cnn", "3", by="gate", reason="third")
    with pytest.raises(RegistryError, match="version 2 was never @champion"):
        registry.rollback_target(client, "mnist-cnn", "2")
    assert champion(client) == "3"


def test_a_record_left_open_by_a_crash_is_settled_by_the_next_move(three_versions):
    client = three_versions
    registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="first")
    # A process opened its record and died before the alias moved.
    alias_history.open_record(
        client, "mnist-cnn", "1", "2", alias_history.Mover("promote", "crashed")
    )
    registry.move_champion(client, "mnist-cnn", "3", by="promote", reason="next")
    moves = alias_history.read_moves(client, "mnist-cnn")
    assert [(m.seq, m.to_version, m.status) for m in moves] == [
        (1, "1", "FINISHED"),
        (2, "2", "FAILED"),
        (3, "3", "FINISHED"),
    ]
    assert "(did not move)" in "\n".join(alias_history.format_table(moves))
    assert _rollback(client) == ("3", "1")  # v2 never was champion


def test_overlapping_promotions_are_each_recorded_once(three_versions, mlflow_store):
    import threading

    from tasks.locking import promotion_lock

    client = three_versions
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def promote(version: str) -> None:
        try:
            barrier.wait(10)
            with promotion_lock("mnist-cnn", mlflow_store, 60):
                registry.move_champion(
                    client, "mnist-cnn", version, by="promote", reason=f"v{version}"
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in ("2", "3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    moves = alias_history.read_moves(client, "mnist-cnn")
    assert [m.seq for m in moves] == [1, 2]
    assert sorted(m.to_version for m in moves) == ["2", "3"]
    first, second = moves
    # The second move starts from where the first left the alias.
    assert first.from_version is None and second.from_version == first.to_version
    assert champion(client) == second.to_version


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
    for to in (None, "1"):
        with pytest.raises(RegistryError, match="v1, which no longer exists"):
            registry.rollback_target(client, "mnist-cnn", to)
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


def test_operator_commands_promote_roll_back_and_show_the_history(
    three_versions, mlflow_store, tmp_path, prefect_api_url
):
    env = {"MLFLOW_TRACKING_URI": mlflow_store, "PREFECT_API_URL": prefect_api_url}
    client = three_versions
    registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="first")

    promoted = run_cli(
        "promote",
        *("--version", "2", "--reason", "hotfix", "--operator", "alice"),
        cwd=tmp_path,
        env=env,
    )
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip().endswith(
        "mnist-cnn @champion: version 1 -> version 2"
    )
    assert champion(client) == "2"
    change = client.get_registered_model("mnist-cnn").tags["champion.last_change"]
    assert "promote: v1 -> v2 (hotfix)" in change

    rolled = run_cli("rollback", "--to", "1", cwd=tmp_path, env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout.strip().endswith("mnist-cnn @champion: version 2 -> version 1")
    assert champion(client) == "1"

    alias_history.record_decision(
        client,
        "mnist-cnn",
        "3",
        "1",
        {"approval.decision": "rejected"},
        'kept as @challenger: rejected by bob on 2026-12-06 23:50 UTC: "not yet"',
        mlflow_run="r3",
    )
    shown = run_cli("history", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert (
        "- v3 of `mnist-cnn` was not made `@champion`: kept as `@challenger`: "
        'rejected by bob on 2026-12-06 23:50 UTC: "not yet". `@champion` stayed v1.'
    ) in shown.stdout
    lines = shown.stdout.strip().splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("#  "))) :]
    cells = [re.split(r"\s{2,}", line) for line in table[:4]]
    assert cells[0][:6] == ["#", "when (UTC)", "move", "by", "who", "reason"]
    assert cells[1][0] == "3" and cells[1][2:4] == ["v2 -> v1", "rollback"]
    assert cells[2][2:6] == ["v1 -> v2", "promote", "alice", "hotfix"]
    assert cells[3][0] == "1" and cells[3][2:4] == ["none -> v1", "gate"]
    assert cells[1][-1].startswith("rollback-mnist-cnn-to-v1-")  # the flow run
    assert table[-1] == (
        "3 move(s); in the MLflow UI: experiment mnist-cnn-champion-history."
    )

    missing = run_cli("promote", "--version", "7", cwd=tmp_path, env=env)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stdout + missing.stderr
    assert "Error: Model 'mnist-cnn' has no version 7." in missing.stderr
    assert champion(client) == "1"


def test_the_promote_flow_on_the_champion_says_nothing_changed(
    three_versions, prefect_api_url
):
    from flows.registry import promote_model, rollback_model
    from mnist_pipeline.config import PromoteConfig, RollbackConfig

    client = three_versions
    registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="first")
    registry.move_champion(client, "mnist-cnn", "2", by="gate", reason="second")
    change = promote_model(PromoteConfig(version=2))
    assert not change.moved
    assert change.sentence() == (
        "mnist-cnn @champion is version 2 already; nothing changed."
    )
    assert len(_moves(client)) == 2
    undone = rollback_model(RollbackConfig())
    assert (undone.previous, undone.champion, undone.moved) == ("2", "1", True)
    assert _moves(client)[-1][:3] == ("rollback", "2", "1")


def test_a_champion_set_before_the_history_can_be_rolled_back_to(three_versions):
    client = three_versions
    client.set_registered_model_alias("mnist-cnn", "champion", "1")  # by hand
    registry.move_champion(client, "mnist-cnn", "2", by="gate", reason="better")
    assert _rollback(client) == ("2", "1")
    registry.move_champion(client, "mnist-cnn", "3", by="gate", reason="best")
    client.set_registered_model_alias("mnist-cnn", "champion", "2")  # by hand
    assert registry.rollback_target(client, "mnist-cnn", "1") == ("2", "1")


class _LostAnswerClient:
    """A real client whose alias write goes through (or not), then fails."""

    def __init__(self, client, applied: bool) -> None:
        self._client, self._applied = client, applied

    def set_registered_model_alias(self, name, alias, version):
        if self._applied:
            self._client.set_registered_model_alias(name, alias, version)
        raise MlflowException("read timed out", error_code=BAD_REQUEST)

    def __getattr__(self, name):
        return getattr(self._client, name)


@pytest.mark.parametrize(("applied", "status"), [(True, "FINISHED"), (False, "FAILED")])
def test_a_failed_alias_write_is_recorded_as_what_the_alias_says(
    three_versions, applied, status
):
    client = three_versions
    registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="first")
    with pytest.raises(MlflowException, match="read timed out"):
        registry.move_champion(
            _LostAnswerClient(client, applied),
            "mnist-cnn",
            "2",
            by="promote",
            reason="x",
        )
    last = alias_history.read_moves(client, "mnist-cnn")[-1]
    assert (last.to_version, last.status) == ("2", status)
    assert champion(client) == ("2" if applied else "1")


def test_a_deleted_history_stops_every_move(three_versions):
    client = three_versions
    registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="first")
    history = client.get_experiment_by_name("mnist-cnn-champion-history")
    client.delete_experiment(history.experiment_id)
    with pytest.raises(RegistryError, match="mlflow experiments restore"):
        registry.move_champion(client, "mnist-cnn", "2", by="promote", reason="x")
    assert champion(client) == "1"


def test_promote_refuses_a_version_the_gate_found_below_a_floor(
    three_versions, prefect_api_url
):
    from flows.registry import promote_model
    from mnist_pipeline.config import PromoteConfig

    client = three_versions
    registry.move_champion(client, "mnist-cnn", "1", by="gate", reason="first")
    fragile = client.get_model_version("mnist-cnn", "3")
    floor = {"name": "accuracy_floor", "passed": True, "detail": "fine"}
    low = {
        "name": "accuracy_floor",
        "passed": False,
        "detail": "test accuracy 0.9100 < required 0.9400",
    }
    shaky = {
        "name": "robustness",
        "passed": False,
        "detail": "mean accuracy on shifted and noisy test images 0.6100 < "
        "required 0.8000",
    }
    noise = {"name": "significant_improvement", "passed": False, "detail": "luck"}
    registry.record_gate(
        client,
        fragile.run_id,
        "mnist-cnn",
        "3",
        {"gate.decision": "rejected"},
        {},
        {"checks": [low, shaky, noise]},
    )
    with pytest.raises(RegistryError, match="0.9100 < required 0.9400") as refused:
        promote_model(PromoteConfig(version=3))
    assert "0.6100 < required 0.8000" in str(refused.value)
    assert "never past the floor, robustness or serving checks" in str(refused.value)
    assert champion(client) == "1"
    # Kept only for lack of evidence (or never gated): an operator may promote it.
    lucky = client.get_model_version("mnist-cnn", "2")
    registry.record_gate(
        client, lucky.run_id, "mnist-cnn", "2", {}, {}, {"checks": [floor, noise]}
    )
    assert promote_model(PromoteConfig(version=2, reason="serving fix")).moved
    assert champion(client) == "2"
