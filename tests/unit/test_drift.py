"""Drift statistics: the sample's own images pass, broken batches are flagged.

The model's outputs here are fixed synthetic probabilities (the same for every
batch), so only the image features can move; the model-output features are
checked with a trained model in tests/integration/test_drift_automation.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mnist_pipeline import drift, gate, plots
from mnist_pipeline.config import DriftConfig
from mnist_pipeline.data import load_sample
from mnist_pipeline.report import drift_markdown

IMAGE_SIGNS = {"mean_intensity", "ink_share", "pixel_histogram"}


def outputs(labels: np.ndarray) -> np.ndarray:
    """Confident, mostly right class probabilities, the same for every batch."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (len(labels), 10))
    logits[np.arange(len(labels)), labels] += 6
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def reference(sample):
    return drift.reference_profile(sample.x_test, outputs(sample.y_test))


def check(images: np.ndarray, labels: np.ndarray, reference, **thresholds):
    batch = drift.batch_profile(images, outputs(labels))
    return drift.compare(batch, reference, DriftConfig(**thresholds))


def test_the_samples_own_images_do_not_drift(sample, reference):
    assert check(sample.x_test, sample.y_test, reference).drift_detected is False
    for start in (0, 1000, 2000):
        images = sample.x_train[start : start + 1000]
        report = check(images, sample.y_train[start : start + 1000], reference)
        assert report.drift_detected is False, report.drifting
        assert report.ood_share < 0.05
    small = check(sample.x_train[:20], sample.y_train[:20], reference)
    assert small.drift_detected is False


def test_inverted_images_drift_on_intensity_ink_and_border(sample, reference):
    report = check(255 - sample.x_test, sample.y_test, reference)
    assert report.drift_detected
    assert IMAGE_SIGNS | {"border_intensity"} <= set(report.drifting)
    assert not {"confidence", "entropy", "predicted_class"} & set(report.drifting)
    assert all(report.out_of_distribution)
    assert report.metrics()["drift_detected"] == 1.0


def test_heavily_noised_images_drift_on_border_box_and_pixels(sample, reference):
    noise = np.random.default_rng(1).normal(0, 80, sample.x_test.shape)
    noisy = np.clip(sample.x_test + noise, 0, 255).astype(np.uint8)
    report = check(noisy, sample.y_test, reference)
    expected = IMAGE_SIGNS | {"border_intensity", "box_height", "box_width"}
    assert expected <= set(report.drifting)
    assert report.ood_share > 0.9


def test_blank_images_drift_on_ink_and_box_but_not_the_border(sample, reference):
    blank = np.zeros((30, 28, 28), np.uint8)
    report = check(blank, sample.y_test[:30], reference)
    assert IMAGE_SIGNS | {"box_height", "box_width"} <= set(report.drifting)
    assert "border_intensity" not in report.drifting  # MNIST's border is black too
    assert all("ink_share" in reasons for reasons in report.ood_reasons)


def test_only_the_odd_images_of_a_batch_are_flagged(sample, reference):
    images = sample.x_train[:100].copy()
    images[[3, 40, 77]] = 255 - images[[3, 40, 77]]
    report = check(images, sample.y_train[:100], reference)
    flagged = np.flatnonzero(report.out_of_distribution)
    assert {3, 40, 77} <= set(flagged) and len(flagged) <= 8
    assert "border_intensity" in report.ood_reasons[40]
    assert report.drift_detected is False  # three in a hundred is no drift


def test_images_shifted_by_two_pixels_drift_on_the_column_centre_only(
    sample, reference
):
    shifted = gate.shift(sample.x_train[:300], dx=2)
    report = check(shifted, sample.y_train[:300], reference)
    assert report.drifting == ["centre_col"]
    (centre,) = [f for f in report.features if f.name == "centre_col"]
    assert centre.batch_mean == pytest.approx(centre.reference_mean + 2, abs=0.1)


def test_thresholds_decide_the_verdict(sample, reference):
    shifted = gate.shift(sample.x_train[:300], dx=2)
    lenient = check(shifted, sample.y_train[:300], reference, psi_threshold=50)
    assert lenient.drift_detected is False and lenient.thresholds.psi_threshold == 50
    inverted = 255 - sample.x_test[:200]
    no_js = check(inverted, sample.y_test[:200], reference, js_threshold=1)
    assert "pixel_histogram" not in no_js.drifting and no_js.drift_detected


def test_a_few_images_pixel_histogram_is_not_judged(sample, reference):
    report = check(sample.x_train[:5], sample.y_train[:5], reference)
    (pixels,) = [f for f in report.features if f.name == "pixel_histogram"]
    assert pixels.drifted is False and "not judged: 5 image(s)" in pixels.reason
    blank = check(np.zeros((5, 28, 28), np.uint8), sample.y_test[:5], reference)
    assert {"ink_share", "box_height"} <= set(blank.drifting)  # still caught


def test_profiles_and_reports_are_plain_json(sample, reference):
    text = reference.model_dump_json()
    assert drift.Profile.model_validate_json(text) == reference
    assert json.loads(text)["images"] == 1000
    report = check(255 - sample.x_test[:50], sample.y_test[:50], reference)
    assert drift.DriftReport.model_validate_json(report.model_dump_json()) == report


def test_a_reference_keeps_a_seeded_sample_of_values_and_every_images_mean(sample):
    probabilities = outputs(sample.y_train)
    one = drift.reference_profile(sample.x_train, probabilities, max_values=500)
    again = drift.reference_profile(sample.x_train, probabilities, max_values=500)
    assert one == again and one.images == len(sample.x_train)
    assert all(len(v) == 500 for v in one.features.values())
    expected = sample.x_train.mean() / 255
    assert one.means["mean_intensity"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="probabilities"):
        drift.reference_profile(sample.x_train, probabilities[:10])


