"""The alias history's pure parts: the rollback stack and the printed table."""

from __future__ import annotations

from mnist_pipeline.alias_history import (
    Move,
    champion_stack,
    format_table,
    was_champion,
)

DONE, FAILED = "FINISHED", "FAILED"


def _moves(*steps: tuple[str, str | None, str] | tuple[str, str | None, str, str]):
    return [
        Move(
            seq=number,
            at=f"2026-12-0{number}T02:00:00Z",
            from_version=step[1],
            to_version=step[2],
            by=step[0],
            who="promotion gate",
            reason=f"reason {number}",
            mlflow_run=None,
            prefect_flow_run=None,
            status=step[3] if len(step) > 3 else DONE,
            record_id=f"r{number}",
        )
        for number, step in enumerate(steps, start=1)
    ]


def test_promotions_push_and_rollbacks_pop():
    moves = _moves(
        ("gate", None, "1"),
        ("gate", "1", "2"),
        ("gate", "2", "3"),
        ("rollback", "3", "2"),
    )
    assert champion_stack(moves[:3], "3") == ["1", "2", "3"]
    assert champion_stack(moves, "2") == ["1", "2"]


def test_rolling_forward_to_a_version_rolled_back_from_pushes_it():
    moves = _moves(
        ("gate", None, "1"),
        ("promote", "1", "2"),
        ("rollback", "2", "1"),
        ("rollback", "1", "2"),
    )
    assert champion_stack(moves, "2") == ["1", "2"]


def test_moves_that_did_not_happen_are_left_out():
    moves = _moves(("gate", None, "1"), ("promote", "1", "5", FAILED))
    assert champion_stack(moves, "1") == ["1"]


def test_a_champion_set_by_hand_counts_as_pushed():
    moves = _moves(("gate", None, "1"), ("gate", "1", "2"))
    assert champion_stack(moves, "7") == ["1", "2", "7"]
    assert champion_stack([], "4") == ["4"]


def test_the_table_is_newest_first_and_marks_moves_that_did_not_happen():
    moves = _moves(("gate", None, "1"), ("promote", "1", "5", FAILED))
    header, newest, oldest = format_table(moves)
    assert header.split()[:3] == ["#", "when", "(UTC)"]
    assert newest.startswith("2  2026-12-02 02:00:00  v1 -> v5 (did not move)")
    assert oldest.startswith("1  2026-12-01 02:00:00  none -> v1")


def test_the_champion_a_first_recorded_move_replaced_can_be_gone_back_to():
    # v1 became champion before the history began (or by hand in the UI).
    moves = _moves(("gate", "1", "2"))
    assert champion_stack(moves, "2") == ["1", "2"]
    assert was_champion(moves, "1") and was_champion(moves, "2")
    assert not was_champion(moves, "3")


def test_a_long_reason_stays_on_one_line_of_the_table():
    (move,) = _moves(("promote", None, "1"))
    long = Move(**{**move.__dict__, "reason": "first line\nsecond " + "x" * 300})
    _, row = format_table([long])
    assert "\n" not in row and "first line second x" in row and row.endswith("…")
