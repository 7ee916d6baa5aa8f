"""Load stage: every source kind, and every way a file can be unusable."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mnist_pipeline import data
from mnist_pipeline.data import (
    Dataset,
    check_source,
    fetch_mnist,
    load_dataset,
    load_idx_folder,
    load_npz,
    load_sample,
    open_dataset,
    read_idx,
    save_dataset,
    stratified_subset,
)
from mnist_pipeline.errors import DataLoadError

from ..conftest import loopback_server

UNREACHABLE = "http://127.0.0.1:9/mnist.npz"  # discard port: connection refused


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when the name ends in .gz)."""
    magic = magic if magic is not None else 0x0800 + array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(payload)
    return path


def write_idx_folder(folder: Path, dataset: Dataset, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", dataset.x_train)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", dataset.y_train)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", dataset.x_test)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", dataset.y_test)
    return folder


def assert_same_arrays(a: Dataset, b: Dataset) -> None:
    for key, array in a.arrays().items():
        np.testing.assert_array_equal(array, getattr(b, key))


@pytest.fixture
def npz_file(tmp_path, tiny_dataset) -> Path:
    path = tmp_path / "tiny.npz"
    np.savez(path, **tiny_dataset.arrays())
    return path


def test_sample_is_real_mnist_split_100_per_class():
    sample = load_sample()
    assert sample.x_train.shape == (4000, 28, 28)
    assert sample.x_test.shape == (1000, 28, 28)
    assert sample.x_train.dtype == np.uint8
    assert np.bincount(sample.y_test).tolist() == [100] * 10
    assert np.bincount(sample.y_train).tolist() == [400] * 10
    # Real digits: most pixels black, strokes near white.
    assert (sample.x_train == 0).mean() > 0.7
    assert sample.x_train.max() == 255


def test_sample_split_is_deterministic():
    first, second = load_sample(), load_sample()
    assert_same_arrays(first, second)


def test_npz_round_trip(npz_file, tiny_dataset):
    loaded = load_npz(npz_file, name="tiny")
    assert_same_arrays(loaded, tiny_dataset)
    assert loaded.source == str(npz_file)


def test_npz_needing_pickle_is_refused(tmp_path, tiny_dataset):
    path = tmp_path / "pickled.npz"
    arrays = tiny_dataset.arrays()
    arrays["y_train"] = np.array([object()] * 60, dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(DataLoadError, match="refusing to unpickle"):
        load_npz(path, name="pickled")


def test_npz_missing_keys_are_named(tmp_path, tiny_dataset):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=tiny_dataset.x_train, y_train=tiny_dataset.y_train)
    with pytest.raises(DataLoadError, match="x_test, y_test") as info:
        load_npz(path, name="partial")
    assert str(path) in str(info.value)


def test_truncated_npz_is_reported(tmp_path, npz_file):
    path = tmp_path / "truncated.npz"
    path.write_bytes(npz_file.read_bytes()[:3000])
    with pytest.raises(DataLoadError, match="truncated or corrupted"):
        load_npz(path, name="truncated")


def test_missing_path_and_wrong_kind_fail_fast(tmp_path):
    with pytest.raises(DataLoadError, match="does not exist"):
        check_source(str(tmp_path / "nowhere.npz"))
    csv = tmp_path / "data.csv"
    csv.write_text("1,2,3\n")
    with pytest.raises(DataLoadError, match="neither a .npz"):
        check_source(str(csv))
    check_source("sample")  # named sources need no path


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_idx_folder_round_trip(tmp_path, tiny_dataset, gz):
    folder = write_idx_folder(tmp_path / "idx", tiny_dataset, gz=gz)
    loaded = load_dataset(str(folder), origin=UNREACHABLE, sha256="", timeout=1)
    assert_same_arrays(loaded, tiny_dataset)


def test_idx_folder_names_missing_files(tmp_path, tiny_dataset):
    folder = write_idx_folder(tmp_path / "idx", tiny_dataset, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataLoadError, match="t10k-labels-idx1-ubyte"):
        load_idx_folder(folder)


