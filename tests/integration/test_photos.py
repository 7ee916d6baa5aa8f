"""A trained model reads photographed digits once they are normalised as MNIST's.

The photos are digits pasted off-centre and scaled on unevenly lit, noisy
paper, as PNG, JPEG, EXIF-rotated JPEG, RGBA drawings and chalk, written to
files and read back: the sample's *test* digits (never trained on), and UCI's
handwritten digits, which are not MNIST's at all.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mnist_pipeline import photos, photoset


@pytest.fixture(scope="module")
def model(trained_registry):
    import keras

    return keras.models.load_model(trained_registry.root / "model.keras")


def accuracy(model, folder, records, mode) -> float:
    images = np.stack(
        [photos.normalise_photo(Image.open(folder / r.file), mode) for r in records]
    )
    predicted = model.predict(images[..., None].astype("float32") / 255, verbose=0)
    return float((predicted.argmax(axis=1) == [r.label for r in records]).mean())


def test_photos_of_unseen_test_digits_are_read_at_least_nine_in_ten(
    model, trained_registry, tmp_path
):
    sample = trained_registry.sample
    strokes = photoset.mnist_strokes(sample.x_test[:300])
    records = photoset.write_photo_set(tmp_path, strokes, sample.y_test[:300], seed=5)
    assert {r.style for r in records} == set(photoset.STYLES)
    normalised = accuracy(model, tmp_path, records, "mnist")
    resized = accuracy(model, tmp_path, records, "resize")
    assert normalised >= 0.9, normalised
    assert normalised > resized + 0.3, (normalised, resized)


def test_photos_of_digits_from_outside_mnist_are_read_far_better_normalised(
    model, tmp_path
):
    # UCI's handwritten digits (scikit-learn's bundled set): other writers, other
    # scanning, never part of MNIST. The small session model reads 0.67 of them
    # normalised the MNIST way and 0.15 resized (measured at seed 5).
    strokes, labels = photoset.uci_strokes()
    chosen = np.random.default_rng(0).choice(len(labels), 300, replace=False)
    records = photoset.write_photo_set(
        tmp_path, [strokes[i] for i in chosen], labels[chosen], seed=5
    )
    assert {r.style for r in records} == set(photoset.STYLES)
    normalised = accuracy(model, tmp_path, records, "mnist")
    resized = accuracy(model, tmp_path, records, "resize")
    assert normalised >= 0.6, normalised
    assert normalised > resized + 0.3, (normalised, resized)
