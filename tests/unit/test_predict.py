"""Batch-inference inputs: every supported layout, photos of digits, and the CSV."""

from __future__ import annotations

import csv
import gzip
import struct
from typing import get_args

import numpy as np
import pytest
from PIL import Image

from mnist_pipeline import drift, photoset, predict
from mnist_pipeline.config import PredictConfig
from mnist_pipeline.data import load_sample
from mnist_pipeline.errors import PredictionInputError
from mnist_pipeline.photos import NORMALISATIONS
from mnist_pipeline.predict import open_input, predict_to_csv


def digit() -> np.ndarray:
    """A white vertical bar on black: MNIST's polarity."""
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 12:16] = 255
    return image


def predicted(tmp_path, path, preprocessing="mnist", chunk_size=2):
    """What ``mnist-pipeline predict`` does with ``path`` (open it, stream it
    through a model, write the CSV): the images the model saw, the CSV's rows
    and the summary."""
    seen = []

    def model(images: np.ndarray) -> np.ndarray:
        seen.append(images.copy())
        return one_hot_of_first_pixel(images)

    output = tmp_path / "out" / "predictions.csv"
    summary = predict_to_csv(open_input(path, preprocessing), model, output, chunk_size)
    rows = list(csv.reader(output.open()))
    return np.concatenate(seen), rows, summary


@pytest.mark.parametrize(
    "stored",
    [
        lambda images: images.reshape(len(images), 784),
        lambda images: images[..., None],
        lambda images: images.astype(np.float32) / 255,
        lambda images: images.astype(np.float64),
    ],
    ids=["flat", "channel", "float-0..1", "float-0..255"],
)
def test_array_layouts_and_scales_reach_the_model_as_uint8_images(tmp_path, stored):
    images = np.stack([digit(), 255 - digit(), digit() // 2])
    np.savez(tmp_path / "batch.npz", images=stored(images))
    seen, rows, _ = predicted(tmp_path, tmp_path / "batch.npz")
    assert seen.dtype == np.uint8
    np.testing.assert_array_equal(seen, images)
    assert [row[0] for row in rows[1:]] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 28, 27), np.uint8), r"got \(2, 28, 27\)"),
        (np.zeros((0, 28, 28), np.uint8), r"N > 0"),
        (np.full((1, 28, 28), np.nan), "finite"),
        (np.full((1, 28, 28), 400.0), "within"),
    ],
)
def test_bad_arrays_are_refused(tmp_path, array, message):
    np.savez(tmp_path / "input.npz", images=array)
    with pytest.raises(PredictionInputError, match=message):
        open_input(tmp_path / "input.npz")


def test_the_folder_path_has_one_conversion_and_the_config_names_its_modes():
    assert not hasattr(predict, "to_mnist_image")  # photos.normalise_photo only
    field = PredictConfig.model_fields["preprocessing"]
    assert get_args(field.annotation) == NORMALISATIONS
    assert field.default == "mnist"


