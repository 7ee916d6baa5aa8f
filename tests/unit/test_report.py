"""What the Prefect summary and the model version's description say."""

from __future__ import annotations

import re

from mnist_pipeline import report
from mnist_pipeline.gate import Check, Decision, Scores
from mnist_pipeline.promotion import GateOutcome, version_description

from ..conftest import SAMPLE_REF

SUMMARY = {
    "metrics": {"test_accuracy": 0.97, "test_loss": 0.1, "test_min_class_recall": 0.9},
    "dataset": "mnist-sample",
    "digest": "d1g3st",
    "split_digests": {"train": "tr41n", "test": "t3st"},
    "model_name": "mnist-cnn",
    "version": "3",
    "run_id": "abc",
    "run_url": "http://127.0.0.1:5000/#/experiments/1/runs/abc",
    "gate": "promoted to @champion",
    "training_key": "k3y",
    "code_version": "c0de",
}


def _link_texts(markdown: str) -> list[str]:
    return re.findall(r"\[([^\]]*)\]\(", markdown)


def test_the_summary_links_the_version_in_plain_words():
    # Prefect's markdown artifacts show code spans and bold inside link text raw.
    url = "http://127.0.0.1:5000/#/models/mnist-cnn/versions/3"
    page = report.summary_markdown(version_url=url, **SUMMARY)
    assert f"| Registered model | [mnist-cnn version 3]({url}) |" in page
    assert not [t for t in _link_texts(page) if re.search(r"[`*]", t)]


def test_the_summary_names_each_digest_for_what_it_covers():
    page = report.summary_markdown(version_url=None, **SUMMARY)
    assert (
        "| Dataset | mnist-sample: dataset digest `d1g3st` "
        "(train split `tr41n`, test split `t3st`) |"
    ) in page


def test_a_run_that_trained_nothing_reports_the_holding_versions_verdict_as_its():
    line = report.held_verdict("3", "0123456789abcdef", "2026-12-05", "promoted")
    assert line == "v3's gate (run 01234567, 2026-12-05): promoted"
    assert report.nothing_trained("3", line) == (
        "nothing trained; v3 holds this training; "
        "v3's gate (run 01234567, 2026-12-05): promoted"
    )
    page = report.existing_markdown(
        model_name="mnist-cnn",
        version="3",
        version_url=None,
        run_id="0123456789abcdef",
        run_url=None,
        tags={"test_accuracy": "0.9700", "dataset": "mnist-sample"},
        training_key="k3y",
        gate=line,
    )
    assert f"| Promotion gate | {line} |" in page


def test_aliases_in_a_version_description_are_code_not_github_links():
    checks = [Check("better_than_champion", True, 0.95, ">", 0.94, "95 vs 94 right")]
    outcome = GateOutcome(
        Decision(promote=True, checks=checks),
        "1",
        "same test split as v1 (t3st)",
    )
    text = version_description(outcome, Scores(95, 100, 0.9), SAMPLE_REF)
    assert "`@champion`" in text
    assert not re.search(r"(?<!`)@champion", text)
    # Plain words first: MLflow's versions list shows the start unrendered.
    assert text.startswith(
        "Test accuracy 0.9500 (95/100). Gate: promoted to `@champion` over v1: "
        "95 vs 94 right. "
    )
    assert "Compared with v1: same test split as v1 (t3st)." in text
    assert "dataset digest `d1g3st` (train split `tr41n`, test split `t3st`)" in text
    assert report.code_aliases("kept as @challenger; `@champion` stays") == (
        "kept as `@challenger`; `@champion` stays"
    )