def test_a_feature_the_reference_never_varied_still_shows_a_change():
    constant = np.zeros(1000)
    edges = drift.quantile_edges(constant, 10)
    assert np.searchsorted(edges, 0.0, side="right") != np.searchsorted(
        edges, 0.01, side="right"
    )
    same = np.full(5, 0.2)
    assert drift.population_stability_index(same, same) == 0.0


def test_features_measure_what_they_say():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 4:24, 10:14] = 255  # a bar 20 high and 4 wide
    values = {k: v[0] for k, v in drift.image_features(image).items()}
    assert values["box_height"] == 20 and values["box_width"] == 4
    assert values["ink_share"] == pytest.approx(80 / 784)
    assert (values["centre_row"], values["centre_col"]) == (13.5, 11.5)
    assert values["border_intensity"] == 0
    uniform = drift.output_features(np.full((1, 10), 0.1))
    assert uniform["entropy"][0] == pytest.approx(1.0)
    assert uniform["confidence"][0] == pytest.approx(0.1)


def test_the_drift_event_names_the_model_version_and_the_features(sample, reference):
    report = check(255 - sample.x_test[:50], sample.y_test[:50], reference)
    event = drift.drift_event(report, "mnist-cnn", "7")
    assert event["event"] == "mnist.drift.detected"
    assert event["resource"]["prefect.resource.id"] == "mnist.model.mnist-cnn.7"
    assert event["payload"]["drifting_features"] == report.drifting
    assert set(event["payload"]["psi"]) == set(report.drifting)


def test_the_overlay_plot_and_the_artifact_mark_the_drifting_features(
    sample, reference, tmp_path
):
    images = 255 - sample.x_test[:100]
    batch = drift.batch_profile(images, outputs(sample.y_test[:100]))
    report = drift.compare(batch, reference)
    figure = plots.plot_drift(batch, reference, report)
    titles = {ax.get_title().split(":")[0]: ax.get_title() for ax in figure.axes}
    for feature in report.features:
        title = titles[feature.name.replace("_", " ")]
        assert ("DRIFT" in title) == feature.drifted, title
    assert "DRIFT in" in figure.get_suptitle()
    assert plots.save_figure(figure, tmp_path / "drift.png").stat().st_size > 10_000
    markdown = drift_markdown(report, "mnist-cnn", "3")
    assert "`mnist-cnn` v3: **drift detected**" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(report.features)
    assert sum("**DRIFT**" in row for row in rows) == len(report.drifting)
    calm = drift.compare(
        drift.batch_profile(sample.x_train[:100], outputs(sample.y_train[:100])),
        reference,
    )
    assert "**no drift**" in drift_markdown(calm, "mnist-cnn", "3")


def test_a_batch_streamed_in_chunks_has_the_profile_of_the_whole(sample, reference):
    images, labels = 255 - sample.x_test[:250], sample.y_test[:250]
    monitor = drift.BatchMonitor(reference)
    flags = []
    for start in range(0, 250, 64):
        chunk = slice(start, start + 64)
        flags += monitor.add(images[chunk], outputs(labels)[chunk])
    whole = drift.batch_profile(images, outputs(labels))
    streamed = monitor.profile()
    assert streamed.images == 250
    for name, values in whole.features.items():
        np.testing.assert_allclose(streamed.features[name], values)
        assert streamed.means[name] == pytest.approx(whole.means[name])
    np.testing.assert_allclose(streamed.pixel_shares, whole.pixel_shares)
    np.testing.assert_allclose(streamed.class_shares, whole.class_shares)
    report = monitor.report()
    assert report.drift_detected and flags == report.out_of_distribution


def test_a_long_batch_keeps_a_bounded_sample_of_values(sample, reference):
    monitor = drift.BatchMonitor(reference, max_values=100)
    for start in range(0, 1000, 200):
        chunk = slice(start, start + 200)
        monitor.add(sample.x_test[chunk], outputs(sample.y_test)[chunk])
    profile = monitor.profile()
    assert profile.images == 1000
    assert all(len(values) == 100 for values in profile.features.values())
    whole = drift.batch_profile(sample.x_test, outputs(sample.y_test))
    assert profile.means == pytest.approx(whole.means)  # every image counted
    assert monitor.report().drift_detected is False


def test_a_long_batch_counts_every_flagged_image_not_the_sample(sample, reference):
    images = sample.x_test.copy()
    images[:40] = 255 - images[:40]  # 40 inverted images in 1,000
    monitor = drift.BatchMonitor(reference, max_values=100)
    flags = []
    for start in range(0, 1000, 200):
        chunk = slice(start, start + 200)
        flags += monitor.add(images[chunk], outputs(sample.y_test)[chunk])
    flagged = sum(flags)
    assert flagged >= 40
    report = monitor.report()
    assert report.ood_images == flagged
    assert report.ood_share == pytest.approx(flagged / 1000)
    assert report.metrics()["ood_share"] == pytest.approx(flagged / 1000)
    payload = drift.drift_event(report, "mnist-cnn", "1")["payload"]
    assert payload["ood_share"] == round(flagged / 1000, 4)
    markdown = drift_markdown(report, "mnist-cnn", "1")
    assert f"{flagged} image(s) ({flagged / 1000:.1%}) out of distribution" in markdown
    title = plots.plot_drift(monitor.profile(), reference, report).get_suptitle()
    assert f"{flagged} image(s) out of distribution" in title