def test_folder_of_images(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(digit()).save(photos / "b.png")
    Image.fromarray(255 - digit()).convert("RGB").resize((90, 90)).save(
        photos / "a.jpg"
    )
    (photos / "notes.txt").write_text("not an image")
    seen, rows, summary = predicted(tmp_path, photos)
    assert rows[0][0] == "file"
    assert [row[0] for row in rows[1:]] == ["a.jpg", "b.png"]
    assert seen.shape == (2, 28, 28) and summary.failed == 0
    # Dark ink on light paper reaches the model as MNIST's light digit on black.
    assert seen[0, 14, 14] > 150 and seen[0, 0, 0] < 40


def test_folder_with_a_broken_image_names_it_and_scores_the_rest(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(digit()).save(photos / "good.png")
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    _, rows, summary = predicted(tmp_path, photos)
    assert [row[0] for row in rows[1:]] == ["good.png"]
    errors = list(csv.DictReader(summary.errors_path.open()))
    assert [e["file"] for e in errors] == ["broken.png"]
    assert errors[0]["error"].startswith("UnidentifiedImageError")


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(PredictionInputError, match="no .png or .jpg"):
        open_input(tmp_path)
    with pytest.raises(PredictionInputError, match="does not exist"):
        open_input(tmp_path / "missing")


def test_npz_keys_and_pickle_refusal(tmp_path):
    images = np.stack([digit()] * 3)
    np.savez(tmp_path / "named.npz", images=images, labels=np.arange(3))
    np.savez(tmp_path / "single.npz", whatever=images)
    np.savez(tmp_path / "keras.npz", x_train=images, x_test=images[:2])
    _, rows, _ = predicted(tmp_path, tmp_path / "named.npz")
    assert [row[0] for row in rows[1:]] == ["0", "1", "2"]
    assert open_input(tmp_path / "single.npz").count == 3
    assert open_input(tmp_path / "keras.npz").count == 2  # x_test, not x_train
    np.savez(tmp_path / "ambiguous.npz", a=images, b=images)
    with pytest.raises(PredictionInputError, match="expected one array"):
        open_input(tmp_path / "ambiguous.npz")
    np.savez(tmp_path / "pickled.npz", images=np.array([object()], dtype=object))
    with pytest.raises(PredictionInputError, match="pickle"):
        open_input(tmp_path / "pickled.npz")


def test_idx_image_file(tmp_path):
    images = np.stack([digit()] * 4)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">IIII", 0x0803, 4, 28, 28) + images.tobytes())
    seen, rows, _ = predicted(tmp_path, path)
    assert rows[0][0] == "index"
    np.testing.assert_array_equal(seen, images)
    path.write_bytes(struct.pack(">IIII", 0x0801, 4, 28, 28) + images.tobytes())
    with pytest.raises(PredictionInputError, match="magic number"):
        open_input(path)


def test_csv_has_ids_class_and_ten_probabilities(tmp_path):
    images = np.zeros((2, 28, 28), np.uint8)
    images[:, 0, 0] = [3, 7]  # the stand-in model predicts the first pixel
    np.savez(tmp_path / "batch.npz", images=images)
    _, rows, _ = predicted(tmp_path, tmp_path / "batch.npz")
    assert rows[0] == ["index", "predicted_class"] + [f"prob_{c}" for c in range(10)]
    assert rows[1][:2] == ["0", "3"] and rows[2][:2] == ["1", "7"]
    assert float(rows[2][2 + 7]) == 1.0 and float(rows[2][2 + 3]) == 0.0


# -- reading in chunks and writing as it goes ------------------------------------


def numbered(n: int) -> np.ndarray:
    """``n`` images, image i filled with i % 256: each tells where it came from."""
    return np.broadcast_to(
        (np.arange(n) % 256).astype(np.uint8)[:, None, None], (n, 28, 28)
    ).copy()


def stitched(source, size: int):
    chunks = list(source.chunks(size))
    assert all(len(c.images) <= size for c in chunks)
    ids = [i for c in chunks for i in c.ids]
    return np.concatenate([c.images for c in chunks]), ids, chunks


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("layout", [(28, 28), (28, 28, 1), (784,)])
def test_npz_is_read_in_chunks_as_one_array(tmp_path, save, layout):
    images = numbered(10)
    save(tmp_path / "batch.npz", x_test=images.reshape(10, *layout), x_train=images)
    source = open_input(tmp_path / "batch.npz")
    assert (source.count, source.id_column) == (10, "index")
    read, ids, chunks = stitched(source, 3)
    assert [len(c.images) for c in chunks] == [3, 3, 3, 1]
    np.testing.assert_array_equal(read, images)
    assert ids == [str(i) for i in range(10)]


def test_column_major_npz_is_read_right(tmp_path):
    images = numbered(5)
    np.savez(tmp_path / "f.npz", images=np.asfortranarray(images))
    read, _, _ = stitched(open_input(tmp_path / "f.npz"), 2)
    np.testing.assert_array_equal(read, images)


