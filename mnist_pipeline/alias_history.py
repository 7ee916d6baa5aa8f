"""The history of ``@champion``: one MLflow run per move, in an experiment of its own.

Every move of the alias (the gate, ``promote``, ``rollback``) is recorded as a run
of the experiment ``<model>-champion-history`` (for example
``mnist-cnn-champion-history``), so the MLflow UI lists the moves without this
project's code: the run's name says ``#3 rollback: v2 -> v1``, its creation time
says when, its tags say by what, who, why and from which MLflow and Prefect runs,
and its description says it in a sentence. A year of nights and manual moves is a
few hundred small runs: nothing grows without bound.

A record is opened (RUNNING) before the alias moves and closed (FINISHED) after
it, both under the promotion lock: there is never a move without a record. A
record left RUNNING by a crash is settled by the next move, FINISHED when the
alias did move to it and FAILED when it did not.

A person's decision that moved nothing (a candidate rejected, or a request
that expired) is a run of the same experiment too, named for the decision
(``approval: v5 rejected``), with ``decision.*`` and ``approval.*`` tags and no
``move.*`` tags: it is on record beside the moves without being one.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus, ViewType
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE, MLFLOW_USER

from mnist_pipeline import tracking_store
from mnist_pipeline.errors import ExperimentDeletedError, RegistryError
from mnist_pipeline.lineage import current_user
from mnist_pipeline.report import code_aliases

#: What can move the alias; ``rollback`` moves are undone by nothing but moves.
KINDS = ("gate", "promote", "rollback")
_FINISHED = RunStatus.to_string(RunStatus.FINISHED)
_RUNNING = RunStatus.to_string(RunStatus.RUNNING)
_PAGE = 1000


@dataclass(frozen=True)
class Mover:
    """What moves ``@champion`` and why: the provenance a record keeps.

    Attributes:
        by: ``gate``, ``promote`` or ``rollback`` (tests may use others).
        reason: why, in the mover's words (the gate's verdict, the operator's).
        who: the person or system; default ``user@host`` of this process.
        mlflow_run: the MLflow run that asked for the move (the gate's run).
        prefect_flow_run: the Prefect flow run that made it (name and id).
    """

    by: str
    reason: str
    who: str = ""
    mlflow_run: str | None = None
    prefect_flow_run: str | None = None

    def person(self) -> str:
        """``who``, or the user and host of this process."""
        return self.who or f"{current_user()}@{socket.gethostname()}"


@dataclass(frozen=True)
class Move:
    """One recorded move of ``@champion``."""

    seq: int
    at: str
    from_version: str | None
    to_version: str
    by: str
    who: str
    reason: str
    mlflow_run: str | None
    prefect_flow_run: str | None
    status: str
    record_id: str

    @property
    def done(self) -> bool:
        """Whether the alias did move (the record was closed after the move)."""
        return self.status == _FINISHED


def experiment_name(model_name: str) -> str:
    """The experiment that holds the history of ``model_name``'s ``@champion``."""
    return f"{model_name}-champion-history"


def open_record(
    client: MlflowClient,
    model_name: str,
    from_version: str | None,
    to_version: str,
    mover: Mover,
    extra_tags: Mapping[str, str] | None = None,
) -> str:
    """Record a move about to happen (RUNNING); return the record's run id.

    ``extra_tags`` (a person's approval of the move) join the move's tags.
    """
    experiment_id = _history_experiment(client, model_name)
    seq = _last_seq(client, experiment_id) + 1
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tags = {
        "move.model": model_name,
        "move.seq": str(seq),
        "move.at": at,
        "move.from": from_version or "none",
        "move.to": to_version,
        "move.by": mover.by,
        "move.who": mover.person(),
        "move.reason": mover.reason[:4000],
        MLFLOW_USER: mover.person(),
        **(extra_tags or {}),
    }
    if mover.mlflow_run:
        tags["move.mlflow_run"] = mover.mlflow_run
    if mover.prefect_flow_run:
        tags["move.prefect_flow_run"] = mover.prefect_flow_run
    tags[MLFLOW_RUN_NOTE] = _description(
        model_name, seq, at, from_version, to_version, mover
    )
    run = client.create_run(
        experiment_id,
        tags=tags,
        run_name=_name(seq, mover.by, from_version, to_version),
    )
    return run.info.run_id


def _history_experiment(client: MlflowClient, model_name: str) -> str:
    """The history experiment's id, created when missing.

    Raises:
        RegistryError: it was deleted; nothing moves until it is restored.
    """
    try:
        return tracking_store.ensure_experiment(client, experiment_name(model_name))
    except ExperimentDeletedError as exc:
        number = client.get_experiment_by_name(
            experiment_name(model_name)
        ).experiment_id
        raise RegistryError(
            f"The history of {model_name}'s @champion, MLflow experiment "
            f"{experiment_name(model_name)!r} (id {number}), was deleted; no move "
            "of the alias goes unrecorded, so nothing was moved. Restore it with "
            f"`mlflow experiments restore --experiment-id {number}`."
        ) from exc


def close_record(client: MlflowClient, record_id: str, moved: bool) -> None:
    """Close a record: FINISHED when the alias moved, FAILED when it did not."""
    client.set_terminated(record_id, "FINISHED" if moved else "FAILED")


def settle_open_records(
    client: MlflowClient, model_name: str, champion: str | None
) -> None:
    """Close the records a crash left open, by what the alias says now."""
    experiment = client.get_experiment_by_name(experiment_name(model_name))
    if experiment is None:
        return
    for run in _runs(
        client, experiment.experiment_id, f"attributes.status = '{_RUNNING}'"
    ):
        if "move.to" in run.data.tags:  # not a decision being recorded
            moved = run.data.tags["move.to"] == champion
            close_record(client, run.info.run_id, moved)


@dataclass(frozen=True)
class Decision:
    """A person's decision on a candidate that moved nothing."""

    version: str
    champion: str | None
    sentence: str
    mlflow_run: str | None
    record_id: str


def record_decision(
    client: MlflowClient,
    model_name: str,
    version: str,
    champion: str | None,
    approval_tags: Mapping[str, str],
    sentence: str,
    mlflow_run: str | None = None,
    prefect_flow_run: str | None = None,
) -> str:
    """Record a rejected or expired approval of ``version``; return the run id.

    Once per version and MLflow run: a retried task finds its first record.
    """
    experiment_id = _history_experiment(client, model_name)
    decision = approval_tags.get("approval.decision", "?")
    recorded = _runs(
        client,
        experiment_id,
        f"tags.`decision.version` = '{version}' and "
        f"tags.`decision.mlflow_run` = '{mlflow_run or ''}'",
    )
    if recorded:
        return recorded[0].info.run_id
    tags = {
        "decision.model": model_name,
        "decision.version": version,
        "decision.champion": champion or "none",
        **approval_tags,
        MLFLOW_RUN_NOTE: code_aliases(
            f"v{version} of `{model_name}` was not made @champion: {sentence}. "
            f"@champion stayed {_label(champion)}."
            + (f" MLflow run `{mlflow_run}`." if mlflow_run else "")
            + (f" Prefect flow run `{prefect_flow_run}`." if prefect_flow_run else "")
        ),
    }
    if mlflow_run:
        tags["decision.mlflow_run"] = mlflow_run
    if prefect_flow_run:
        tags["decision.prefect_flow_run"] = prefect_flow_run
    run = client.create_run(
        experiment_id, tags=tags, run_name=f"approval: v{version} {decision}"
    )
    client.set_terminated(run.info.run_id, _FINISHED)
    return run.info.run_id


def read_decisions(client: MlflowClient, model_name: str) -> list[Decision]:
    """The recorded decisions that moved nothing, oldest first."""
    runs = _records(client, model_name, "decision.version")
    return [
        Decision(
            version=run.data.tags["decision.version"],
            champion=_version(run.data.tags.get("decision.champion")),
            sentence=run.data.tags.get(MLFLOW_RUN_NOTE, ""),
            mlflow_run=run.data.tags.get("decision.mlflow_run"),
            record_id=run.info.run_id,
        )
        for run in sorted(runs, key=lambda run: run.info.start_time)
    ]


@dataclass(frozen=True)
class History:
    """The moves of ``@champion`` and the decisions that moved nothing."""

    moves: list[Move]
    decisions: list[Decision]


def read_history(
    client: MlflowClient, model_name: str, limit: int | None = None
) -> History:
    """Both, oldest first; with ``limit``, the newest ``limit`` of each."""
    moves = read_moves(client, model_name)
    decisions = read_decisions(client, model_name)
    if limit is not None:
        moves, decisions = moves[-limit:], decisions[-limit:]
    return History(moves, decisions)


def read_moves(client: MlflowClient, model_name: str) -> list[Move]:
    """Every recorded move of ``model_name``'s ``@champion``, oldest first."""
    runs = _records(client, model_name, "move.to")
    ordered = sorted(runs, key=lambda run: (_seq(run), run.info.start_time))
    return [_move(run) for run in ordered]


def _records(client: MlflowClient, model_name: str, tag: str) -> list[Run]:
    """The history's runs that carry ``tag`` (moves or decisions)."""
    experiment = client.get_experiment_by_name(experiment_name(model_name))
    if experiment is None:
        return []
    runs = _runs(client, experiment.experiment_id, "")
    return [run for run in runs if tag in run.data.tags]


def champion_stack(moves: Iterable[Move], current: str | None) -> list[str]:
    """The champions a rollback steps back through, the current one last.

    A promotion (gate or ``promote``) pushes its version; a rollback pops back to
    the version it moved to (or pushes it, when it rolled forward to a version
    already rolled back from). A champion set outside this project (the alias
    moved by hand) is taken as pushed on top.
    """
    stack: list[str] = []
    for move in moves:
        if not move.done:
            continue
        # The version a move started from was champion, recorded or not (set
        # before the history began, or by hand in the MLflow UI).
        if move.from_version is not None and (
            not stack or stack[-1] != move.from_version
        ):
            _step(stack, move.from_version, rollback=True)
        _step(stack, move.to_version, rollback=move.by == "rollback")
    if current is not None and (not stack or stack[-1] != current):
        _step(stack, current, rollback=True)
    return stack


def was_champion(moves: Iterable[Move], version: str) -> bool:
    """Whether a recorded move made ``version`` the champion or moved it away."""
    return any(
        move.done and version in (move.to_version, move.from_version) for move in moves
    )


def format_table(moves: Sequence[Move]) -> list[str]:
    """The moves as a plain-text table, newest first."""
    header = (
        "#",
        "when (UTC)",
        "move",
        "by",
        "who",
        "reason",
        "MLflow run",
        "Prefect flow run",
    )
    rows = [header] + [_row(move) for move in reversed(moves)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def history_markdown(
    model_name: str, moves: Sequence[Move], decisions: Sequence[Decision] = ()
) -> str:
    """The moves as markdown for a Prefect artifact, newest first: one item each
    (a table of eight columns was cut off at the right in the Prefect UI); then
    the decisions that moved nothing."""
    lines = [
        f"# `{model_name}` `@champion` history",
        "",
        f"{len(moves)} move(s), newest first. In MLflow: experiment "
        f"`{experiment_name(model_name)}`, a run per move.",
        "",
    ]
    for move in reversed(moves):
        number, when, change, by, who, reason, mlflow_run, flow_run = _row(move)
        item = f"- **#{number} · {change} · {by}** · {when} UTC · {who}: {reason}"
        if mlflow_run:
            item += f" · MLflow run `{mlflow_run}`"
        if flow_run:
            item += f" · Prefect flow run `{flow_run}`"
        lines.append(item)
    if decisions:
        lines += ["", "## Approvals refused or expired (nothing moved)", ""]
        lines += [f"- {decision.sentence}" for decision in reversed(decisions)]
    return "\n".join(lines)


def _row(move: Move) -> tuple[str, ...]:
    change = f"{_label(move.from_version)} -> v{move.to_version}"
    if not move.done:
        change += " (did not move)" if move.status != _RUNNING else " (unconfirmed)"
    return (
        str(move.seq),
        move.at.replace("T", " ").removesuffix("Z"),
        change,
        move.by,
        move.who,
        _cell(move.reason),
        move.mlflow_run or "",
        move.prefect_flow_run or "",
    )


def _cell(text: str, limit: int = 120) -> str:
    """One line of at most ``limit`` characters (the record keeps it whole)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _step(stack: list[str], version: str, *, rollback: bool) -> None:
    if rollback and version in stack:
        del stack[len(stack) - stack[::-1].index(version) :]
    elif not stack or stack[-1] != version:
        stack.append(version)


def _last_seq(client: MlflowClient, experiment_id: str) -> int:
    # The highest number given, not the newest run's: start times come from
    # each writer's clock.
    seqs = [
        int(run.data.tags.get("move.seq", "0"))
        for run in _runs(client, experiment_id, "")
    ]
    return max(seqs, default=0)


def _runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string,
            run_view_type=ViewType.ALL,
            max_results=_PAGE,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _seq(run: Run) -> int:
    return int(run.data.tags.get("move.seq", "0"))


def _move(run: Run) -> Move:
    tags = run.data.tags
    return Move(
        seq=_seq(run),
        at=tags.get("move.at", ""),
        from_version=_version(tags.get("move.from")),
        to_version=tags.get("move.to", ""),
        by=tags.get("move.by", ""),
        who=tags.get("move.who", ""),
        reason=tags.get("move.reason", ""),
        mlflow_run=tags.get("move.mlflow_run") or None,
        prefect_flow_run=tags.get("move.prefect_flow_run") or None,
        status=run.info.status,
        record_id=run.info.run_id,
    )


def _version(value: str | None) -> str | None:
    return None if value in (None, "", "none") else value


def _name(seq: int, by: str, from_version: str | None, to_version: str) -> str:
    return f"#{seq} {by}: {_label(from_version)} -> v{to_version}"


def _description(
    model_name: str,
    seq: int,
    at: str,
    from_version: str | None,
    to_version: str,
    mover: Mover,
) -> str:
    # Backticks: MLflow renders a bare @name as a link to github.com/name.
    sources = [
        f"MLflow run `{mover.mlflow_run}`" if mover.mlflow_run else "",
        f"Prefect flow run `{mover.prefect_flow_run}`"
        if mover.prefect_flow_run
        else "",
    ]
    made = " and ".join(source for source in sources if source)
    return (
        f"Move #{seq} of `{model_name}` `@champion`, {at}: "
        f"{_label(from_version)} -> v{to_version}, by {mover.by} "
        f"({mover.person()}). Reason: {code_aliases(mover.reason)}"
        + (f". Made by {made}." if made else ".")
    )


def _label(version: str | None) -> str:
    return f"v{version}" if version else "none"
