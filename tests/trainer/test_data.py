"""MNIST loading: IDX and npz, corrupt files, the fixed split, synthetic data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from disttrain_trainer.data import (
    DataError,
    download_npz,
    load_from_dir,
    load_idx,
    load_mnist,
    load_npz,
    split_test_set,
    synthetic,
)


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">II", magic, len(array)) + (struct.pack(">II", *array.shape[1:]) if array.ndim == 3 else b"")
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_real_test_set_and_documented_split(mnist_dir: Path) -> None:
    labels = load_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    data = load_from_dir(mnist_dir)
    assert data.x_train.shape == (8000, 28, 28) and data.x_held.shape == (2000, 28, 28)
    assert len(data.y_train) == 8000 and len(data.y_held) == 2000
    assert "8k train / 2k held out" in data.source
    assert set(np.unique(data.y_held)) == set(range(10))
    again = load_from_dir(mnist_dir)
    assert np.array_equal(again.y_held, data.y_held)  # fixed split


def test_split_is_disjoint_and_complete() -> None:
    ids = np.arange(10_000)  # the "images" are their own ids, so overlaps show
    x_train, y_train, x_held, y_held = split_test_set(ids, ids % 10)
    assert (len(y_train), len(y_held)) == (8000, 2000)
    assert set(x_train.tolist()).isdisjoint(x_held.tolist())
    assert set(x_train.tolist()) | set(x_held.tolist()) == set(range(10_000))
    assert np.array_equal(y_train, x_train % 10)  # labels stay with their images


def test_full_idx_set_uses_the_official_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for stem, n in (("train", 60), ("t10k", 20)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    data = load_from_dir(tmp_path)
    assert (len(data.x_train), len(data.x_held)) == (60, 20)


def test_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 255, (30, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 30, dtype=np.uint8),
        "x_test": rng.integers(0, 255, (10, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 10, dtype=np.uint8),
    }
    np.savez(tmp_path / "mnist.npz", **arrays)
    x_train, _, x_test, y_test = load_npz(tmp_path / "mnist.npz")
    assert x_train.shape == (30, 28, 28) and x_test.shape == (10, 28, 28)
    assert np.array_equal(y_test, arrays["y_test"])
    assert len(load_from_dir(tmp_path).x_train) == 30


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x1f\x8b\x08garbage", "cannot read"),
        (gzip.compress(struct.pack(">II", 1234, 1)), "bad IDX magic"),
        (gzip.compress(struct.pack(">IIII", 2051, 5, 28, 28) + b"\0" * 100), "corrupt IDX"),
        (b"abc", "too short"),
    ],
)
def test_corrupt_idx_is_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_idx(path)


def test_corrupt_npz_and_missing_data(tmp_path: Path) -> None:
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DataError, match=r"not a valid mnist\.npz"):
        load_from_dir(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_from_dir(tmp_path / "nope")


def test_offline_download_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        download_npz(tmp_path, url="http://127.0.0.1:9/mnist.npz")


def test_download_checksum_is_verified(tmp_path: Path) -> None:
    source = tmp_path / "served.npz"
    source.write_bytes(b"not mnist")
    with pytest.raises(DataError, match="SHA-256"):
        download_npz(tmp_path / "cache", url=source.as_uri(), sha256="0" * 64)
    assert not (tmp_path / "cache" / "mnist.npz").exists()


def test_synthetic_and_resolution_order(monkeypatch: pytest.MonkeyPatch, mnist_dir: Path) -> None:
    data = synthetic(train=100, held=50)
    assert data.x_train.shape == (100, 28, 28) and data.y_held.shape == (50,)
    assert load_mnist(None, use_synthetic=True).source == "synthetic"
    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    assert len(load_mnist(None).x_train) == 8000
