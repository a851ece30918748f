"""MNIST loading (IDX .gz / npz / verified download), the fixed 8k/2k split, synthetic data."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NPZ_NAME = "mnist.npz"
DOWNLOAD_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
DOWNLOAD_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
# With only the 10,000-image test set: a fixed permutation (seed below) -> first 8,000 train, last 2,000 held out.
SPLIT_SEED = 20120
SPLIT_TRAIN = 8000


class DataError(RuntimeError):
    """The data cannot be found, downloaded or parsed; the message says which and why."""


@dataclass(frozen=True)
class Mnist:
    """Training and held-out images (uint8, Nx28x28) and labels (uint8), and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_held: np.ndarray
    y_held: np.ndarray
    source: str


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def load_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed): images -> NxRxC uint8, labels -> N uint8."""
    data = _read_maybe_gzip(path)
    if len(data) < 8:
        raise DataError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    magic, count = struct.unpack(">II", data[:8])
    if magic == IMAGE_MAGIC:
        if len(data) < 16:
            raise DataError(f"{path}: truncated IDX image header")
        rows, cols = struct.unpack(">II", data[8:16])
        shape, offset = (count, rows, cols), 16
    elif magic == LABEL_MAGIC:
        shape, offset = (count,), 8
    else:
        raise DataError(f"{path}: bad IDX magic {magic} (expected {IMAGE_MAGIC} images or {LABEL_MAGIC} labels)")
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise DataError(f"{path}: corrupt IDX file: {len(data) - offset} data bytes, header says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def load_idx_pair(directory: Path, stem_images: str, stem_labels: str) -> tuple[np.ndarray, np.ndarray]:
    """Load matching image and label IDX files (`.gz` or plain) from `directory`."""
    images = load_idx(_existing(directory, stem_images))
    labels = load_idx(_existing(directory, stem_labels))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{directory}: images {images.shape} and labels {labels.shape} do not match")
    if labels.size and labels.max() > 9:
        raise DataError(f"{directory}: labels outside 0..9")
    return images, labels


def _existing(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory}: missing {stem}.gz")


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read Keras' mnist.npz: (x_train, y_train, x_test, y_test)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = tuple(np.asarray(npz[k], dtype=np.uint8) for k in ("x_train", "y_train", "x_test", "y_test"))
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a valid mnist.npz ({type(exc).__name__}: {exc})") from exc
    x_train, y_train, x_test, y_test = arrays
    if x_train.shape[1:] != (28, 28) or len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DataError(f"{path}: unexpected array shapes {x_train.shape}, {y_train.shape}")
    return arrays  # type: ignore[return-value]


def split_test_set(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """The documented split of the 10k test set: fixed permutation, 8,000 train / 2,000 held out."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    cut = SPLIT_TRAIN if len(images) == 10_000 else int(len(images) * 0.8)
    train, held = order[:cut], order[cut:]
    return images[train], labels[train], images[held], labels[held]


def load_from_dir(directory: Path) -> Mnist:
    """MNIST from a folder: full IDX set, else mnist.npz, else the test set alone (8k/2k split)."""
    if not directory.is_dir():
        raise DataError(f"data folder {directory} does not exist")
    has = {p.name.removesuffix(".gz") for p in directory.iterdir()}
    if set(TRAIN_FILES) <= has and set(TEST_FILES) <= has:
        x_train, y_train = load_idx_pair(directory, *TRAIN_FILES)
        x_held, y_held = load_idx_pair(directory, *TEST_FILES)
        return Mnist(x_train, y_train, x_held, y_held, f"{directory} (IDX, 60k train / 10k test)")
    if NPZ_NAME in has:
        return Mnist(*load_npz(directory / NPZ_NAME), source=f"{directory / NPZ_NAME} (60k train / 10k test)")
    if set(TEST_FILES) <= has:
        x, y = load_idx_pair(directory, *TEST_FILES)
        return Mnist(*split_test_set(x, y), source=f"{directory} (test set only: fixed 8k train / 2k held out)")
    raise DataError(f"{directory}: no MNIST files (expected {TEST_FILES[0]}.gz and friends, or {NPZ_NAME})")


def download_npz(cache_dir: Path, url: str = DOWNLOAD_URL, sha256: str = DOWNLOAD_SHA256) -> Path:
    """Download mnist.npz into `cache_dir` once, verifying its SHA-256; a clear error when offline."""
    target = cache_dir / NPZ_NAME
    if target.is_file() and _sha256(target) == sha256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # one temporary file per process: the chief, the evaluator and mirrored workers may download at once
    handle, name = tempfile.mkstemp(dir=cache_dir, prefix=f"{NPZ_NAME}.", suffix=".part")
    partial = Path(name)
    log.info("downloading %s", url)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"no MNIST data: none in --data-dir or MNIST_DIR, and downloading {url} failed ({exc}); "
            "pass --data-dir with the IDX .gz files or mnist.npz, or use --synthetic"
        ) from exc
    digest = _sha256(partial)
    if digest != sha256:
        partial.unlink(missing_ok=True)
        raise DataError(f"downloaded {url} has SHA-256 {digest}, expected {sha256}")
    partial.replace(target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def synthetic(train: int = 8000, held: int = 2000, seed: int = 0) -> Mnist:
    """Random images whose label is encoded as a bright square (learnable, for throughput runs)."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 64, (n, 28, 28)).astype(np.uint8)
        for digit in range(10):
            row, col = divmod(digit, 5)
            images[labels == digit, 4 + row * 12 : 10 + row * 12, 2 + col * 5 : 6 + col * 5] = 255
        return images, labels

    return Mnist(*make(train), *make(held), source="synthetic")


def load_mnist(data_dir: str | None, use_synthetic: bool = False, cache_dir: Path | None = None) -> Mnist:
    """Resolve the data source: --synthetic, --data-dir, MNIST_DIR, else a verified download."""
    if use_synthetic:
        return synthetic()
    for candidate in (data_dir, os.environ.get("MNIST_DIR")):
        if candidate:
            return load_from_dir(Path(candidate))
    cache = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "disttrain"
    path = download_npz(cache)
    return Mnist(*load_npz(path), source=f"{path} (downloaded, 60k train / 10k test)")
