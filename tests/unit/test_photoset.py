"""Photo sets for measuring: real non-MNIST strokes, rendered as users send them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from mnist_pipeline import photoset


def test_uci_strokes_are_sklearns_bundled_handwritten_digits():
    strokes, labels = photoset.uci_strokes()
    assert len(strokes) == len(labels) == 1797
    assert set(labels.tolist()) == set(range(10))
    assert (
        strokes[0].shape == (64, 48) and 0 <= strokes[0].min() <= strokes[0].max() <= 1
    )
    assert all(s.max() == 1.0 for s in strokes[:50])  # every digit has solid ink


def test_each_style_is_a_file_of_the_kind_it_names():
    (strokes,) = photoset.mnist_strokes(np.kron(np.eye(28, dtype=np.uint8), 255)[None])
    rng = np.random.default_rng(0)
    sizes = set()
    for style in photoset.STYLES:
        data, suffix = photoset.render_photo(strokes, style, rng)
        image = Image.open(io.BytesIO(data))
        sizes.add(image.size)
        assert (image.format, suffix) == (
            ("JPEG", ".jpg") if style in {"jpeg", "exif-rotated"} else ("PNG", ".png")
        )
        orientation = image.getexif().get(ExifTags.Base.Orientation)
        assert (orientation in {3, 6, 8}) == (style == "exif-rotated")
        if style.startswith("rgba"):
            alpha = np.asarray(image)[..., 3]
            assert image.mode == "RGBA" and alpha[0, 0] == 0 and alpha.max() > 200
        else:
            gray = np.asarray(ImageOps.exif_transpose(image).convert("L"))
            border = np.median(np.concatenate([gray[0], gray[-1]]))
            assert (border < 100) == (style == "chalk")  # chalk: light on dark
    assert len(sizes) == len(photoset.STYLES)  # every photo has its own size


def test_exif_rotated_photos_show_upright_once_the_tag_is_applied():
    strokes = np.zeros((60, 40), np.float32)
    strokes[5:15, 5:35] = 1.0  # a bar along the top: where it ends up tells
    for seed in range(6):
        data, _ = photoset.render_photo(
            strokes, "exif-rotated", np.random.default_rng(seed)
        )
        shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
        dark = shown.min(axis=2) < 128
        rows, cols = np.nonzero(dark)
        assert np.ptp(cols) > np.ptp(rows)  # the bar is horizontal again


def test_a_written_set_reads_back_with_its_labels(tmp_path):
    strokes, labels = photoset.uci_strokes()
    records = photoset.write_photo_set(tmp_path, strokes[:8], labels[:8], seed=3)
    assert photoset.read_photo_set(tmp_path) == records
    assert [r.label for r in records] == labels[:8].tolist()
    assert all((tmp_path / r.file).is_file() for r in records)
    with pytest.raises(ValueError, match="style must be one of"):
        photoset.render_photo(strokes[0], "polaroid", np.random.default_rng(0))
