"""The served model's input contract: raw 0..255 pixels, anything else refused."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from mnist_pipeline.serving import as_model_input, check_pixels


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
