"""A person's decision as data: its words, tags and place among the gate's checks."""

from __future__ import annotations

import pytest

from mnist_pipeline import approval
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.prefect_server import TEMPORARY_API_ENV


def test_an_answer_says_who_decided_what_and_when():
    yes = approval.answered(True, " ok ", " alice ", "2026-12-06 23:40 UTC", "r (id)")
    assert yes.approved and yes.check().passed
    assert yes.sentence() == 'approved by alice on 2026-12-06 23:40 UTC: "ok"'
    assert yes.tags() == {
        "approval.decision": "approved",
        "approval.comment": "ok",
        "approval.by": "alice",
    }
    unnamed = approval.answered(False, "", "", "2026-12-06 23:41 UTC", None)
    assert not unnamed.check().passed
    assert unnamed.sentence() == "rejected by an unnamed person on 2026-12-06 23:41 UTC"
    late = approval.expired("2026-12-07 23:41 UTC", None)
    assert late.tags()["approval.decision"] == "expired"
    assert late.check().detail == (
        "approval expired on 2026-12-07 23:41 UTC: nobody decided in time"
    )


def test_a_long_comment_is_cut_in_the_tag_and_whole_in_the_sentence():
    long = approval.answered(True, "x" * 1500, "bob", "t", None)
    assert len(long.tags()["approval.comment"]) == 500
    assert "x" * 1500 in long.sentence()


def test_approval_needs_a_server_someone_can_open(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.approval import require_reachable_server

    temporary = "http://127.0.0.1:8123/api"
    monkeypatch.setenv(TEMPORARY_API_ENV, temporary)
    with temporary_settings(updates={PREFECT_API_URL: temporary}):
        with pytest.raises(PipelineError, match="needs a Prefect server"):
            require_reachable_server()
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        require_reachable_server()
