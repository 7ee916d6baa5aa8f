"""Promotion gate decisions on crafted cases, and the perturbations it scores."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.gate import (
    CandidateChecks,
    PairedTest,
    Scores,
    Thresholds,
    decide,
    default_min_accuracy,
    format_p,
    mcnemar_p,
    measure_candidate,
    perturbations,
    predictions_record,
    recorded_right,
    recorded_scores,
    score_tags,
    scores,
    shift,
    threshold_params,
    thresholds_for,
)
from mnist_pipeline.report import gate_sentence

from ..conftest import make_images

#: The count-only rule (paired test off): these cases have no per-image record.
THRESHOLDS = Thresholds(
    min_accuracy=0.94,
    min_accuracy_gain=0.0,
    max_recall_drop=0.02,
    min_robust_accuracy=0.8,
    max_p_value=1.0,
)
CHECKS = CandidateChecks(
    robust_accuracy={"shift_left": 0.9, "shift_right": 0.92, "noise": 0.97},
    serving_difference=1e-7,
    serving_agreement=1.0,
)


def names_failed(decision) -> list[str]:
    return [c.name for c in decision.checks if not c.passed]


def paired_scores(
    c: int, b: int, both: int, total: int = 1000, recall=(0.92, 0.92)
) -> tuple[Scores, Scores]:
    """A candidate and a champion on ``total`` images: ``both`` right by both,
    ``c`` by the candidate only, ``b`` by the champion only."""
    candidate = np.zeros(total, bool)
    champion = np.zeros(total, bool)
    candidate[:both] = champion[:both] = True
    candidate[both : both + c] = True
    champion[both + c : both + c + b] = True
    return (
        Scores(int(candidate.sum()), total, recall[0], candidate),
        Scores(int(champion.sum()), total, recall[1], champion),
    )


def test_first_model_is_promoted_on_floor_robustness_and_serving():
    decision = decide(Scores(960, 1000, 0.9), CHECKS, None, THRESHOLDS)
    assert decision.promote
    assert {c.name for c in decision.checks} == {
        "accuracy_floor",
        "robustness",
        "serving_smoke_test",
    }
    assert decision.reasons == []
    assert "champion_accuracy" not in decision.figures


def test_first_model_below_the_floor_is_rejected():
    decision = decide(Scores(930, 1000, 0.9), CHECKS, None, THRESHOLDS)
    assert not decision.promote
    assert names_failed(decision) == ["accuracy_floor"]
    assert decision.reasons == ["test accuracy 0.9300 < required 0.9400"]


def test_one_more_image_right_is_better():
    decision = decide(
        Scores(973, 1000, 0.92), CHECKS, Scores(972, 1000, 0.92), THRESHOLDS
    )
    assert decision.promote
    assert decision.figures["champion_accuracy"] == 0.972


def test_an_equal_candidate_leaves_the_champion():
    decision = decide(
        Scores(972, 1000, 0.95), CHECKS, Scores(972, 1000, 0.92), THRESHOLDS
    )
    assert not decision.promote
    assert names_failed(decision) == ["better_than_champion"]
    assert decision.reasons == [
        "test accuracy 0.9720 (972/1000) <= champion's 0.9720 (972/1000)"
    ]


def test_a_slightly_worse_candidate_is_rejected():
    decision = decide(
        Scores(971, 1000, 0.95), CHECKS, Scores(972, 1000, 0.92), THRESHOLDS
    )
    assert names_failed(decision) == ["better_than_champion"]


def test_the_margin_asks_for_more_than_one_image():
    margin = replace(THRESHOLDS, min_accuracy_gain=0.002)
    champion = Scores(970, 1000, 0.92)
    assert not decide(Scores(972, 1000, 0.92), CHECKS, champion, margin).promote
    better = decide(Scores(973, 1000, 0.92), CHECKS, champion, margin)
    assert better.promote
    (check,) = [c for c in better.checks if c.name == "better_than_champion"]
    assert check.detail.endswith("+ required gain 0.0020")


def test_scores_on_different_splits_are_not_compared():
    with pytest.raises(ValueError, match="not the same split"):
        decide(Scores(973, 1000, 0.9), CHECKS, Scores(9700, 10000, 0.9), THRESHOLDS)


def test_worst_class_recall_regression_is_rejected():
    decision = decide(
        Scores(975, 1000, 0.85), CHECKS, Scores(970, 1000, 0.90), THRESHOLDS
    )
    assert names_failed(decision) == ["no_recall_regression"]


def test_failing_robustness_is_rejected():
    fragile = replace(CHECKS, robust_accuracy={"shift_left": 0.6, "noise": 0.95})
    decision = decide(Scores(980, 1000, 0.95), fragile, None, THRESHOLDS)
    assert names_failed(decision) == ["robustness"]
    assert decision.figures["robust_shift_left"] == 0.6


def test_a_served_model_that_differs_is_rejected():
    wrong = replace(CHECKS, serving_difference=0.2, serving_agreement=0.999)
    decision = decide(Scores(980, 1000, 0.95), wrong, None, THRESHOLDS)
    assert names_failed(decision) == ["serving_smoke_test"]
    assert decision.figures["serving_max_difference"] == 0.2


def test_all_failures_are_reported_together():
    bad = CandidateChecks({"noise": 0.4}, serving_difference=0.5, serving_agreement=0.5)
    decision = decide(Scores(500, 1000, 0.1), bad, Scores(970, 1000, 0.9), THRESHOLDS)
    assert len(decision.reasons) == 5


def test_measure_candidate_scores_perturbations_and_the_served_copy():
    images, labels = make_images(30, seed=3)

    def bars(x):  # "predicts" the class from the rows of the bright bar
        bright = x.astype(float).mean(axis=2) > 100
        centre = (bright * np.arange(28)).sum(axis=1) / bright.sum(axis=1)
        classes = np.clip(np.rint((centre - 3) / 2), 0, 9).astype(int)
        return np.eye(10, dtype=np.float32)[classes]

    exact = measure_candidate(bars, bars, images, labels, seed=0)
    assert exact.serving_difference == 0.0 and exact.serving_agreement == 1.0
    assert set(exact.robust_accuracy) == {
        "shift_left",
        "shift_right",
        "shift_up",
        "shift_down",
        "noise",
    }
    assert exact.robust_accuracy["shift_left"] == 1.0  # the bar stays in its rows
    assert exact.robust_accuracy["shift_down"] < 0.5  # rows do
    flipped = measure_candidate(bars, lambda x: bars(x)[:, ::-1], images, labels, 0)
    assert flipped.serving_difference == 1.0 and flipped.serving_agreement < 0.2


def test_scores_count_right_images_and_the_worst_class():
    probabilities = np.eye(3, dtype=np.float32)[[0, 1, 2, 2, 1]]
    result = scores(probabilities, np.array([0, 1, 2, 1, 1]))
    assert (result.correct, result.total) == (4, 5)
    assert result.min_class_recall == pytest.approx(2 / 3)


def test_recorded_scores_only_count_on_the_same_test_split():
    tags = score_tags(Scores(972, 1000, 0.93)) | {"test_digest": "abc"}
    assert recorded_scores(tags, "abc") == Scores(972, 1000, 0.93)
    assert recorded_scores(tags, "xyz") is None
    assert recorded_scores({"test_digest": "abc"}, "abc") is None  # older version


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


#: Each gate setting of the config, a value the candidate below just misses,
#: and the check that must then fail, with the threshold it must then hold.
TIGHTENED = {
    "min_accuracy": (0.98, "accuracy_floor", 0.98),
    "min_accuracy_gain": (0.01, "better_than_champion", 0.98),
    "max_recall_drop": (0.005, "no_recall_regression", 0.915),
    "min_robust_accuracy": (0.95, "robustness", 0.95),
    # c=5, b=0: p = 1/32 = 0.031
    "max_p_value": (0.01, "significant_improvement", 0.01),
}


@pytest.mark.parametrize("setting", TIGHTENED)
def test_each_threshold_set_in_the_config_rejects_a_candidate_missing_only_it(
    setting,
):
    # Better than the champion by 5 images, worst recall 0.01 lower, robust
    # accuracy 0.93: promoted under the defaults (sample floor 0.94, no gain
    # required, recall drop 0.02, robustness 0.80).
    candidate, champion = paired_scores(c=5, b=0, both=970, recall=(0.91, 0.92))
    passing = thresholds_for(TrainConfig(), "mnist-sample")
    assert decide(candidate, CHECKS, champion, passing).promote
    value, check_name, threshold = TIGHTENED[setting]
    tightened = thresholds_for(TrainConfig(**{setting: value}), "mnist-sample")
    decision = decide(candidate, CHECKS, champion, tightened)
    assert not decision.promote
    assert names_failed(decision) == [check_name]
    (check,) = [c for c in decision.checks if c.name == check_name]
    assert check.threshold == pytest.approx(threshold)
    # The setting the user gave, as the check's words print it.
    assert f"{value:.4f}" in check.detail or f"{value:g}:" in check.detail


def test_every_threshold_is_in_the_table_above():
    assert set(TIGHTENED) == {f.name for f in fields(Thresholds)}


def test_the_params_say_the_floor_the_gate_applied():
    """A run's params log the accuracy floor the gate used, never ``None``."""
    default = TrainConfig()
    assert default.min_accuracy is None
    sample = default.model_dump() | threshold_params(default, "mnist-sample")
    assert sample["min_accuracy"] == 0.94
    assert threshold_params(default, "mnist")["min_accuracy"] == 0.98
    assert threshold_params(TrainConfig(min_accuracy=0.5), "mnist-sample") == {
        "min_accuracy": 0.5,
        "min_accuracy_gain": 0.0,
        "max_recall_drop": 0.02,
        "min_robust_accuracy": 0.80,
        "max_p_value": 0.05,
    }


