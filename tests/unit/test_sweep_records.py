"""What a sweep records of its trials: run names and tags, the summary figures."""

from __future__ import annotations

from mnist_pipeline.sweep import TRIAL_TAG, trial_name, trial_tags, trials_summary

from .test_sweep import PARAMS, result


def test_a_trial_run_is_named_and_tagged_by_its_index():
    assert trial_name(3, PARAMS) == f"trial-3 ({PARAMS.label()})"
    assert trial_tags(3) == {TRIAL_TAG: "3"}
    assert trial_tags(3, "host:42") == {TRIAL_TAG: "3", "sweep.worker": "host:42"}


def test_the_summary_counts_failures_overlap_and_names_the_best_trial():
    results = [
        result(0, val_accuracy=0.91, span=(0, 10)),
        result(1, val_accuracy=0.95, span=(5, 15)),
        result(2, status="FAILED", span=(20, 21)),
    ]
    tags, metrics = trials_summary(results, best_index=1)
    assert tags == {
        "sweep.trials": "3",
        "sweep.failed_trials": "1",
        "sweep.best_trial": "1",
        "sweep.best_run_id": "run1",
    }
    assert metrics == {
        "trials": 3,
        "failed_trials": 1,
        "max_concurrent_trials": 2,
        "best_val_accuracy": 0.95,
    }


def test_a_sweep_without_a_best_trial_records_no_best():
    tags, metrics = trials_summary([result(0, status="FAILED")], best_index=None)
    assert "sweep.best_trial" not in tags and "best_val_accuracy" not in metrics
    assert metrics["failed_trials"] == 1
