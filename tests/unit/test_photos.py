"""Photos as MNIST sees them: crafted pictures of the sample's test digits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import ExifTags, Image
from scipy import ndimage

from mnist_pipeline import photos, photoset
from mnist_pipeline.data import load_sample
from mnist_pipeline.errors import DigitImageError


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """One test digit of each class from the bundled sample (real MNIST)."""
    sample = load_sample()
    return np.stack(
        [sample.x_test[np.flatnonzero(sample.y_test == c)[0]] for c in range(10)]
    )


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def ink_rows(image: np.ndarray) -> int:
    return len(np.flatnonzero(image.max(axis=1) > 128))


def paper(height: int, width: int, *, seed: int = 0, gradient: float = 0.25):
    """Light grey paper lit unevenly from one side, with sensor noise (0..1)."""
    rng = np.random.default_rng(seed)
    light = 1.0 - gradient * np.linspace(0, 1, width)[None, :]
    return np.clip(0.9 * light + rng.normal(0, 0.03, (height, width)), 0, 1)


def on_paper(digit: np.ndarray, top: int, left: int, scale: int, size=(300, 240)):
    """An MNIST digit enlarged and drawn in dark ink on paper; an RGB picture."""
    ink = np.kron(digit / 255.0, np.ones((scale, scale)))
    sheet = paper(*size)
    region = sheet[top : top + ink.shape[0], left : left + ink.shape[1]]
    region[:] = region * (1 - ink) + 0.1 * ink
    return Image.fromarray(np.rint(sheet * 255).astype(np.uint8)).convert("RGB")


def test_digits_pasted_off_centre_on_noisy_paper_come_back_as_mnist_digits(digits):
    for index, digit in enumerate(digits):
        photo = on_paper(digit, top=20 + 7 * index, left=10 + 9 * index, scale=4)
        normalised = photos.normalise_photo(photo)
        assert normalised.shape == (28, 28) and normalised.dtype == np.uint8
        rows, cols = np.nonzero(normalised)
        assert rows.max() - rows.min() < 20 + 1 and cols.max() - cols.min() < 20 + 1
        centre = ndimage.center_of_mass(normalised.astype(float))
        assert np.allclose(centre, photos.CENTRE, atol=1.0), centre
        assert similarity(normalised, digit) > 0.8, index


def test_every_photo_style_of_the_photo_set_is_normalised(digits):
    rng = np.random.default_rng(0)
    scores = []
    for digit in digits:
        (strokes,) = photoset.mnist_strokes(digit[None])
        for style in photoset.STYLES:
            data, _ = photoset.render_photo(strokes, style, rng)
            normalised = photos.normalise_photo(Image.open(io.BytesIO(data)))
            centre = ndimage.center_of_mass(normalised.astype(float))
            assert np.allclose(centre, photos.CENTRE, atol=1.0), (style, centre)
            scores.append(similarity(normalised, digit))
    assert np.mean(scores) > 0.9 and min(scores) > 0.6


def test_dark_ink_on_light_and_light_ink_on_dark_give_the_same_image(digits):
    photo = on_paper(digits[3], top=40, left=30, scale=5)
    negative = Image.fromarray(255 - np.asarray(photo))
    dark_on_light = photos.normalise_photo(photo)
    light_on_dark = photos.normalise_photo(negative)
    assert similarity(dark_on_light, light_on_dark) > 0.95
    assert dark_on_light[0, 0] == 0 and dark_on_light.max() == 255


@pytest.mark.parametrize("stroke", [(255, 255, 255), (0, 0, 0), (200, 30, 30)])
def test_a_transparent_canvas_is_background_whatever_the_stroke_colour(digits, stroke):
    alpha = np.kron(digits[7], np.ones((4, 4), np.uint8))
    pixels = np.zeros((160, 200, 4), np.uint8)
    pixels[..., :3] = stroke
    pixels[30 : 30 + alpha.shape[0], 60 : 60 + alpha.shape[1], 3] = alpha
    drawing = Image.fromarray(pixels, mode="RGBA")
    assert similarity(photos.normalise_photo(drawing), digits[7]) > 0.9


def test_the_notebooks_resize_loses_a_white_stroke_on_a_transparent_canvas(digits):
    pixels = np.zeros((112, 112, 4), np.uint8)
    pixels[..., :3] = 255
    pixels[..., 3] = np.kron(digits[7], np.ones((4, 4), np.uint8))
    drawing = Image.fromarray(pixels, mode="RGBA")
    assert photos.normalise_photo(drawing, mode="resize").max() < 10
    assert photos.normalise_photo(drawing, mode="mnist").max() == 255


def test_exif_orientation_is_applied_before_normalising(digits):
    photo = on_paper(digits[2], top=50, left=40, scale=4)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90° clockwise to view"
    buffer = io.BytesIO()
    photo.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif)
    rotated_file = Image.open(buffer)
    upright = photos.normalise_photo(photo)
    assert similarity(photos.normalise_photo(rotated_file), upright) > 0.95
    stored_pixels = Image.fromarray(np.asarray(rotated_file))  # without the tag
    sideways = photos.normalise_photo(stored_pixels)
    assert similarity(sideways, np.rot90(upright)) > similarity(sideways, upright)


def test_the_resize_mode_is_the_notebooks_whole_picture_resize():
    photo = np.full((200, 150, 3), 235, np.uint8)
    photo[80:120, 70:80] = (20, 20, 60)  # a short stroke amid wide margins
    resized = photos.normalise_photo(Image.fromarray(photo), mode="resize")
    assert resized[0, 0] < 30 and resized[14, 14] > 180
    assert ink_rows(resized) < 8  # the margins are kept, not cropped
    mnist = photos.normalise_photo(Image.fromarray(photo), mode="mnist")
    assert ink_rows(mnist) >= 19
    with pytest.raises(ValueError, match="mode must be one of"):
        photos.normalise_photo(Image.fromarray(photo), mode="stretch")


@pytest.mark.parametrize(
    "picture",
    [
        np.rint(paper(240, 320) * 255).astype(np.uint8),  # blank, uneven, noisy
        np.full((50, 50), 255, np.uint8),  # one colour
        np.zeros((28, 28), np.uint8),  # an empty MNIST frame
    ],
    ids=["blank-paper", "white", "black"],
)
def test_a_picture_without_ink_is_refused_with_the_reason(picture):
    with pytest.raises(DigitImageError, match="no ink") as raised:
        photos.normalise_photo(Image.fromarray(picture))
    assert raised.value.reason == "no ink"


def test_two_digits_side_by_side_are_refused_with_the_reason(digits):
    pair = np.hstack([digits[4], digits[2]])
    sheet = paper(200, 340)
    ink = np.kron(pair / 255.0, np.ones((5, 5)))
    sheet[30:170, 20:300] = sheet[30:170, 20:300] * (1 - ink) + 0.1 * ink
    photo = Image.fromarray(np.rint(sheet * 255).astype(np.uint8))
    with pytest.raises(DigitImageError, match="several digits") as raised:
        photos.normalise_photo(photo)
    assert raised.value.reason == "several digits"


def test_a_digit_in_separate_strokes_and_specks_of_dirt_is_one_digit():
    five = np.zeros((140, 110))
    five[10:22, 20:95] = 1  # the bar, not touching the body
    five[28:80, 20:32] = 1
    five[70:82, 20:90] = 1
    five[70:130, 80:92] = 1
    five[120:132, 15:90] = 1
    sheet = paper(260, 260)
    sheet[60:200, 70:180] = sheet[60:200, 70:180] * (1 - five) + 0.1 * five
    sheet[20:24, 20:24] = sheet[240:243, 230:233] = 0.1  # specks
    normalised = photos.normalise_photo(
        Image.fromarray(np.rint(sheet * 255).astype(np.uint8))
    )
    rows = np.flatnonzero(normalised.max(axis=1) > 0)
    assert rows.max() - rows.min() + 1 == 20  # the bar is part of the digit
    assert (
        normalised[: rows.min()].max() == 0 and normalised[rows.max() + 1 :].max() == 0
    )