DEFAULT = thresholds_for(TrainConfig(), "mnist-sample")  # max_p_value 0.05


def test_ten_images_only_the_candidate_gets_right_is_significant():
    candidate, champion = paired_scores(c=10, b=0, both=960)
    decision = decide(candidate, CHECKS, champion, DEFAULT)
    assert decision.promote
    assert (decision.paired.c, decision.paired.b) == (10, 0)
    assert decision.paired.p_value == pytest.approx(0.5**10)
    assert decision.figures["p_value"] == pytest.approx(0.000977, abs=1e-6)
    assert gate_sentence(decision, "3") == (
        "promoted to @champion over v3: better by 10 images of 1,000 (c=10, b=0), "
        "p = 0.00098 <= 0.05: a significant improvement"
    )


def test_six_against_four_is_noise_and_the_verdict_says_so():
    candidate, champion = paired_scores(c=6, b=4, both=962)
    decision = decide(candidate, CHECKS, champion, DEFAULT)
    assert not decision.promote
    assert names_failed(decision) == ["significant_improvement"]
    assert decision.lacks_evidence
    assert decision.paired.p_value == pytest.approx(0.377, abs=1e-3)
    assert gate_sentence(decision, "3") == (
        "better by 2 images of 1,000 (c=6, b=4), p = 0.38 > 0.05: not a "
        "significant improvement, kept as @challenger"
    )


