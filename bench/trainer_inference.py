"""Inference timing of an exported SavedModel on this machine's CPU: latency percentiles and examples/s."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MIN_CALLS = 30
MAX_CALLS = 2000


def load_images(data_args: Sequence[str], count: int) -> np.ndarray:
    """`count` held-out images as the model's input (float32 Nx28x28x1 in [0, 1]), repeated if needed."""
    from disttrain_trainer.data import load_mnist

    data_dir = data_args[data_args.index("--data-dir") + 1] if "--data-dir" in data_args else None
    held = load_mnist(data_dir, "--synthetic" in data_args).x_held
    images = np.resize(held, (count, *held.shape[1:]))
    return (images.astype(np.float32) / 255.0)[..., None]


def time_calls(serve: object, batch: np.ndarray, budget_s: float) -> np.ndarray:
    """Seconds per call of `serve(batch)` (result read back), after warm-up, for about `budget_s` of calls."""
    import tensorflow as tf

    tensor = tf.constant(batch)
    for _ in range(3):
        serve(tensor).numpy()  # type: ignore[operator]
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < MIN_CALLS or (len(samples) < MAX_CALLS and time.perf_counter() < deadline):
        start = time.perf_counter()
        serve(tensor).numpy()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return np.array(samples)


def time_saved_model(
    saved_model: Path, data_args: Sequence[str], batch_sizes: Sequence[int], budget_s: float
) -> list[dict[str, float]]:
    """p50/p99 latency (ms) and examples/s per batch size (about `budget_s` of calls each), calling the
    SavedModel's `serve` endpoint."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))  # kept: the endpoint refers to its variables
    serve = loaded.serve
    images = load_images(data_args, max(batch_sizes))
    rows: list[dict[str, float]] = []
    for size in batch_sizes:
        seconds = time_calls(serve, images[:size], budget_s)
        rows.append({
            "batch_size": size,
            "calls": len(seconds),
            "p50_ms": round(float(np.percentile(seconds, 50)) * 1000, 3),
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 3),
            "examples_per_second": round(size * len(seconds) / float(seconds.sum()), 1),
        })
        print(f"  inference batch {size}: p50 {rows[-1]['p50_ms']} ms, {rows[-1]['examples_per_second']} ex/s",
              flush=True)
    return rows