def test_idx_wrong_magic_is_reported(tmp_path, tiny_dataset):
    path = write_idx(tmp_path / "images-idx3-ubyte", tiny_dataset.x_train, magic=0x0801)
    with pytest.raises(DataLoadError, match="magic number 0x00000801"):
        read_idx(path, expected_rank=3)
    junk = tmp_path / "junk-idx3-ubyte"
    junk.write_bytes(b"PK\x03\x04not an idx file")
    with pytest.raises(DataLoadError, match="not an IDX file"):
        read_idx(junk)


def test_idx_truncated_payload_is_reported(tmp_path, tiny_dataset):
    path = write_idx(tmp_path / "images-idx3-ubyte", tiny_dataset.x_train)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataLoadError, match="truncated"):
        read_idx(path, expected_rank=3)


def test_idx_dimensions_beyond_int64_are_reported(tmp_path):
    # 2**22 * 2**21 * 2**21 = 2**64 images' bytes: 0 when counted in int64.
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(struct.pack(">4I", 0x0803, 2**22, 2**21, 2**21))
    assert path.stat().st_size == 16
    with pytest.raises(DataLoadError, match=r"declares shape \(4194304, 2097152"):
        read_idx(path, expected_rank=3)


def test_corrupted_gzip_is_reported(tmp_path, tiny_dataset):
    path = write_idx(tmp_path / "images-idx3-ubyte.gz", tiny_dataset.x_train)
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(DataLoadError, match="cannot be read"):
        read_idx(path, expected_rank=3)


@contextlib.contextmanager
def _serving(root: Path) -> Iterator[SimpleNamespace]:
    """Serve the files of ``root`` on 127.0.0.1, counting requests."""
    counter = SimpleNamespace(requests=0, url="")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            counter.requests += 1
            super().do_GET()

        def log_message(self, *args):
            pass

    with loopback_server(Handler) as url:
        counter.url = url
        yield counter