def test_the_issues_example_fourteen_against_eight():
    assert mcnemar_p(14, 8) == pytest.approx(0.143, abs=1e-3)
    assert PairedTest(14, 8, mcnemar_p(14, 8)).describe(1000) == (
        "better by 6 images of 1,000 (c=14, b=8), p = 0.14"
    )


def test_equal_predictions_are_not_promoted():
    candidate, champion = paired_scores(c=0, b=0, both=970)
    decision = decide(candidate, CHECKS, champion, DEFAULT)
    assert not decision.promote
    assert decision.paired == PairedTest(c=0, b=0, p_value=1.0, total=1000)
    assert names_failed(decision) == ["better_than_champion"]
    assert not decision.lacks_evidence


@pytest.mark.parametrize(("c", "b"), [(1, 0), (6, 4), (14, 8), (3, 3), (2, 5)])
def test_max_p_value_one_reproduces_the_count_rule(c, b):
    candidate, champion = paired_scores(c=c, b=b, both=960)
    off = replace(DEFAULT, max_p_value=1.0)
    with_vectors = decide(candidate, CHECKS, champion, off)
    counts_only = decide(
        replace(candidate, right=None), CHECKS, replace(champion, right=None), off
    )
    assert with_vectors.promote == counts_only.promote == (c > b)
    assert with_vectors.paired.p_value == pytest.approx(mcnemar_p(c, b))


