"""The served model: raw 0..255 pixels only, Keras's answers, bounded calls."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModelContext

from mnist_pipeline.config import JSON_BYTES_PER_IMAGE, ServeConfig
from mnist_pipeline.serving import (
    MAX_IMAGES_KEY,
    MAX_IMAGES_VARIABLE,
    PREDICT_BATCH,
    MnistClassifier,
    as_model_input,
    check_pixels,
)


def test_raw_pixels_pass():
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.float32)
    check_pixels(images)
    check_pixels(np.zeros((1, 28, 28), np.float32))  # a blank image is raw too


def test_scaled_images_are_refused_with_advice():
    images = np.random.default_rng(0).random((2, 28, 28)).astype(np.float32)
    with pytest.raises(MlflowException, match="multiplied by 255"):
        check_pixels(images)
    binary = (images > 0.5).astype(np.float32)
    with pytest.raises(MlflowException, match=r"Image\(s\) \[0, 1\] look scaled"):
        check_pixels(binary)


@pytest.mark.parametrize("bad", [np.nan, 300.0, -1.0])
def test_out_of_range_is_refused(bad):
    images = np.zeros((1, 28, 28), np.float32)
    images[0, 3, 3] = bad
    with pytest.raises(MlflowException, match="within 0..255") as info:
        check_pixels(images)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"


def test_as_model_input_keeps_values():
    images = np.arange(784, dtype=np.uint32).reshape(1, 28, 28) % 256
    converted = as_model_input(images.astype(np.uint8))
    assert converted.dtype == np.float32 and converted.shape == (1, 28, 28)
    np.testing.assert_array_equal(converted, images)


@pytest.fixture(scope="module")
def keras_model_path(tmp_path_factory):
    import keras

    from mnist_pipeline.model import build_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    build_model().save(path)
    return path


def classifier(path, model_config: dict | None = None) -> MnistClassifier:
    model = MnistClassifier()
    model.load_context(PythonModelContext({"keras_model": str(path)}, model_config))
    return model


@pytest.mark.parametrize("count", [1, 7, PREDICT_BATCH, PREDICT_BATCH + 3])
def test_predictions_equal_keras_predict_to_the_last_bit(keras_model_path, count):
    model = classifier(keras_model_path)
    rng = np.random.default_rng(count)
    images = rng.integers(0, 256, (count, 28, 28)).astype(np.float32)
    scaled = images.reshape(-1, 28, 28, 1) / np.float32(255.0)
    expected = model.model.predict(scaled, batch_size=PREDICT_BATCH, verbose=0)
    probabilities = model.predict(None, images)
    assert probabilities.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(probabilities, expected)


def test_images_per_call_are_bounded_by_the_model_config_or_the_variable(
    keras_model_path, monkeypatch
):
    images = np.zeros((3, 28, 28), np.float32)
    monkeypatch.delenv(MAX_IMAGES_VARIABLE, raising=False)
    # Versions logged before the bound was declared carry no model config.
    assert classifier(keras_model_path).predict(None, images).shape == (3, 10)
    assert classifier(keras_model_path, {MAX_IMAGES_KEY: 0}).max_images is None
    assert classifier(keras_model_path, {MAX_IMAGES_KEY: 2}).max_images == 2
    monkeypatch.setenv(MAX_IMAGES_VARIABLE, "5")  # serve-model's, over the config
    assert classifier(keras_model_path, {MAX_IMAGES_KEY: 2}).max_images == 5
    monkeypatch.setenv(MAX_IMAGES_VARIABLE, "2")
    bounded = classifier(keras_model_path)
    assert bounded.predict(None, images[:2]).shape == (2, 10)
    with pytest.raises(MlflowException) as info:
        bounded.predict(None, images)
    message = info.value.message
    assert "holds 3 images" in message and "at most 2 per request" in message
    assert "mnist-pipeline predict" in message
    assert info.value.get_http_status_code() == 400


def test_no_images_give_no_predictions(keras_model_path):
    empty = np.zeros((0, 28, 28), np.float32)
    assert classifier(keras_model_path).predict(None, empty).shape == (0, 10)


def test_body_limit_defaults_to_the_image_limit():
    assert ServeConfig().body_limit() == 1000 * JSON_BYTES_PER_IMAGE
    assert ServeConfig(max_images_per_request=10).body_limit() == 10 * 8192
    assert ServeConfig(max_body_bytes=5000).body_limit() == 5000