def test_mnist_downloads_once_then_uses_the_keras_cache(tmp_path, npz_file):
    sha = hashlib.sha256(npz_file.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    with _serving(npz_file.parent) as server:
        origin = f"{server.url}/{npz_file.name}"
        first = load_dataset("mnist", origin=origin, sha256=sha, cache_dir=cache)
        second = load_dataset("mnist", origin=origin, sha256=sha, cache_dir=cache)
        assert server.requests == 1
    assert (cache / "mnist.npz").read_bytes() == npz_file.read_bytes()
    assert_same_arrays(first, second)
    assert first.name == "mnist"


def test_default_cache_is_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert data.keras_cache_dir() == tmp_path / "datasets"


def test_download_with_wrong_hash_is_rejected_and_not_cached(tmp_path, npz_file):
    cache = tmp_path / "cache"
    with _serving(npz_file.parent) as server:
        origin = f"{server.url}/{npz_file.name}"
        with pytest.raises(DataLoadError, match="does not match"):
            fetch_mnist(origin, "0" * 64, cache, timeout=5, attempts=1)
    assert not any(cache.iterdir())


def test_download_retries_then_names_the_url(tmp_path, monkeypatch):
    monkeypatch.setattr(data.time, "sleep", lambda seconds: None)
    with pytest.raises(DataLoadError, match="after 3 attempt") as info:
        fetch_mnist(UNREACHABLE, "0" * 64, tmp_path, timeout=2)
    assert UNREACHABLE in str(info.value)


def test_a_download_cut_mid_file_is_one_error_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(data.time, "sleep", lambda seconds: None)

    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # promises 1 MB, sends 10 bytes, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"0123456789")

        def log_message(self, *args):
            pass

    with loopback_server(Truncating) as url:
        with pytest.raises(DataLoadError, match="after 2 attempt.*IncompleteRead"):
            fetch_mnist(f"{url}/mnist.npz", "0" * 64, tmp_path, timeout=5, attempts=2)
    assert not any(tmp_path.iterdir())  # no partial file left behind


def test_auto_falls_back_to_the_sample_with_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mnist_pipeline"):
        dataset = load_dataset("auto", origin=UNREACHABLE, sha256="0" * 64, timeout=2)
    assert dataset.name == "mnist-sample"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "bundled 5,000-image MNIST sample" in warnings[0].getMessage()


def test_auto_uses_full_mnist_when_cached(tmp_path, npz_file):
    sha = hashlib.sha256(npz_file.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist.npz").write_bytes(npz_file.read_bytes())
    dataset = load_dataset("auto", origin=UNREACHABLE, sha256=sha, cache_dir=cache)
    assert dataset.name == "mnist"


def test_saved_dataset_round_trips_with_stable_digest(tmp_path, tiny_dataset):
    ref = save_dataset(tiny_dataset, tmp_path)
    again = save_dataset(tiny_dataset, tmp_path)
    assert ref.digest == again.digest
    assert ref.shapes["x_train"] == [60, 28, 28]
    assert set(ref.split_digests) == {"train", "test"}
    assert_same_arrays(open_dataset(ref), tiny_dataset)
    changed = Dataset(
        tiny_dataset.x_train[::-1].copy(),
        tiny_dataset.y_train,
        tiny_dataset.x_test,
        tiny_dataset.y_test,
        name="tiny",
        source="synthetic",
    )
    other = save_dataset(changed, tmp_path)
    assert other.digest != ref.digest
    assert other.split_digests["test"] == ref.split_digests["test"]


def test_stratified_subset_keeps_every_class(tiny_dataset):
    subset = stratified_subset(tiny_dataset, train_limit=20, test_limit=10, seed=0)
    assert len(subset.y_train) == 20
    assert len(subset.y_test) == 10
    assert set(subset.y_train.tolist()) == set(range(10))
    assert set(subset.y_test.tolist()) == set(range(10))
    assert subset.name == "tiny-subset20+10"


def test_every_seed_is_tested_on_the_same_test_subset(tiny_dataset):
    first = stratified_subset(tiny_dataset, train_limit=20, test_limit=10, seed=0)
    other = stratified_subset(tiny_dataset, train_limit=20, test_limit=10, seed=7)
    np.testing.assert_array_equal(first.x_test, other.x_test)
    np.testing.assert_array_equal(first.y_test, other.y_test)
    assert not np.array_equal(first.x_train, other.x_train)


def test_source_fingerprint_follows_file_content_not_its_timestamps(npz_file):
    first = data.source_fingerprint(str(npz_file), sha256="unused")
    stat = npz_file.stat()
    npz_file.write_bytes(npz_file.read_bytes())  # same bytes, new mtime
    assert data.source_fingerprint(str(npz_file), sha256="unused") == first
    changed = bytearray(npz_file.read_bytes())
    changed[-30] ^= 1  # one bit, same size, and the old mtime restored
    npz_file.write_bytes(bytes(changed))
    os.utime(npz_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data.source_fingerprint(str(npz_file), sha256="unused") != first


def test_source_fingerprint_of_an_idx_folder_covers_every_file(tmp_path, tiny_dataset):
    folder = write_idx_folder(tmp_path / "idx", tiny_dataset, gz=False)
    first = data.source_fingerprint(str(folder), sha256="unused")
    write_idx(folder / "t10k-labels-idx1-ubyte", tiny_dataset.y_test[::-1])
    assert data.source_fingerprint(str(folder), sha256="unused") != first


def test_source_fingerprint_of_named_sources(tmp_path):
    sha = hashlib.sha256(b"mnist").hexdigest()
    assert data.source_fingerprint("mnist", sha256=sha) == f"mnist:{sha}"
    assert data.source_fingerprint("sample", sha256=sha).startswith("sample:")
    # auto: pinned only when the cache holds the expected file; else unknown.
    assert data.source_fingerprint("auto", sha256=sha, cache_dir=tmp_path) is None
    (tmp_path / "mnist.npz").write_bytes(b"mnist")
    cached = data.source_fingerprint("auto", sha256=sha, cache_dir=tmp_path)
    assert cached == f"mnist:{sha}"