def test_the_paired_test_needs_the_images_each_model_got_right():
    candidate, champion = paired_scores(c=10, b=0, both=960)
    with pytest.raises(ValueError, match="which images each model got right"):
        decide(candidate, CHECKS, replace(champion, right=None), DEFAULT)


def test_a_release_need_not_be_better_but_not_significantly_worse():
    candidate, champion = paired_scores(c=8, b=10, both=955)
    kept = decide(candidate, CHECKS, champion, DEFAULT)
    assert not kept.promote
    released = decide(candidate, CHECKS, champion, DEFAULT, "serving fix #123")
    assert released.promote
    assert [c.name for c in released.checks][-2:] == [
        "not_worse_than_champion",
        "no_recall_regression",
    ]
    assert gate_sentence(released, "3") == (
        "released to @champion over v3 as a release that need not be better "
        "(serving fix #123): worse by 2 images of 1,000 (c=8, b=10): no evidence "
        "that it is worse (p of a loss this large = 0.41 > 0.05)"
    )
    worse, champion = paired_scores(c=0, b=12, both=955)
    refused = decide(worse, CHECKS, champion, DEFAULT, "serving fix #123")
    assert names_failed(refused) == ["not_worse_than_champion"]
    assert (
        "significantly worse (p of a loss this large = 0.00024 <= 0.05)"
        in (refused.reasons[0])
    )


def test_a_release_keeps_the_floor_robustness_and_serving_checks():
    candidate, champion = paired_scores(c=0, b=0, both=930)
    fragile = replace(CHECKS, robust_accuracy={"noise": 0.5}, serving_difference=0.3)
    decision = decide(candidate, fragile, champion, DEFAULT, "serving fix")
    assert names_failed(decision) == [
        "accuracy_floor",
        "robustness",
        "serving_smoke_test",
    ]


def test_a_p_value_next_to_the_limit_is_not_rounded_onto_it():
    # c=44, b=29: p = 0.0503, which two digits would print as "0.05 > 0.05".
    candidate, champion = paired_scores(c=44, b=29, both=900)
    decision = decide(candidate, CHECKS, champion, DEFAULT)
    assert names_failed(decision) == ["significant_improvement"]
    assert "p = 0.05032 > 0.05: not a significant" in gate_sentence(decision, "3")
    assert format_p(0.0503) == "0.05" and format_p(0.14, 0.05) == "0.14"


def test_a_rejected_verdict_still_says_the_evidence():
    candidate, champion = paired_scores(c=10, b=0, both=960, recall=(0.80, 0.92))
    decision = decide(candidate, CHECKS, champion, DEFAULT)
    assert names_failed(decision) == ["no_recall_regression"]
    assert gate_sentence(decision, "3").endswith(
        "; against the champion: better by 10 images of 1,000 (c=10, b=0), p = 0.00098"
    )


def test_scores_record_which_images_were_right_and_read_back():
    probabilities = np.eye(10)[[0, 1, 2, 3, 3]]
    labels = np.array([0, 1, 2, 3, 4])
    got = scores(probabilities, labels)
    np.testing.assert_array_equal(got.right, [True, True, True, True, False])
    record = predictions_record("abc", labels, probabilities.argmax(axis=1))
    np.testing.assert_array_equal(recorded_right(record, "abc"), got.right)
    assert recorded_right(record, "other-split") is None
