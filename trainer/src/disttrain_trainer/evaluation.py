"""Held-out evaluation, inference timing, and the sidecar evaluator that follows checkpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .data import Mnist
from .model import build_model
from .pipeline import eval_dataset, normalize
from .reporting import Summaries, emit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """Held-out loss and accuracy, and the predicted labels in held-out order."""

    loss: float
    accuracy: float
    predicted: np.ndarray


def read_weights(model: keras.Model) -> list[np.ndarray]:
    """Every weight as one numpy array (sharded variables are concatenated, mirrored ones read locally)."""
    return [tf.convert_to_tensor(getattr(w, "value", w)).numpy() for w in model.weights]


def local_copy(model: keras.Model) -> keras.Model:
    """A plain single-device model with the distributed model's current weights (call outside any scope)."""
    copy = build_model()
    copy.set_weights(read_weights(model))
    return copy


def evaluate(model: keras.Model, data: Mnist) -> Evaluation:
    """Loss and accuracy of `model` on the held-out set."""
    predict = tf.function(lambda x: model(x, training=False))
    probs = np.concatenate([predict(x).numpy() for x, _ in eval_dataset(data.x_held, data.y_held)])
    labels = data.y_held.astype(np.int64)
    loss = float(keras.losses.sparse_categorical_crossentropy(labels, probs).numpy().mean())
    predicted = probs.argmax(axis=1)
    return Evaluation(loss=loss, accuracy=float((predicted == labels).mean()), predicted=predicted)


def inference_timing(model: keras.Model, data: Mnist, repeats: int = 200) -> dict[str, float]:
    """Per-example time at batch 500 (throughput) and single-image latency, both in milliseconds."""
    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    batch, _ = normalize(data.x_held[:500], data.y_held[:500])
    single = batch[:1]
    predict(batch), predict(single)
    start = time.perf_counter()
    for _ in range(5):
        predict(batch).numpy()
    per_example = (time.perf_counter() - start) / (5 * len(batch)) * 1000
    start = time.perf_counter()
    for _ in range(repeats):
        predict(single).numpy()
    latency = (time.perf_counter() - start) / repeats * 1000
    return {"inference_ms_per_example": round(per_example, 4), "inference_latency_ms": round(latency, 3)}


def checkpoint_for(model: keras.Model, **extra: tf.Module | tf.Variable) -> tf.train.Checkpoint:
    """The checkpoint layout shared by trainer and evaluator: the model's trainable variables (+ extras)."""
    return tf.train.Checkpoint(weights=[w.value for w in model.trainable_weights], **extra)


def step_of(checkpoint_path: str) -> int:
    """The global step a `ckpt-<step>` path was saved at."""
    return int(checkpoint_path.rsplit("-", 1)[-1])


def run_evaluator(
    data: Mnist, checkpoint_dir: Path, log_dir: Path, finished: Callable[[], bool], poll_seconds: float = 2.0
) -> dict[str, float]:
    """Evaluate each new checkpoint on the held-out set until `finished()`; return the last result."""
    model = build_model()
    checkpoint = checkpoint_for(model)
    summaries = Summaries(log_dir / "eval")
    last: dict[str, float] = {}
    for path in tf.train.checkpoints_iterator(
        str(checkpoint_dir), min_interval_secs=poll_seconds, timeout=poll_seconds, timeout_fn=finished
    ):
        try:
            checkpoint.read(path).expect_partial()
        except (tf.errors.NotFoundError, tf.errors.DataLossError) as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
            continue
        result = evaluate(model, data)
        step = step_of(path)
        summaries.scalars(step, {"heldout_accuracy": result.accuracy, "heldout_loss": result.loss})
        last = {"step": step, "accuracy": result.accuracy, "loss": result.loss}
        emit(f"eval step={step} loss={result.loss:.4f} accuracy={result.accuracy:.4f}")
    summaries.close()
    return last
