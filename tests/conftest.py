"""Shared test fixtures: where the real MNIST test set lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"

if "MNIST_DIR" not in os.environ and DEFAULT_MNIST_DIR.is_dir():
    os.environ["MNIST_DIR"] = str(DEFAULT_MNIST_DIR)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top folder."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder with the real MNIST IDX files (MNIST_DIR); tests that need it fail loudly without it."""
    value = os.environ.get("MNIST_DIR")
    if not value or not Path(value).is_dir():
        pytest.fail(
            "MNIST data not found: set MNIST_DIR to a folder with t10k-images-idx3-ubyte.gz "
            f"(default {DEFAULT_MNIST_DIR})"
        )
    return Path(value)