def test_float_pixels_are_scaled_by_the_whole_array_not_per_chunk(tmp_path):
    # A first chunk of faint images (values <= 1) in an array on the 0..255
    # scale must not be taken for images scaled to 0..1.
    images = np.zeros((6, 28, 28), np.float32)
    images[:3] = 1.0
    images[3:] = 200.0
    np.savez(tmp_path / "f.npz", images=images)
    read, _, _ = stitched(open_input(tmp_path / "f.npz"), 3)
    assert read[:3].max() == 1 and read[3:].min() == 200
    np.testing.assert_array_equal(read, images.astype(np.uint8))


def test_out_of_range_values_anywhere_are_refused_before_reading(tmp_path):
    images = np.zeros((5000, 28, 28), np.float32)
    images[4999, 0, 0] = np.nan  # in the last block of the range pass
    np.savez(tmp_path / "nan.npz", images=images)
    with pytest.raises(PredictionInputError, match="finite"):
        open_input(tmp_path / "nan.npz")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_is_streamed_in_chunks(tmp_path, gz):
    images = numbered(11)
    data = struct.pack(">IIII", 0x0803, 11, 28, 28) + images.tobytes()
    path = tmp_path / ("t-idx3-ubyte.gz" if gz else "t-idx3-ubyte")
    path.write_bytes(gzip.compress(data) if gz else data)
    read, ids, _ = stitched(open_input(path), 4)
    np.testing.assert_array_equal(read, images)
    assert ids[-1] == "10"


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("extra", [-784, 1])
def test_truncated_or_padded_idx_is_refused_before_reading(tmp_path, gz, extra):
    images = numbered(3)
    data = struct.pack(">IIII", 0x0803, 3, 28, 28) + images.tobytes()
    data = data[:extra] if extra < 0 else data + b"\0" * extra
    path = tmp_path / ("t-idx3-ubyte.gz" if gz else "t-idx3-ubyte")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(PredictionInputError, match="truncated or padded"):
        open_input(path)


def write_folder(folder, count: int, broken: tuple[str, ...] = ()) -> list[str]:
    names = [f"img_{i:03d}.png" for i in range(count)]
    for i, name in enumerate(names):
        Image.fromarray(numbered(i + 1)[-1]).save(folder / name)
    for name in broken:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return names


def test_folder_chunks_skip_and_name_unreadable_files(tmp_path):
    names = write_folder(tmp_path, 5, broken=("img_001b.png",))
    # "resize" keeps a 28x28 picture's pixels: each image still tells its index.
    read, ids, chunks = stitched(open_input(tmp_path, "resize"), 2)
    assert ids == names
    assert [f for c in chunks for f, _ in c.failures] == ["img_001b.png"]
    assert [int(image[0, 0]) for image in read] == [0, 1, 2, 3, 4]


def one_hot_of_first_pixel(images: np.ndarray) -> np.ndarray:
    """A stand-in model: class = first pixel % 10, with certainty."""
    return np.eye(10, dtype=np.float32)[images[:, 0, 0] % 10]


def test_csv_is_written_chunk_by_chunk_every_image_once_in_order(tmp_path):
    np.savez(tmp_path / "batch.npz", images=numbered(25))
    progress = []
    summary = predict_to_csv(
        open_input(tmp_path / "batch.npz"),
        one_hot_of_first_pixel,
        tmp_path / "out.csv",
        chunk_size=10,
        on_progress=lambda done, s: progress.append((done, s.images)),
    )
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["index"] for r in rows] == [str(i) for i in range(25)]
    assert [int(r["predicted_class"]) for r in rows] == [i % 10 for i in range(25)]
    assert progress == [(10, 10), (20, 20), (25, 25)]
    metrics = summary.metrics()
    assert metrics["images"] == 25 and metrics["failed_images"] == 0
    assert metrics["predicted_class_0"] == 3 and metrics["mean_confidence"] == 1.0
    assert summary.errors_path is None
    assert not (tmp_path / "out.errors.csv").exists()


