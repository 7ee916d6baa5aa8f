"""Batch-inference inputs: every supported layout, photos of digits, and the CSV."""

from __future__ import annotations

import csv
import struct

import numpy as np
import pytest
from PIL import Image

from mnist_pipeline.errors import PredictionInputError
from mnist_pipeline.predict import (
    as_model_images,
    load_inputs,
    to_mnist_image,
    write_predictions,
)


def digit() -> np.ndarray:
    """A white vertical bar on black: MNIST's polarity."""
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 12:16] = 255
    return image


def test_array_layouts_are_normalised():
    images = np.stack([digit()] * 2)
    np.testing.assert_array_equal(as_model_images(images.reshape(2, 784), "x"), images)
    np.testing.assert_array_equal(as_model_images(images[..., None], "x"), images)
    scaled = images.astype(np.float32) / 255
    np.testing.assert_array_equal(as_model_images(scaled, "x"), images)
    raw_float = images.astype(np.float64)
    np.testing.assert_array_equal(as_model_images(raw_float, "x"), images)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 28, 27), np.uint8), r"got \(2, 28, 27\)"),
        (np.zeros((0, 28, 28), np.uint8), r"N > 0"),
        (np.full((1, 28, 28), np.nan), "finite"),
        (np.full((1, 28, 28), 400.0), "within"),
    ],
)
def test_bad_arrays_are_refused(array, message):
    with pytest.raises(PredictionInputError, match=message):
        as_model_images(array, "input.npz")


def test_photo_of_dark_digit_on_light_paper_is_inverted_and_resized():
    photo = np.full((200, 150, 3), 235, np.uint8)  # light paper, any size, colour
    photo[30:170, 65:85] = (20, 20, 60)  # dark ink stroke
    converted = to_mnist_image(Image.fromarray(photo))
    assert converted.shape == (28, 28) and converted.dtype == np.uint8
    assert converted[0, 0] < 30  # background became dark
    assert converted[14, 14] > 180  # stroke became light


def test_light_digit_on_dark_stays_and_alpha_is_composited_on_white():
    kept = to_mnist_image(Image.fromarray(digit()))
    np.testing.assert_array_equal(kept > 127, digit() > 127)
    rgba = np.zeros((56, 56, 4), np.uint8)  # transparent background
    rgba[8:48, 24:32] = (0, 0, 0, 255)  # opaque black stroke
    converted = to_mnist_image(Image.fromarray(rgba, mode="RGBA"))
    assert converted[0, 0] < 30 and converted[14, 14] > 180


def test_folder_of_images(tmp_path):
    Image.fromarray(digit()).save(tmp_path / "b.png")
    Image.fromarray(255 - digit()).convert("RGB").resize((90, 90)).save(
        tmp_path / "a.jpg"
    )
    (tmp_path / "notes.txt").write_text("not an image")
    inputs = load_inputs(tmp_path)
    assert inputs.ids == ["a.jpg", "b.png"]
    assert inputs.id_column == "file"
    assert inputs.images.shape == (2, 28, 28)
    assert inputs.images[0, 14, 14] > 150 and inputs.images[0, 0, 0] < 40


def test_folder_with_a_broken_image_names_it(tmp_path):
    Image.fromarray(digit()).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(PredictionInputError, match="broken.png"):
        load_inputs(tmp_path)


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(PredictionInputError, match="no .png or .jpg"):
        load_inputs(tmp_path)
    with pytest.raises(PredictionInputError, match="does not exist"):
        load_inputs(tmp_path / "missing")


def test_npz_keys_and_pickle_refusal(tmp_path):
    images = np.stack([digit()] * 3)
    np.savez(tmp_path / "named.npz", images=images, labels=np.arange(3))
    np.savez(tmp_path / "single.npz", whatever=images)
    np.savez(tmp_path / "keras.npz", x_train=images, x_test=images[:2])
    assert load_inputs(tmp_path / "named.npz").ids == ["0", "1", "2"]
    assert len(load_inputs(tmp_path / "single.npz").ids) == 3
    assert len(load_inputs(tmp_path / "keras.npz").ids) == 2
    np.savez(tmp_path / "ambiguous.npz", a=images, b=images)
    with pytest.raises(PredictionInputError, match="expected one array"):
        load_inputs(tmp_path / "ambiguous.npz")
    np.savez(tmp_path / "pickled.npz", images=np.array([object()], dtype=object))
    with pytest.raises(PredictionInputError, match="pickle"):
        load_inputs(tmp_path / "pickled.npz")


def test_idx_image_file(tmp_path):
    images = np.stack([digit()] * 4)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">IIII", 0x0803, 4, 28, 28) + images.tobytes())
    inputs = load_inputs(path)
    assert inputs.id_column == "index"
    np.testing.assert_array_equal(inputs.images, images)
    path.write_bytes(struct.pack(">IIII", 0x0801, 4, 28, 28) + images.tobytes())
    with pytest.raises(PredictionInputError, match="magic number"):
        load_inputs(path)


def test_csv_has_ids_class_and_ten_probabilities(tmp_path):
    images = np.stack([digit()] * 2)
    inputs = load_inputs_from(images)
    probabilities = np.eye(10, dtype=np.float32)[[3, 7]]
    path = write_predictions(
        tmp_path / "out" / "predictions.csv", inputs, probabilities
    )
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["index", "predicted_class"] + [f"prob_{c}" for c in range(10)]
    assert rows[1][:2] == ["0", "3"] and rows[2][:2] == ["1", "7"]
    assert float(rows[2][2 + 7]) == 1.0


def load_inputs_from(images: np.ndarray):
    from mnist_pipeline.predict import PredictionInput

    ids = [str(i) for i in range(len(images))]
    return PredictionInput(images, ids, id_column="index", source="memory")
