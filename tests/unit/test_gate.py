"""Promotion gate decisions on crafted cases, and the perturbations it scores."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_pipeline.gate import (
    Scores,
    Thresholds,
    decide,
    default_min_accuracy,
    perturbations,
    shift,
)

THRESHOLDS = Thresholds(
    min_accuracy=0.94,
    max_accuracy_drop=0.002,
    max_recall_drop=0.02,
    min_robust_accuracy=0.8,
)
ROBUST = {"shift_left": 0.9, "shift_right": 0.92, "noise": 0.97}


def names_failed(decision) -> list[str]:
    return [c.name for c in decision.checks if not c.passed]


def test_first_model_is_promoted_on_floor_and_robustness():
    decision = decide(Scores(0.96, 0.9), None, ROBUST, 1.0, THRESHOLDS)
    assert decision.promote
    assert {c.name for c in decision.checks} == {
        "accuracy_floor",
        "robustness",
        "serving_smoke_test",
    }
    assert decision.reasons == []
    assert "champion_accuracy" not in decision.figures


def test_first_model_below_the_floor_is_rejected():
    decision = decide(Scores(0.93, 0.9), None, ROBUST, 1.0, THRESHOLDS)
    assert not decision.promote
    assert names_failed(decision) == ["accuracy_floor"]
    assert decision.reasons == ["test accuracy 0.9300 < required 0.9400"]


def test_better_candidate_is_promoted():
    decision = decide(Scores(0.975, 0.93), Scores(0.97, 0.92), ROBUST, 1.0, THRESHOLDS)
    assert decision.promote
    assert decision.figures["champion_accuracy"] == 0.97


def test_equal_within_tolerance_is_promoted():
    decision = decide(
        Scores(0.9685, 0.91), Scores(0.970, 0.92), ROBUST, 1.0, THRESHOLDS
    )
    assert decision.promote  # 0.0015 below, tolerance 0.002; recall 0.01 below of 0.02


def test_worse_candidate_is_rejected_with_the_compared_figures():
    decision = decide(Scores(0.965, 0.92), Scores(0.970, 0.92), ROBUST, 1.0, THRESHOLDS)
    assert not decision.promote
    assert names_failed(decision) == ["no_accuracy_regression"]
    (reason,) = decision.reasons
    assert reason == (
        "test accuracy 0.9650 < required 0.9680 "
        "(champion's 0.9700 - allowed drop 0.0020)"
    )


def test_worst_class_recall_regression_is_rejected():
    decision = decide(Scores(0.975, 0.85), Scores(0.970, 0.90), ROBUST, 1.0, THRESHOLDS)
    assert names_failed(decision) == ["no_recall_regression"]


def test_failing_robustness_is_rejected():
    fragile = {"shift_left": 0.6, "shift_right": 0.7, "noise": 0.95}
    decision = decide(Scores(0.98, 0.95), None, fragile, 1.0, THRESHOLDS)
    assert names_failed(decision) == ["robustness"]
    assert decision.figures["robust_shift_left"] == 0.6


def test_serving_disagreement_is_rejected():
    decision = decide(Scores(0.98, 0.95), None, ROBUST, 0.999, THRESHOLDS)
    assert names_failed(decision) == ["serving_smoke_test"]


def test_all_failures_are_reported_together():
    decision = decide(
        Scores(0.5, 0.1), Scores(0.97, 0.9), {"noise": 0.4}, 0.5, THRESHOLDS
    )
    assert len(decision.reasons) == 5


def test_default_floor_depends_on_the_dataset():
    assert default_min_accuracy("mnist-sample") == 0.94
    assert default_min_accuracy("mnist-sample-subset400+200") == 0.94
    assert default_min_accuracy("mnist") == 0.98


def test_shift_moves_pixels_and_fills_black():
    images = np.zeros((1, 28, 28), np.uint8)
    images[0, 10, 10] = 255
    assert shift(images, dx=2)[0, 10, 12] == 255
    assert shift(images, dx=-2)[0, 10, 8] == 255
    assert shift(images, dy=2)[0, 12, 10] == 255
    assert shift(images, dy=-2)[0, 8, 10] == 255
    edge = np.full((1, 28, 28), 255, np.uint8)
    assert (shift(edge, dx=2)[0, :, :2] == 0).all()


def test_perturbations_are_seeded_and_mild():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    first, again = perturbations(images, seed=1), perturbations(images, seed=1)
    assert set(first) == {
        "shift_left",
        "shift_right",
        "shift_up",
        "shift_down",
        "noise",
    }
    np.testing.assert_array_equal(first["noise"], again["noise"])
    difference = np.abs(first["noise"].astype(int) - images.astype(int)).mean()
    assert 5 < difference < 30
    assert first["noise"].dtype == np.uint8


def test_thresholds_reject_nothing_silently():
    with pytest.raises(TypeError):
        Thresholds()  # the accuracy floor has no silent default