def test_unreadable_files_go_to_an_errors_file_and_the_rest_is_scored(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    names = write_folder(photos, 4, broken=("img_000b.png", "img_002b.png"))
    errors_file = tmp_path / "out.errors.csv"
    summary = predict_to_csv(
        open_input(photos, "resize"), one_hot_of_first_pixel, tmp_path / "out.csv", 3
    )
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["file"] for r in rows] == names
    errors = list(csv.DictReader(errors_file.open()))
    assert [e["file"] for e in errors] == ["img_000b.png", "img_002b.png"]
    assert all("UnidentifiedImageError" in e["error"] for e in errors)
    assert (summary.images, summary.failed, summary.errors_path) == (4, 2, errors_file)

    for name in ("img_000b.png", "img_002b.png"):  # a clean rerun: no stale list
        (photos / name).unlink()
    predict_to_csv(
        open_input(photos, "resize"), one_hot_of_first_pixel, tmp_path / "out.csv", 3
    )
    assert not errors_file.exists()


def test_a_failed_run_leaves_no_csv(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"not a png")
    (photos / "b.jpg").write_bytes(b"not a jpeg")
    output = tmp_path / "out.csv"
    with pytest.raises(PredictionInputError, match=r"None of the 2 image\(s\)"):
        predict_to_csv(open_input(photos), one_hot_of_first_pixel, output, 1)
    assert list(tmp_path.glob("out.csv*")) == []


# -- photos: normalised, refused ones reported; drift flagged per image -----------


def two_digits(sample) -> Image.Image:
    """Two of the sample's test digits side by side, dark on light paper."""
    pair = np.concatenate([sample.x_test[0], sample.x_test[1]], axis=1)
    return Image.fromarray(255 - np.pad(pair, 8)).resize((224, 112))


def test_a_photo_folder_scores_the_digits_and_reports_blank_and_double_ones(
    tmp_path,
):
    sample = load_sample()
    strokes, labels = photoset.uci_strokes()
    photos = tmp_path / "photos"
    records = photoset.write_photo_set(photos, strokes[:6], labels[:6], seed=1)
    Image.new("RGB", (120, 160), (236, 232, 220)).save(photos / "blank.png")
    two_digits(sample).save(photos / "two.png")
    seen = []

    def model(images: np.ndarray) -> np.ndarray:
        seen.append(images)
        return np.full((len(images), 10), 0.1, np.float32)

    summary = predict_to_csv(open_input(photos), model, tmp_path / "out.csv", 4)
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["file"] for r in rows] == sorted(r.file for r in records)
    errors = {e["file"]: e["error"] for e in csv.DictReader(summary.errors_path.open())}
    assert set(errors) == {"blank.png", "two.png"}
    assert errors["blank.png"].startswith("no ink")
    assert errors["two.png"].startswith("several digits")
    assert (summary.images, summary.failed) == (6, 2)
    # What the model saw was normalised as MNIST's digits are: ink box <= 20 px.
    for image in np.concatenate(seen):
        rows_with_ink = np.flatnonzero(image.max(axis=1) > 0)
        assert np.ptp(rows_with_ink) < 20


def test_the_csv_gets_each_images_out_of_distribution_flag(tmp_path):
    sample = load_sample()
    labels = sample.y_test[:300]
    probabilities = np.eye(10)[labels] * 0.9 + 0.01
    reference = drift.reference_profile(sample.x_test[:300], probabilities)
    images = sample.x_test[:20].copy()
    images[1::2] = 255 - images[1::2]  # every other image inverted
    np.savez(tmp_path / "batch.npz", images=images)
    monitor = drift.BatchMonitor(reference)

    def model(batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 10), 0.1)

    predict_to_csv(
        open_input(tmp_path / "batch.npz"),
        model,
        tmp_path / "out.csv",
        6,
        flag=monitor.add,
    )
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [int(r["out_of_distribution"]) for r in rows[1::2]] == [1] * 10
    assert monitor.images == 20
